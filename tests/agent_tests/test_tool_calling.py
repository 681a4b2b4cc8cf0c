"""The multi-turn tool-calling agent over Search-v0, with a scripted engine."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from areal_env.agents.registry import make_agent
from areal_env.agents.tool_calling import ToolCallingAgent
from areal_env.envs.search.env import SearchEnv
from areal_env.inference.chat_client import ChatClient
from areal_env.testing import ScriptedEngine, char_tokenizer

CALL = '<tool_call>{"name": "search", "arguments": %s}</tool_call>'


def search(query: str, **extra) -> str:
    return CALL % json.dumps({"query": query, **extra})


def play(replies: list[str], *, seed: int = 3, tok=None, **agent_kw):
    tok = tok or char_tokenizer()
    engine = ScriptedEngine(replies=[tok.encode(r) for r in replies], logprob=-0.25)
    env = SearchEnv(num_entities=10)
    _, info = env.reset(seed=seed)
    episode = ChatClient(engine, tok).episode()
    traj = asyncio.run(ToolCallingAgent(**agent_kw).run(env, episode, seed=seed))
    return traj, engine, info, tok


def test_several_turns_are_one_sequence_that_lines_up_with_the_engine():
    tok = char_tokenizer()
    env = SearchEnv(num_entities=10)
    _, info = env.reset(seed=3)
    replies = [search("nothing here"), search(info["query"]), f"<answer>{info['answer']}</answer>"]
    traj, engine, _, _ = play(replies, tok=tok)
    assert traj.reward == 1.0 and traj.num_turns == 3 and not traj.truncated
    (sample,) = traj.samples
    # Every request's prompt is exactly the sequence so far: the next turn extends it.
    for before, after in zip(engine.requests, engine.requests[1:], strict=False):
        assert after.input_ids[: len(before.input_ids)] == before.input_ids
    # Trained positions are exactly the engine's outputs, with their logprobs and versions.
    outputs = [[*tok.encode(r), tok.eos_token_id] for r in replies]
    trained = [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m]
    assert trained == [t for out in outputs for t in out]
    assert {lp for lp, m in zip(sample.logprobs, sample.loss_mask, strict=True) if m} == {-0.25}
    assert all((v == 0) == bool(m) for v, m in zip(sample.versions, sample.loss_mask, strict=True))
    # Tool results sit between the turns as prompt tokens.
    assert info["answer"] in tok.decode(
        [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if not m]
    )
    assert traj.metrics["tool_calls"] == 2.0 and traj.info["searches"] == 2
    assert traj.info["gold_retrieved"] is True


def test_parallel_tool_calls_in_one_message_each_get_a_result():
    env = SearchEnv(num_entities=10)
    _, info = env.reset(seed=3)
    both = search("zzz") + search(info["query"], top_k=1)
    traj, _, _, _ = play([both, f"<answer>{info['answer']}</answer>"])
    tool_messages = [m for m in traj.messages if m["role"] == "tool"]
    assert len(tool_messages) == 2 and traj.metrics["tool_calls"] == 2.0
    ids = [c["id"] for c in traj.messages[2]["tool_calls"]]
    assert [m["tool_call_id"] for m in tool_messages] == ids
    assert info["answer"] in tool_messages[1]["content"] and traj.reward == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        '<tool_call>{"name": "browse", "arguments": {"url": "x"}}</tool_call>',
        '<tool_call>{"name": "search", "arguments": {"top_k": 2}}</tool_call>',
        '<tool_call>{"name": "search", "arguments": {"query": "x", "top_k": 99}}</tool_call>',
    ],
)
def test_a_malformed_call_gets_an_error_message_and_the_episode_goes_on(bad):
    env = SearchEnv(num_entities=10)
    _, info = env.reset(seed=3)
    traj, _, _, _ = play([bad, f"<answer>{info['answer']}</answer>"])
    (tool_message,) = [m for m in traj.messages if m["role"] == "tool"]
    assert tool_message["content"].startswith("error:")
    assert traj.metrics["tool_errors"] == 1.0 and traj.reward == 1.0


def test_unparseable_tool_call_json_is_counted_and_read_as_the_answer():
    traj, _, _, _ = play(['<tool_call>{"name": "search", "arguments": {</tool_call>'])
    assert traj.metrics["tool_call_parse_errors"] == 1.0 and traj.reward == 0.0


def test_turn_limit_cuts_the_episode_without_reward():
    traj, _, _, _ = play([search("a")], max_turns=2)  # the engine only ever searches
    assert traj.truncated and traj.reward == 0.0 and traj.num_turns == 2


def test_env_turn_limit_truncates_too():
    traj, _, _, _ = play([search("a")], max_turns=10)  # SearchEnv's own limit is 4
    assert traj.truncated and traj.num_turns == 4


def test_context_budget_stops_the_episode():
    traj, _, _, _ = play([search("a")], max_turns=10, max_context_tokens=200)
    assert traj.truncated and traj.metrics["context_cut"] == 1.0 and traj.num_turns < 4


def test_a_template_that_strips_earlier_thinking_gives_rows_sharing_the_reward():
    tok = copy.deepcopy(char_tokenizer())
    tok.chat_template = (
        "{%- for m in messages -%}"
        "<|im_start|>{{ m['role'] }}{{ '\\n' }}"
        "{%- if m['role'] == 'assistant' and not loop.last -%}"
        "{{ (m['content'] or '').split('</think>')[-1] }}"
        "{%- else -%}{{ m['content'] or '' }}{%- endif -%}"
        "{%- for c in m.get('tool_calls') or [] -%}"
        '<tool_call>{"name": "{{ c.function.name }}", '
        '"arguments": {{ c.function.arguments | tojson }}}</tool_call>'
        "{%- endfor -%}"
        "<|im_end|>{{ '\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
    )
    env = SearchEnv(num_entities=10)
    _, info = env.reset(seed=3)
    replies = ["<think>hmm</think>" + search(info["query"]), f"<answer>{info['answer']}</answer>"]
    traj, _, _, _ = play(replies, tok=tok)
    assert len(traj.samples) == 2 and traj.metrics["template_splits"] == 1.0
    assert traj.reward == 1.0  # one episode, one reward, two training rows


def test_the_agent_is_chosen_by_name_with_its_options():
    agent = make_agent("tool_calling", max_turns=3)
    assert isinstance(agent, ToolCallingAgent) and agent.max_turns == 3
    with pytest.raises(ValueError, match="max_turns"):
        make_agent("tool_calling", max_turns=0)
