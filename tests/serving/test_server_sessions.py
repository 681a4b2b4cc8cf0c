"""Sessions: auth rules, isolation under concurrency, retries that neither split nor duplicate.

Mutations tried (each made the named test fail):
- ``Session.run`` ignoring ``x-stainless-retry-count`` (every request generates):
  test_a_retried_request_is_answered_once_and_recorded_once;
- ``Session.run`` replaying any identical body, retry or not:
  test_a_repeated_request_that_is_not_a_retry_generates_again;
- a retry joining only attempts that finished, not one still generating:
  test_a_client_timeout_and_retry_neither_splits_nor_duplicates (two engine requests);
- a failed attempt replayed to its retry: test_a_retry_after_a_failed_attempt_generates_afresh;
- ``authorize`` not comparing the key's session with the route's (403 -> 200):
  test_a_key_on_another_sessions_routes_is_403;
- every session recording into one shared EpisodeClient:
  test_concurrent_sessions_never_mix_tokens."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from areal_env.inference.chat_client import ChatClient
from areal_env.inference.local import LocalEngine, LocalEngineConfig
from areal_env.serving import OpenAIServer
from areal_env.testing import ScriptedEngine

MSG = [{"role": "user", "content": "hi"}]


def trained(sample):
    return [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m]


async def until(condition, what):
    """Poll ``condition`` on the event loop (state, not time: the timeout only ends a hang)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


async def post(http, url, body, headers=None):
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def served(tok):
    engine = ScriptedEngine(replies=[tok.encode("ok"), tok.encode("two"), tok.encode("three")])
    async with OpenAIServer(ChatClient(engine, tok)) as server, aiohttp.ClientSession() as http:
        yield server, http, engine


# ---- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer "}, "missing_api_key"),
        ({"Authorization": "Basic abc"}, "missing_api_key"),
        (bearer("sk-areal-unknown"), "invalid_api_key"),
    ],
)
async def test_a_missing_or_unknown_key_is_401(served, headers, code):
    server, http, engine = served
    session = server.sessions.open()
    for route in ("/chat/completions", "/completions", "/reward"):
        status, error = await post(http, session.base_url + route, {"messages": MSG}, headers)
        assert status == 401 and error["error"]["code"] == code
    async with http.get(session.base_url + "/models", headers=headers) as resp:
        assert resp.status == 401
    assert engine.requests == [] and session.trajectory.samples == []


async def test_a_key_on_another_sessions_routes_is_403(served):
    server, http, engine = served
    a, b = server.sessions.open(), server.sessions.open()
    status, error = await post(
        http, b.base_url + "/chat/completions", {"messages": MSG}, bearer(a.api_key)
    )
    assert status == 403 and error["error"]["type"] == "permission_error"
    assert a.id in error["error"]["message"]
    status, _ = await post(http, b.base_url + "/reward", {"reward": 1.0}, bearer(a.api_key))
    assert status == 403 and b.reward is None
    # A session key on the shared (untracked) routes: refused, or the calls would be lost.
    status, error = await post(
        http, server.base_url + "/chat/completions", {"messages": MSG}, bearer(a.api_key)
    )
    assert status == 403 and "session" in error["error"]["message"]
    # An unknown session id with a valid key is another session's route too.
    status, _ = await post(
        http,
        f"{server.url}/sessions/sess-nope/v1/chat/completions",
        {"messages": MSG},
        bearer(a.api_key),
    )
    assert status == 403
    assert engine.requests == [] and a.trajectory.samples == b.trajectory.samples == []


async def test_a_closed_session_refuses_calls_with_410(served):
    server, http, engine = served
    session = server.sessions.open()
    status, _ = await post(
        http, session.base_url + "/chat/completions", {"messages": MSG}, bearer(session.api_key)
    )
    assert status == 200
    trajectory = await session.close()
    assert await session.close() is trajectory and len(server.sessions) == 0
    for route, body in (
        ("/chat/completions", {"messages": MSG}),
        ("/completions", {"prompt": "a"}),
        ("/reward", {"reward": 1.0}),
    ):
        status, error = await post(http, session.base_url + route, body, bearer(session.api_key))
        assert status == 410 and error["error"]["code"] == "session_closed"
    assert len(engine.requests) == 1 and trajectory.num_turns == 1


