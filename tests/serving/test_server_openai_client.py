"""The official openai client (sync and async, streaming and not) against OpenAIServer.

Mutations tried (each made the named test fail):
- session chat calls through ``client.untracked()`` instead of the session's
  EpisodeClient: test_session_chat_records_exactly_what_the_in_process_client_records;
- the stream without its final ``data: [DONE]``:
  test_stream_is_server_sent_events_that_join_to_the_whole_reply;
- the tool-call header chunk without its id and name:
  test_streamed_tool_call_accumulates_to_the_same_call;
- choices of ``n`` all given index 0: test_n_choices_are_indexed_and_each_recorded;
- a text prompt that continues an earlier completion starting a new sample instead
  of extending it: test_text_completions_continue_the_sample_token_in_token_out."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from areal_env.inference.chat_client import ChatClient, generation_of
from areal_env.inference.local import LocalEngine
from areal_env.serving import OpenAIServer
from areal_env.testing import ScriptedEngine

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "look something up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


def user(text):
    return {"role": "user", "content": text}


def call_text(name, args_json):
    return f'<tool_call>{{"name": "{name}", "arguments": {args_json}}}</tool_call>'


def trained(sample):
    return [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m]


def agent_client(session) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=session.base_url, api_key=session.api_key, max_retries=0)


async def tool_episode(create, tok_replies_len):
    """Play search -> result -> answer through ``create`` (in-process or HTTP)."""
    history = [user("Where is the Louvre?")]
    replies = []
    for _ in range(tok_replies_len):
        resp = await create(messages=history, tools=TOOLS, model="policy")
        message = resp.choices[0].message
        replies.append(resp)
        history = [*history, message.to_dict(exclude_none=True)]
        if message.tool_calls:
            history.append(
                {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "Paris"}
            )
        else:
            history.append(user("thanks"))
    return replies


async def test_session_chat_records_exactly_what_the_in_process_client_records(tok):
    script = [call_text("search", '{"q": "Louvre"}'), "It is in Paris.", "ok"]

    def engine():
        return ScriptedEngine(replies=[tok.encode(r) for r in script], logprob=-0.5, version=3)

    local = ChatClient(engine(), tok).episode()
    await tool_episode(local.chat.completions.create, 3)

    http_engine = engine()
    async with OpenAIServer(ChatClient(http_engine, tok)) as server:
        session = server.sessions.open()
        agent = agent_client(session)
        replies = await tool_episode(
            lambda **kw: agent.chat.completions.create(**kw, extra_body={"return_token_ids": True}),
            3,
        )
        await agent.close()
        trajectory = await session.close()

    assert replies[0].choices[0].message.tool_calls[0].function.arguments == '{"q": "Louvre"}'
    assert replies[1].choices[0].message.content == "It is in Paris."
    (ours,), (theirs,) = local.trajectory.samples, trajectory.samples
    assert theirs.input_ids == ours.input_ids and theirs.loss_mask == ours.loss_mask
    assert theirs.logprobs == ours.logprobs and theirs.versions == ours.versions
    assert trajectory.num_turns == 3 and trajectory.metrics["history_splits"] == 0
    # The extra fields are the engine's own ids: what was sampled, and what it saw.
    returned = [t for r in replies for t in r.choices[0].token_ids]
    assert returned == trained(theirs)
    assert replies[2].prompt_token_ids == list(http_engine.requests[2].input_ids)
    assert trajectory.messages[-1]["content"] == "ok"


async def test_stream_is_server_sent_events_that_join_to_the_whole_reply(tok):
    engine = ScriptedEngine(replies=[tok.encode("hello")], logprob=-0.25)
    async with OpenAIServer(ChatClient(engine, tok)) as server:
        session = server.sessions.open()
        agent = agent_client(session)
        stream = await agent.chat.completions.create(
            model="policy",
            messages=[user("hi")],
            stream=True,
            logprobs=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        headers = {"Authorization": f"Bearer {session.api_key}"}
        async with aiohttp.ClientSession() as http:
            body = {"messages": [user("hi")], "stream": True}
            async with http.post(
                f"{session.base_url}/chat/completions", json=body, headers=headers
            ) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                raw = (await resp.read()).decode()
        await agent.close()
        trajectory = await session.close()

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "hello"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    logprobs = [
        e.logprob
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert logprobs == [-0.25] * 5
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    assert len(trajectory.samples) == 2  # two requests, both recorded


async def test_streamed_tool_call_accumulates_to_the_same_call(tok):
    raw_args = '{"q": "a query long enough to be sent in several pieces"}'
    engine = ScriptedEngine(replies=[tok.encode(call_text("search", raw_args))])
    async with OpenAIServer(ChatClient(engine, tok)) as server:
        session = server.sessions.open()
        agent = agent_client(session)
        async with agent.chat.completions.stream(
            model="policy", messages=[user("find")], tools=TOOLS
        ) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_completion()
        await agent.close()
        await session.close()

    (call,) = final.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("search", raw_args)
    assert call.id.startswith("call_") and final.choices[0].finish_reason == "tool_calls"
    pieces = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(pieces) >= 2 and "".join(p.arguments_delta for p in pieces) == raw_args


async def test_n_choices_are_indexed_and_each_recorded(tok):
    engine = ScriptedEngine(replies=[tok.encode("a"), tok.encode("bb"), tok.encode("ccc")])
    async with OpenAIServer(ChatClient(engine, tok)) as server:
        session = server.sessions.open()
        agent = agent_client(session)
        resp = await agent.chat.completions.create(model="p", messages=[user("x")], n=3)
        await agent.close()
        trajectory = await session.close()
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert sorted(c.message.content for c in resp.choices) == ["a", "bb", "ccc"]
    assert resp.usage.completion_tokens == 2 + 3 + 4
    assert len(trajectory.samples) == 3 and trajectory.num_generated == 9


async def test_text_completions_continue_the_sample_token_in_token_out(tok):
    engine = ScriptedEngine(replies=[tok.encode("42"), tok.encode("!"), tok.encode("z")])
    async with OpenAIServer(ChatClient(engine, tok)) as server:
        session = server.sessions.open()
        agent = agent_client(session)
        first = await agent.completions.create(model="p", prompt="6*7=", max_tokens=2, logprobs=1)
        assert first.choices[0].text == "42" and first.choices[0].finish_reason == "length"
        assert first.choices[0].logprobs.tokens == ["4", "2"]
        second = await agent.completions.create(
            model="p", prompt="6*7=42 and", extra_body={"return_token_ids": True}
        )
        ids = await agent.completions.create(model="p", prompt=[5, 6, 7])
        await agent.close()
        trajectory = await session.close()

    assert second.choices[0].text == "!" and ids.choices[0].text == "z"
    continued, by_ids = trajectory.samples
    want = [*tok.encode("6*7="), *tok.encode("42"), *tok.encode(" and"), *tok.encode("!")]
    assert continued.input_ids == [*want, tok.eos_token_id]
    assert trained(continued) == [*tok.encode("42"), *tok.encode("!"), tok.eos_token_id]
    assert second.choices[0].prompt_token_ids == want[:-1]
    assert by_ids.input_ids[:3] == [5, 6, 7] and engine.requests[2].input_ids == (5, 6, 7)


async def test_text_completions_on_the_shared_route_batch_prompts_and_stream(tok):
    engine = ScriptedEngine(replies=[tok.encode("a"), tok.encode("b"), tok.encode("c")])
    async with OpenAIServer(ChatClient(engine, tok)) as server:
        agent = AsyncOpenAI(base_url=server.base_url, api_key="anything", max_retries=0)
        batch = await agent.completions.create(model="p", prompt=["x", "y"], n=2)
        stream = await agent.completions.create(model="p", prompt="q", stream=True)
        streamed = "".join([c.choices[0].text async for c in stream])
        await agent.close()
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices] == ["a", "b", "c", "a"]
    prompts = [tok.decode(r.input_ids) for r in engine.requests[:4]]
    assert prompts == ["x", "x", "y", "y"]  # choice i*n + j answers prompt i
    assert streamed == "b"


async def test_models_list_and_retrieve(tok):
    client = ChatClient(ScriptedEngine(replies=[[5]]), tok, model_name="org/tiny-model")
    async with OpenAIServer(client) as server:
        session = server.sessions.open()
        for base_url, key in ((server.base_url, "x"), (session.base_url, session.api_key)):
            agent = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)
            models = await agent.models.list()
            assert [m.id for m in models.data] == ["org/tiny-model"]
            assert (await agent.models.retrieve("org/tiny-model")).owned_by == "areal-env"
            with pytest.raises(openai.NotFoundError, match="gpt-4o"):
                await agent.models.retrieve("gpt-4o")
            await agent.close()


def test_sync_client_chat_stream_tools_completions_and_models(tok, threaded):
    replies = ["hi there", call_text("search", '{"q": "x"}'), "streamed", "raw"]
    engine = ScriptedEngine(replies=[tok.encode(r) for r in replies])
    server = threaded(ChatClient(engine, tok)).server
    session = server.sessions.open()
    agent = OpenAI(base_url=session.base_url, api_key=session.api_key, max_retries=0)
    history = [user("hello")]
    resp = agent.chat.completions.create(model="p", messages=history)
    assert resp.choices[0].message.content == "hi there"
    history += [resp.choices[0].message.to_dict(exclude_none=True), user("search x")]
    tool = agent.chat.completions.create(model="p", messages=history, tools=TOOLS)
    assert tool.choices[0].message.tool_calls[0].function.arguments == '{"q": "x"}'
    chunks = list(agent.chat.completions.create(model="p", messages=[user("s")], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "streamed"
    assert agent.completions.create(model="p", prompt="r").choices[0].text == "raw"
    assert [m.id for m in agent.models.list().data] == [server.client.model_name]
    agent.close()
    # The tool call was asked without tools before: the template adds the tool block, so
    # it cannot extend the first turn and starts a sample; the stream and raw call do too.
    assert session.trajectory.num_turns == 4 and session.requests == 4


async def test_tiny_local_engine_through_the_client_records_its_own_samples(
    tok, tiny_model_and_tokenizer
):
    model, tiny_tok = tiny_model_and_tokenizer
    engine = LocalEngine(model, tiny_tok)
    try:
        async with OpenAIServer(ChatClient(engine, tiny_tok)) as server:
            session = server.sessions.open()
            agent = agent_client(session)
            resp = await agent.chat.completions.create(
                model="p",
                messages=[user("12+30=")],
                max_tokens=5,
                logprobs=True,
                extra_body={"return_token_ids": True},
            )
            await agent.close()
            trajectory = await session.close()
    finally:
        await engine.close()
    (sample,) = trajectory.samples
    assert trained(sample) == resp.choices[0].token_ids and 1 <= sample.num_generated <= 5
    generated = [lp for lp, m in zip(sample.logprobs, sample.loss_mask, strict=True) if m]
    returned = [e.logprob for e in resp.choices[0].logprobs.content]
    assert generated[: len(returned)] == pytest.approx(returned)
    assert {v for v, m in zip(sample.versions, sample.loss_mask, strict=True) if m} == {0}


def test_generation_extra_field_is_not_sent(tok):
    # The in-process extra fields (generation, parse_errors) stay server-side.
    from areal_env.serving.chat import chat_body

    engine = ScriptedEngine(replies=[tok.encode("x")])
    import asyncio

    resp = asyncio.run(
        ChatClient(engine, tok).episode().chat.completions.create(messages=[user("q")])
    )
    body = chat_body([resp], token_ids=False)
    assert "generation" not in body and "parse_errors" not in body
    assert "token_ids" not in body["choices"][0] and generation_of(resp).output_ids
    json.dumps(body)
