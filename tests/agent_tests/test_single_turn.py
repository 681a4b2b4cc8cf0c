from __future__ import annotations

import pytest

from areal_env.agents.base import finish_trajectory
from areal_env.agents.single_turn import SingleTurnAgent
from areal_env.inference.chat_client import ChatClient
from areal_env.testing import ParityEnv, ScriptedEngine, char_tokenizer


class ToolParityEnv(ParityEnv):
    """ParityEnv that offers a tool, so replies may be tool calls."""

    @property
    def tools(self):
        return [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.fixture
def tok():
    return char_tokenizer()


async def test_single_turn_agent_steps_with_a_plain_text_reply(tok):
    client = ChatClient(ScriptedEngine(replies=[tok.encode("b")]), tok)
    traj = await SingleTurnAgent().run(ParityEnv(), client.episode(), seed=0)
    assert traj.reward == 1.0 and traj.num_turns == 1 and traj.task_id.startswith("parity:")
    assert traj.info["correct"] is True and not traj.truncated


async def test_a_tool_call_only_reply_is_an_action_the_env_accepts(tok):
    reply = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'
    client = ChatClient(ScriptedEngine(replies=[tok.encode(reply)]), tok)
    env = ToolParityEnv()
    traj = await SingleTurnAgent().run(env, client.episode(), seed=0)
    assert traj.reward == 0.0 and traj.num_turns == 1  # content None reads as empty text
    action = traj.messages[-1]
    assert (
        action["content"] is None and action["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    )
    assert action in env.action_space


async def test_finish_trajectory_keeps_every_sample_of_a_split_episode(tok):
    engine = ScriptedEngine(replies=[tok.encode("1"), tok.encode("2")])
    ep = ChatClient(engine, tok).episode()
    await ep.chat.completions.create(messages=[{"role": "user", "content": "a"}])
    await ep.chat.completions.create(messages=[{"role": "user", "content": "a"}], temperature=0.5)
    traj = finish_trajectory(ep, 0.5, {"task_id": "t", "nested": {"x": 1}, "ok": True})
    assert len(traj.samples) == 2 and traj.reward == 0.5 and traj.task_id == "t"
    assert traj.info == {"task_id": "t", "ok": True}
