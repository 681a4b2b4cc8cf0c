"""Gold demonstrations by teacher forcing: the rows a warm start trains on.

Mutations tried (each failed the named test, then restored): keeping the turn
ending in the reply (``reply_ids`` without the close cut) -> the sampled-tokens
test; no reward filter -> the dropped-demonstration test; SearchEnv demonstrating
the question instead of its query -> the search test's gold_retrieved check.
"""

from __future__ import annotations

import asyncio
import json

import gymnasium as gym
import pytest

import areal_env  # noqa: F401  (registers the env ids)
from areal_env.agents.single_turn import SingleTurnAgent
from areal_env.agents.tool_calling import ToolCallingAgent
from areal_env.envs.base import AsyncEnv
from areal_env.envs.search.env import SearchEnv
from areal_env.inference.chat_client import ChatClient
from areal_env.rollout.demonstrations import build_demonstrations, gold_messages, reply_ids
from areal_env.testing import ParityEnv, ScriptedEngine, char_tokenizer


def client() -> ChatClient:
    return ChatClient(ScriptedEngine(replies=[[5]]), char_tokenizer())


def demos(make_env, agent, seeds, **kw):
    return asyncio.run(build_demonstrations(make_env, agent, client(), seeds=seeds, **kw))


def test_search_demonstration_is_the_rollout_of_its_gold_replies():
    """Same tokens and mask as the agent playing the gold replies on a scripted engine."""
    tok = char_tokenizer()
    (demo,), stats = demos(lambda: SearchEnv(num_entities=30), ToolCallingAgent(), [7])
    assert stats.built == 1 and stats.dropped == 0
    env = SearchEnv(num_entities=30)
    _, info = env.reset(seed=7)
    args = json.dumps({"query": info["query"]})
    call = '<tool_call>{"name": "search", "arguments": ' + args + "}</tool_call>"
    replies = [call, f"<answer>{info['answer']}</answer>"]
    engine = ScriptedEngine(replies=[tok.encode(r) for r in replies], logprob=0.0)
    rollout = asyncio.run(ToolCallingAgent().run(env, ChatClient(engine, tok).episode(), seed=7))
    (d,), (r,) = demo.samples, rollout.samples
    assert d.input_ids == r.input_ids and d.loss_mask == r.loss_mask
    assert demo.reward == 1.0 and demo.num_turns == 2 and demo.info["gold_retrieved"] is True
    # Trained tokens: exactly the two assistant replies, each ended by the stop token.
    trained = [t for t, m in zip(d.input_ids, d.loss_mask, strict=True) if m]
    assert trained == [t for text in replies for t in [*tok.encode(text), tok.eos_token_id]]
    # The passage the search returned is in the row, as prompt (not trained on).
    prompt = tok.decode([t for t, m in zip(d.input_ids, d.loss_mask, strict=True) if not m])
    assert f"The capital of {info['query']} is {info['answer']}." in prompt


def test_single_turn_env_falls_back_to_the_reset_answer():
    tok = char_tokenizer()
    make = lambda: gym.make("areal/Math-v0").unwrapped  # noqa: E731
    pool, _ = demos(make, SingleTurnAgent(), range(5))
    for seed, demo in zip(range(5), pool, strict=True):
        _, info = make().reset(seed=seed)
        (sample,) = demo.samples
        trained = [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m]
        assert trained == [*tok.encode(info["answer"]), tok.eos_token_id]
        assert demo.reward == 1.0


class WrongGold(ParityEnv):
    """Demonstrates an odd first character, which ParityEnv scores 0."""

    def demonstration(self):
        return [{"role": "assistant", "content": "a"}]


def test_demonstrations_below_the_reward_are_dropped_and_counted():
    class Mixed(ParityEnv):
        def demonstration(self):
            return [{"role": "assistant", "content": "a" if self.np_random.random() < 0.5 else "b"}]

    pool, stats = demos(Mixed, SingleTurnAgent(), range(40))
    assert stats.dropped > 0 and stats.built == len(pool) == 40 - stats.dropped
    assert all(d.reward == 1.0 for d in pool)
    with pytest.raises(ValueError, match="no demonstration earned"):
        demos(WrongGold, SingleTurnAgent(), range(3))


def test_an_env_with_nothing_to_demonstrate_is_named():
    class NoAnswer(AsyncEnv):
        async def _areset(self, options):
            return [{"role": "user", "content": "?"}], {}

        async def _astep(self, message):
            return [], 0.0, True, False, {}

    env = NoAnswer()
    with pytest.raises(ValueError, match="NoAnswer gives no demonstration"):
        gold_messages(env, {})


def test_reply_ids_leave_the_turn_ending_to_the_stop_token():
    tok = char_tokenizer()
    context = [{"role": "user", "content": "1+1="}]
    ids = reply_ids(client(), context, None, {"role": "assistant", "content": "2"})
    assert tok.decode(ids) == "2"