async def test_the_shared_routes_take_the_servers_key_when_it_has_one(tok):
    engine = ScriptedEngine(replies=[tok.encode("ok")])
    async with (
        OpenAIServer(ChatClient(engine, tok), api_key="sk-shared") as server,
        aiohttp.ClientSession() as http,
    ):
        url = server.base_url + "/chat/completions"
        assert (await post(http, url, {"messages": MSG}))[0] == 401
        assert (await post(http, url, {"messages": MSG}, bearer("sk-wrong")))[0] == 401
        assert (await post(http, url, {"messages": MSG}, bearer("sk-shared")))[0] == 200
        async with http.get(server.url + "/health") as resp:  # health needs no key
            assert resp.status == 200 and (await resp.json())["status"] == "ok"


# ---- rewards --------------------------------------------------------------------------------


async def test_the_agent_posts_its_own_reward(served):
    server, http, _ = served
    session = server.sessions.open()
    url, headers = session.base_url + "/reward", bearer(session.api_key)
    for bad in ({"reward": "high"}, {"reward": True}, {"info": {}}, {"reward": 1, "info": 3}):
        status, error = await post(http, url, bad, headers)
        assert status == 400 and error["error"]["param"] in ("reward", "info")
    assert session.reward is None
    status, body = await post(http, url, {"reward": 0.5}, headers)
    status, body = await post(http, url, {"reward": 1, "info": {"answer": "Paris"}}, headers)
    assert status == 200 and body == {"session": session.id, "reward": 1.0}
    assert session.reward == 1.0 and session.reward_info == {"answer": "Paris"}
    await session.close()
    assert session.reward == 1.0  # the adapter reads it after closing


# ---- isolation ------------------------------------------------------------------------------


