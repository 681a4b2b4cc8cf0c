"""The CAMEL adapter over a scripted engine: a real ChatAgent, a real server, a real env.

The engine replays the tiny chat template's Hermes tool-call text, so the
ChatAgent's OpenAI-compatible model gets a tool call back through the HTTP
session, CAMEL runs it (our FunctionTool steps the env), and the final answer is
scored by the env. Nothing may leave the machine: CAMEL's default token counter
would fetch tiktoken data, so tiktoken and non-loopback connections are refused.
"""

from __future__ import annotations

import socket

import gymnasium as gym
import pytest

pytest.importorskip("camel", reason="camel-ai is tested in .venv-camel (docs/camel.md)")

import areal_env  # noqa: F401  (registers the env ids)
from areal_env.agents.camel_adapter import CamelAdapter, resolve_factory
from areal_env.inference.chat_client import ChatClient
from areal_env.resources import ResourceRegistry
from areal_env.testing import ScriptedEngine, char_tokenizer

CALL = '<tool_call>{"name": "search", "arguments": {"query": "%s"}}</tool_call>'
FACTORY = "examples.camel.agent:make_agent"


def make_agent(model, tools, system_message):
    from camel.agents import ChatAgent

    return ChatAgent(system_message=system_message, model=model, tools=tools, max_iteration=4)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Refuse tiktoken and every connection that is not to the loopback interface."""
    import tiktoken

    def no_tiktoken(*args, **kwargs):
        raise AssertionError("tiktoken used: CAMEL's default token counter downloads its data")

    monkeypatch.setattr(tiktoken, "get_encoding", no_tiktoken)
    monkeypatch.setattr(tiktoken, "encoding_for_model", no_tiktoken)
    connect = socket.socket.connect

    def loopback_only(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"network access attempted: {address!r}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture
async def resources():
    registry = ResourceRegistry(name="test")
    yield registry
    await registry.aclose()


def search_env(resources, **kwargs):
    return gym.make("areal/Search-v0", num_entities=10, resources=resources, **kwargs).unwrapped


async def test_a_tool_call_then_an_answer_is_one_recorded_scored_episode(resources):
    tok = char_tokenizer()
    _, info = await search_env(resources).areset(seed=3)
    replies = [CALL % info["query"], f"<answer>{info['answer']}</answer>"]
    engine = ScriptedEngine(replies=[tok.encode(r) for r in replies], logprob=-0.25)
    engine.set_version(7)
    client = ChatClient(engine, tok)
    env = search_env(resources)

    traj = await CamelAdapter(factory=make_agent).run(env, client.episode(), seed=3)

    assert traj.reward == 1.0 and not traj.truncated
    assert traj.info["gold_retrieved"] is True and traj.info["searches"] == 1
    assert traj.metrics["tool_calls"] == 1.0 and traj.num_turns == 2
    # One token sequence: the tool result went in as prompt tokens, nothing re-tokenized.
    assert len(traj.samples) == 1 and len(engine.requests) == 2
    sample = traj.samples[0]
    stop = engine.requests[0].sampling.stop_token_ids[0]
    trained = [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m]
    assert trained == [t for r in replies for t in [*tok.encode(r), stop]]
    mask = sample.loss_mask
    assert [lp for lp, m in zip(sample.logprobs, mask, strict=True) if m] == [-0.25] * len(trained)
    assert {v for v, m in zip(sample.versions, mask, strict=True) if m} == {7}
    # The second request's prompt is the first sample continued: what the engine saw is recorded.
    assert (
        list(engine.requests[1].input_ids) == sample.input_ids[: len(engine.requests[1].input_ids)]
    )


async def test_a_tool_call_that_ends_the_episode_stops_the_agent_there(resources):
    tok = char_tokenizer()
    engine = ScriptedEngine(replies=[tok.encode(CALL % "nothing")])
    client = ChatClient(engine, tok)
    env = search_env(resources, max_turns=1)  # the first tool call is the last turn

    traj = await CamelAdapter(factory=make_agent).run(env, client.episode(), seed=0)

    assert len(engine.requests) == 1, "the agent asked the model again after the episode ended"
    assert traj.truncated and traj.reward == 0.0 and traj.metrics["tool_calls"] == 1.0


async def test_a_wrong_answer_earns_nothing_and_the_server_is_shared(resources):
    tok = char_tokenizer()
    client = ChatClient(ScriptedEngine(replies=[tok.encode("<answer>no</answer>")]), tok)
    adapter = CamelAdapter(factory=make_agent, model_config={"max_tokens": 32})
    first = await adapter.run(search_env(resources), client.episode(), seed=1)
    second = await adapter.run(search_env(resources), client.episode(), seed=2)
    assert (first.reward, second.reward) == (0.0, 0.0)
    assert first.metrics["tool_calls"] == 0.0 and first.num_turns == 1
    server = resources.get("openai_server", lambda: None)
    assert server is not None and len(server.sessions) == 0  # both sessions closed


def test_a_factory_is_named_as_module_function():
    assert resolve_factory(f"{__name__}:make_agent") is make_agent
    with pytest.raises(ValueError, match="module:function"):
        resolve_factory("no_colon_here")
    with pytest.raises(ValueError, match="nothing callable"):
        resolve_factory(f"{__name__}:CALL")
