"""Bad input gets an OpenAI error object with the right 4xx, and the server goes on serving.

Mutations tried (each made the named test fail):
- the middleware's catch-all removed (an unexpected exception escapes to aiohttp's
  text/plain 500): test_an_unexpected_error_is_a_logged_500_and_the_server_goes_on;
- ``from_call_error`` answering a TypeError (unknown parameter) with a 500:
  test_bad_input_gets_an_openai_error_object[chat-unknown-field];
- the context-length pattern removed (the error lost its code):
  test_a_prompt_over_the_context_length_is_context_length_exceeded;
- ``parse_chat_request`` no longer checking roles (the template rendered "robot"
  as a role): test_bad_input_gets_an_openai_error_object[chat-bad-role]."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from areal_env.errors import InferenceError
from areal_env.inference.chat_client import ChatClient
from areal_env.inference.local import LocalEngine
from areal_env.serving import OpenAIServer
from areal_env.testing import ScriptedEngine

MSG = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"

CASES = [
    # (id, route, body (bytes: sent as is), status, param, code)
    ("chat-malformed-json", CHAT, b'{"messages": [', 400, None, "invalid_json"),
    ("chat-not-an-object", CHAT, b"[1, 2]", 400, None, "invalid_json"),
    ("chat-not-utf8", CHAT, b"\xff\xfe", 400, None, "invalid_json"),
    ("chat-no-messages", CHAT, {"model": "m"}, 400, "messages", None),
    ("chat-empty-messages", CHAT, {"messages": []}, 400, "messages", None),
    (
        "chat-bad-role",
        CHAT,
        {"messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages[0].role",
        None,
    ),
    (
        "chat-bad-content",
        CHAT,
        {"messages": [{"role": "user", "content": 3}]},
        400,
        "messages[0].content",
        None,
    ),
    (
        "chat-image-part",
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        "messages",
        "unsupported_value",
    ),
    (
        "chat-unknown-field",
        CHAT,
        {"messages": MSG, "frobnicate": 1},
        400,
        "frobnicate",
        "unsupported_parameter",
    ),
    ("chat-n-zero", CHAT, {"messages": MSG, "n": 0}, 400, "n", None),
    (
        "chat-tool-choice-required",
        CHAT,
        {"messages": MSG, "tool_choice": "required"},
        400,
        "tool_choice",
        "unsupported_value",
    ),
    (
        "chat-top-logprobs",
        CHAT,
        {"messages": MSG, "logprobs": True, "top_logprobs": 2},
        400,
        "top_logprobs",
        "unsupported_value",
    ),
    (
        "chat-response-format",
        CHAT,
        {"messages": MSG, "response_format": {"type": "json_object"}},
        400,
        "response_format",
        "unsupported_value",
    ),
    (
        "chat-negative-max-tokens",
        CHAT,
        {"messages": MSG, "max_tokens": -1},
        400,
        "max_tokens",
        None,
    ),
    (
        "chat-temperature-text",
        CHAT,
        {"messages": MSG, "temperature": "hot"},
        400,
        "temperature",
        None,
    ),
    ("chat-stream-not-bool", CHAT, {"messages": MSG, "stream": "yes"}, 400, "stream", None),
    ("text-no-prompt", TEXT, {"model": "m"}, 400, "prompt", None),
    ("text-empty-prompt-list", TEXT, {"prompt": []}, 400, "prompt", None),
    ("text-empty-prompt", TEXT, {"prompt": ""}, 400, None, "unsupported_value"),
    ("text-negative-max-tokens", TEXT, {"prompt": "a", "max_tokens": -3}, 400, "max_tokens", None),
    ("text-top-5-logprobs", TEXT, {"prompt": "a", "logprobs": 5}, 400, "logprobs", None),
    ("text-echo", TEXT, {"prompt": "a", "echo": True}, 400, "echo", "unsupported_value"),
    ("text-suffix", TEXT, {"prompt": "a", "suffix": "b"}, 400, "suffix", "unsupported_value"),
    ("text-unknown", TEXT, {"prompt": "a", "tools": []}, 400, "tools", "unsupported_parameter"),
]


async def post(http, url, body, headers=None):
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with http.post(url, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def assert_still_serves(http, server):
    status, body = await post(http, server.url + CHAT, {"messages": MSG})
    assert status == 200 and body["choices"][0]["message"]["content"] == "ok"


@pytest.fixture
async def served(tok):
    engine = ScriptedEngine(replies=[tok.encode("ok")])
    async with OpenAIServer(ChatClient(engine, tok)) as server, aiohttp.ClientSession() as http:
        yield server, http, engine


@pytest.mark.parametrize(
    ("route", "body", "status", "param", "code"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
async def test_bad_input_gets_an_openai_error_object(served, route, body, status, param, code):
    server, http, engine = served
    got, error = await post(http, server.url + route, body)
    assert got == status, error
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == "invalid_request_error" and error["error"]["message"]
    assert error["error"]["param"] == param
    if code is not None:
        assert error["error"]["code"] == code
    assert engine.requests == []  # refused before anything was generated
    await assert_still_serves(http, server)


async def test_errors_in_a_session_record_nothing(served):
    server, http, engine = served
    session = server.sessions.open()
    headers = {"Authorization": f"Bearer {session.api_key}"}
    for _, route, body, status, _, _ in CASES:
        got, _ = await post(http, session.base_url + route.removeprefix("/v1"), body, headers)
        assert got == status
    trajectory = await session.close()
    assert trajectory.samples == [] and session.requests == 0


async def test_unknown_routes_methods_and_big_bodies_are_json_errors(served, monkeypatch):
    server, http, _ = served
    async with http.get(server.url + "/v1/nope") as resp:
        assert (
            resp.status == 404 and (await resp.json())["error"]["type"] == "invalid_request_error"
        )
    async with http.get(server.url + CHAT) as resp:
        assert resp.status == 405 and "error" in await resp.json()
    monkeypatch.setattr("areal_env.serving.server.MAX_BODY_BYTES", 1024)
    async with OpenAIServer(server.client) as small:
        status, error = await post(
            http, small.url + CHAT, {"messages": [{"role": "user", "content": "x" * 4096}]}
        )
        assert status == 413 and error["error"]["code"] == "request_entity_too_large"
        await assert_still_serves(http, small)


async def test_an_engine_failure_is_a_503_the_client_may_retry(served, monkeypatch):
    server, http, engine = served

    async def fail(request):
        raise InferenceError("the engine dropped the request")

    monkeypatch.setattr(engine, "agenerate", fail)
    status, error = await post(http, server.url + CHAT, {"messages": MSG})
    assert status == 503 and error["error"]["type"] == "server_error"
    assert "dropped" in error["error"]["message"]
    monkeypatch.undo()
    await assert_still_serves(http, server)


async def test_an_unexpected_error_is_a_logged_500_and_the_server_goes_on(
    served, monkeypatch, caplog
):
    server, http, _ = served

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("areal_env.serving.server.chat_body", broken)
    status, error = await post(http, server.url + CHAT, {"messages": MSG})
    assert status == 500 and error["error"]["type"] == "server_error"
    assert "a bug" in caplog.text
    monkeypatch.undo()
    await assert_still_serves(http, server)


async def test_a_prompt_over_the_context_length_is_context_length_exceeded(
    tiny_model_and_tokenizer,
):
    model, tok = tiny_model_and_tokenizer
    engine = LocalEngine(model, tok)
    try:
        async with OpenAIServer(ChatClient(engine, tok)) as server:
            agent = AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
            long = "1" * model.config.max_position_embeddings
            with pytest.raises(openai.BadRequestError) as caught:
                await agent.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": long}]
                )
            assert caught.value.code == "context_length_exceeded"
            with pytest.raises(openai.BadRequestError, match="context|positions"):
                await agent.completions.create(model="m", prompt=long)
            ok = await agent.chat.completions.create(model="m", messages=MSG, max_tokens=2)
            assert ok.choices[0].finish_reason in ("stop", "length")
            await agent.close()
    finally:
        await engine.close()


async def test_the_official_client_raises_its_typed_errors(tok):
    engine = ScriptedEngine(replies=[tok.encode("ok")])
    async with OpenAIServer(ChatClient(engine, tok)) as server:
        session = server.sessions.open()
        agent = AsyncOpenAI(base_url=session.base_url, api_key=session.api_key, max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            await agent.chat.completions.create(
                model="m", messages=MSG, seed=None, n=2, tool_choice="required"
            )
        assert caught.value.param == "tool_choice"
        stranger = AsyncOpenAI(base_url=session.base_url, api_key="sk-nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model="m", messages=MSG)
        await session.close()
        with pytest.raises(openai.APIStatusError) as caught:
            await agent.chat.completions.create(model="m", messages=MSG)
        assert caught.value.status_code == 410 and caught.value.code == "session_closed"
        await agent.close()
        await stranger.close()