async def test_concurrent_sessions_never_mix_tokens(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    engine = LocalEngine(model, tok, LocalEngineConfig(seed=3))

    async def episode(server, i):
        session = server.sessions.open()
        agent = AsyncOpenAI(base_url=session.base_url, api_key=session.api_key, max_retries=0)
        history, returned, prompts = [{"role": "user", "content": f"{i}+{i}="}], [], []
        for turn in range(3):
            resp = await agent.chat.completions.create(
                model="p", messages=history, max_tokens=4, extra_body={"return_token_ids": True}
            )
            returned += resp.choices[0].token_ids
            prompts.append(resp.prompt_token_ids)
            history += [
                resp.choices[0].message.to_dict(exclude_none=True),
                {"role": "user", "content": f"and {turn}?"},
            ]
        await agent.close()
        return returned, prompts, await session.close()

    try:
        async with OpenAIServer(ChatClient(engine, tok)) as server:
            results = await asyncio.gather(*(episode(server, i) for i in range(32)))
    finally:
        await engine.close()
    for returned, prompts, trajectory in results:
        (sample,) = trajectory.samples
        assert trained(sample) == returned  # exactly what its own calls returned
        assert sample.input_ids[: len(prompts[-1])] == prompts[-1]
        assert trajectory.num_turns == 3 and trajectory.metrics["history_splits"] == 0
    first_prompts = {tuple(p[0]) for _, p, _ in results}
    assert len(first_prompts) == 32  # each episode's own question


# ---- retries --------------------------------------------------------------------------------


async def test_a_retried_request_is_answered_once_and_recorded_once(served):
    server, http, engine = served
    session = server.sessions.open()
    url = session.base_url + "/chat/completions"
    body = {"messages": MSG, "max_tokens": 8}
    _, first = await post(
        http, url, body, bearer(session.api_key) | {"x-stainless-retry-count": "0"}
    )
    _, again = await post(
        http, url, body, bearer(session.api_key) | {"x-stainless-retry-count": "1"}
    )
    assert again == first  # the same response, id included
    assert len(engine.requests) == 1 and session.requests == 1 and session.replayed == 1
    # Streaming the retry replays the same completion as chunks.
    headers = bearer(session.api_key) | {"x-stainless-retry-count": "2"}
    async with http.post(url, json={**body, "stream": True}, headers=headers) as resp:
        assert resp.status == 200
    trajectory = await session.close()
    assert len(engine.requests) == 2  # the stream is another body: generated once
    assert trajectory.metrics["replayed_requests"] == 1.0


async def test_a_repeated_request_that_is_not_a_retry_generates_again(served):
    server, http, engine = served
    session = server.sessions.open()
    url = session.base_url + "/chat/completions"
    _, first = await post(http, url, {"messages": MSG}, bearer(session.api_key))
    _, second = await post(http, url, {"messages": MSG}, bearer(session.api_key))
    assert first["id"] != second["id"] and len(engine.requests) == 2
    assert len((await session.close()).samples) == 2


async def test_an_idempotency_key_answers_once_and_refuses_another_body(served):
    server, http, engine = served
    session = server.sessions.open()
    url, key = session.base_url + "/chat/completions", bearer(session.api_key)
    _, first = await post(http, url, {"messages": MSG}, key | {"Idempotency-Key": "k1"})
    _, again = await post(http, url, {"messages": MSG}, key | {"Idempotency-Key": "k1"})
    status, error = await post(
        http, url, {"messages": MSG, "max_tokens": 3}, key | {"Idempotency-Key": "k1"}
    )
    assert again == first and len(engine.requests) == 1
    assert status == 400 and error["error"]["code"] == "idempotency_key_reused"


async def test_a_client_timeout_and_retry_neither_splits_nor_duplicates(served):
    server, http, engine = served
    session = server.sessions.open()
    agent = AsyncOpenAI(
        base_url=session.base_url, api_key=session.api_key, max_retries=2, timeout=0.2
    )
    await engine.pause()  # the first attempt hangs in generation: the client times out
    call = asyncio.create_task(agent.chat.completions.create(model="p", messages=MSG))
    try:
        await until(lambda: session.replayed == 1, "the retry joined the first attempt")
        assert not call.done()
    finally:
        await engine.resume()
    resp = await call
    await agent.close()
    trajectory = await session.close()
    assert resp.choices[0].message.content == "ok"
    assert len(engine.requests) == 1 and session.requests == 1
    (sample,) = trajectory.samples
    assert sample.num_turns == 1 and trajectory.metrics["history_splits"] == 0


async def test_a_retry_after_a_failed_attempt_generates_afresh(served, monkeypatch):
    server, http, engine = served
    session = server.sessions.open()
    url, headers = session.base_url + "/chat/completions", bearer(session.api_key)
    real = engine.agenerate
    failures = [RuntimeError("engine hiccup")]

    async def flaky(request):
        if failures:
            raise failures.pop()
        return await real(request)

    monkeypatch.setattr(engine, "agenerate", flaky)
    status, _ = await post(http, url, {"messages": MSG}, headers)
    assert status == 503
    status, body = await post(
        http, url, {"messages": MSG}, headers | {"x-stainless-retry-count": "1"}
    )
    assert status == 200 and body["choices"][0]["message"]["content"] == "ok"
    assert session.replayed == 0 and len((await session.close()).samples) == 1


async def test_closing_cancels_calls_in_flight_and_records_none_of_them(served):
    server, http, engine = served
    session = server.sessions.open()
    await engine.pause()
    try:
        pending = asyncio.create_task(
            post(
                http,
                session.base_url + "/chat/completions",
                {"messages": MSG},
                bearer(session.api_key),
            )
        )
        await until(lambda: session.in_flight == 1, "the request reached the engine")
        trajectory = await session.close()
    finally:
        await engine.resume()
    status, error = await pending
    assert status == 410 and error["error"]["code"] == "session_closed"
    assert trajectory.samples == [] and engine.requests == []


async def test_sessions_of_an_adapter_record_into_the_episode_client_it_was_given(served):
    server, http, engine = served
    episode = server.client.episode()
    async with server.sessions.open(episode) as session:
        status, _ = await post(
            http, session.base_url + "/chat/completions", {"messages": MSG}, bearer(session.api_key)
        )
        assert status == 200
        assert session.env_vars() == {
            "OPENAI_BASE_URL": session.base_url,
            "OPENAI_API_KEY": session.api_key,
        }
    assert session.closed and episode.trajectory is session.trajectory
    assert episode.trajectory.num_turns == 1


async def test_stopping_the_server_closes_its_sessions(tok):
    engine = ScriptedEngine(replies=[tok.encode("ok")])
    server = OpenAIServer(ChatClient(engine, tok))
    await server.start()
    session = server.sessions.open()
    await server.stop()
    assert session.closed and len(server.sessions) == 0
    agent = AsyncOpenAI(base_url=session.base_url, api_key=session.api_key, max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        await agent.models.list()
    await agent.close()


async def test_a_run_shares_one_launched_server_through_its_resource_registry(tok):
    from areal_env.resources import ResourceRegistry

    client = ChatClient(ScriptedEngine(replies=[tok.encode("ok")]), tok)
    registry = ResourceRegistry("run")
    server = await registry.aget("openai_server", lambda: OpenAIServer.launch(client))
    assert await registry.aget("openai_server", lambda: OpenAIServer.launch(client)) is server
    session = server.sessions.open(client.episode())
    await registry.aclose()  # the run's end stops the server and closes its sessions
    assert session.closed
    with pytest.raises(RuntimeError, match="not started"):
        server.sessions.open()
