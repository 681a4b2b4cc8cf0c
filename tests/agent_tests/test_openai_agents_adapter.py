"""The OpenAI Agents SDK adapter over a scripted engine, through a real session server.

Mutations tried (each made a test here fail, then was reverted):
- env tools not added to the starting agent (``env_tools`` ignored): the search
  tool call is an unknown tool, the run fails -> test_env_tool_steps_the_env...
- the final output not stepped into the env: reward 0 -> the env, handoff and tracing tests
- ``tracing_disabled=not self.tracing`` replaced by ``False``: the processor sees a
  trace -> test_tracing_is_off...
- ``RunConfig(model=...)`` dropped (every agent falls back to the SDK's default
  OpenAI model, no session): every run test fails
- SDK exceptions not wrapped: MaxTurnsExceeded escapes as itself -> test_max_turns...
"""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

import areal_env  # noqa: F401
from areal_env.agents.program_adapter import SERVER_KEY, AgentProgramError
from areal_env.agents.registry import make_agent
from areal_env.errors import EpisodeError
from areal_env.inference.chat_client import ChatClient
from areal_env.resources import ResourceRegistry
from areal_env.testing import ScriptedEngine, char_tokenizer

sdk = pytest.importorskip("agents")  # the OpenAI Agents SDK
from areal_env.agents.openai_agents_adapter import OpenAIAgentsAdapter  # noqa: E402

TOK = char_tokenizer()


def call(name: str, **arguments: object) -> str:
    payload = json.dumps({"name": name, "arguments": arguments})
    return f"<tool_call>{payload}</tool_call>"


def scripted(*replies: str) -> tuple[ChatClient, ScriptedEngine]:
    engine = ScriptedEngine(replies=[TOK.encode(r) for r in replies], logprob=-0.25)
    return ChatClient(engine, TOK), engine


def search_env(resources: ResourceRegistry):
    return gym.make("areal/Search-v0", num_entities=10, resources=resources).unwrapped


@pytest.fixture
async def resources():
    registry = ResourceRegistry(name="test")
    yield registry
    await registry.aclose()


def generated_ids(traj) -> list[int]:
    return [t for s in traj.samples for t, m in zip(s.input_ids, s.loss_mask, strict=True) if m]


async def test_env_tool_steps_the_env_and_the_env_scores_the_final_output(resources):
    env = search_env(resources)
    _, info = await env.areset(seed=3)
    replies = [call("search", query=info["query"]), f"<answer>{info['answer']}</answer>"]
    client, engine = scripted(*replies)
    adapter = OpenAIAgentsAdapter(agent=sdk.Agent(name="searcher"), max_turns=4)
    traj = await adapter.run(env, client.episode(), seed=3)
    assert traj.reward == 1.0
    assert traj.metrics["tool_calls"] == 1.0
    # One token sequence: the tool result appended as prompt tokens, nothing re-tokenized.
    assert len(traj.samples) == 1, traj.metrics
    sample = traj.samples[0]
    expected = [TOK.encode(r) + [TOK.eos_token_id] for r in replies]
    assert generated_ids(traj) == [t for ids in expected for t in ids]
    assert [lp for lp, m in zip(sample.logprobs, sample.loss_mask, strict=True) if m] == [
        -0.25
    ] * sum(map(len, expected))
    assert len(engine.requests) == 2
    # The env saw the search call and the passage came back as a tool message.
    assert [m["role"] for m in traj.messages][-3:] == ["assistant", "tool", "assistant"]
    assert info["answer"] in traj.messages[-2]["content"]
    assert resources.get(SERVER_KEY, dict).sessions.client is client  # launched once, shared


async def test_user_function_tool_and_handoff(resources):
    env = gym.make("areal/Math-v0", resources=resources).unwrapped
    _, info = await env.areset(seed=0)
    seen: list[int] = []

    @sdk.function_tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        seen.append(a + b)
        return a + b

    solver = sdk.Agent(name="solver", instructions="Answer with the number only.")
    triage = sdk.Agent(name="triage", instructions="Hand off.", tools=[add], handoffs=[solver])
    client, engine = scripted(call("add", a=1, b=2), call("transfer_to_solver"), info["answer"])
    traj = await OpenAIAgentsAdapter(agent=triage, max_turns=5).run(env, client.episode(), seed=0)
    assert seen == [3]
    assert traj.reward == 1.0
    assert len(engine.requests) == 3
    # The solver's turn runs under its own instructions: the SDK's prompt changes there.
    assert "Answer with the number only." in TOK.decode(engine.requests[-1].input_ids)
    assert "Answer with the number only." not in TOK.decode(engine.requests[0].input_ids)
    assert generated_ids(traj)[-len(info["answer"]) - 1 :] == TOK.encode(info["answer"]) + [
        TOK.eos_token_id
    ]


async def test_tracing_is_off_no_trace_reaches_a_processor(resources):
    class Recorder(sdk.TracingProcessor):
        def __init__(self) -> None:
            self.events: list[str] = []

        def on_trace_start(self, trace) -> None:
            self.events.append("trace")

        def on_trace_end(self, trace) -> None:
            self.events.append("trace_end")

        def on_span_start(self, span) -> None:
            self.events.append("span")

        def on_span_end(self, span) -> None:
            self.events.append("span_end")

        def shutdown(self) -> None:
            pass

        def force_flush(self) -> None:
            pass

    recorder = Recorder()
    sdk.set_trace_processors([recorder])  # replaces the exporter to api.openai.com
    try:
        env = gym.make("areal/Math-v0", resources=resources).unwrapped
        _, info = await env.areset(seed=1)
        client, _ = scripted(info["answer"])
        adapter = OpenAIAgentsAdapter(agent=sdk.Agent(name="a"))
        traj = await adapter.run(env, client.episode(), seed=1)
        assert traj.reward == 1.0
        assert recorder.events == []
    finally:
        sdk.set_trace_processors([])


async def test_max_turns_is_an_episode_failure(resources):
    env = search_env(resources)
    client, _ = scripted(call("search", query="x"))  # searches forever
    adapter = OpenAIAgentsAdapter(agent=sdk.Agent(name="loop"), max_turns=2)
    with pytest.raises(AgentProgramError, match="MaxTurnsExceeded") as caught:
        await adapter.run(env, client.episode(), seed=0)
    assert isinstance(caught.value, EpisodeError)


def factory() -> object:
    return sdk.Agent(name="from_factory", instructions="Be brief.")


def test_registry_builds_it_from_a_factory_spec(tmp_path):
    adapter = make_agent("openai_agents", factory=f"{__name__}:factory", max_turns=3)
    assert adapter.agent.name == "from_factory" and adapter.max_turns == 3
    module = tmp_path / "my_agent.py"
    module.write_text("import agents\ndef make():\n    return agents.Agent(name='file')\n")
    assert make_agent("openai_agents", factory=f"{module}:make").agent.name == "file"
    with pytest.raises(ValueError, match="module:function"):
        make_agent("openai_agents", factory="no_colon")
    with pytest.raises(ValueError, match="exactly one"):
        make_agent("openai_agents")
