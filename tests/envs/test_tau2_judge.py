"""tau2's NL-assertion judge over a scripted engine: reward product, record/replay, bad replies.

Retail task "2" (basis DB + NL_ASSERTION, one assertion) is played by its gold
agent, so DB is 1 and the reward is the judge's verdict alone.

Mutations tried by hand (each made a test here fail, then was reverted):
- reward.evaluate: ignore nl_checks -> test_judge_calls_recorded_then_replayed (and others)
- judge.parse_verdicts: accept any number of verdicts -> test_malformed_judge_reply_*
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from areal_env.envs.tau2.env import Tau2Env
from areal_env.envs.tau2.judge import JudgeError, judge_request, parse_verdicts
from areal_env.inference.chat_client import ChatClient, SamplingConfig
from areal_env.testing import ScriptedEngine, char_tokenizer

TOK = char_tokenizer()
TASK = "2"
ASSERTION = "Agent should tell the user that there are 10 t-shirt options available."


def judge_client(lines: list[str]) -> tuple[Any, ScriptedEngine]:
    engine = ScriptedEngine(replies=[TOK.encode(x, add_special_tokens=False) for x in lines])
    client = ChatClient(engine, TOK, sampling=SamplingConfig(max_new_tokens=4096))
    return client.untracked(), engine


def verdict(met: bool, *, fenced: bool = False) -> str:
    body = json.dumps(
        {"results": [{"expectedOutcome": ASSERTION, "reasoning": "r", "metExpectation": met}]}
    )
    return f"Here you go:\n```json\n{body}\n```" if fenced else body


def play(env: Tau2Env) -> tuple[float, dict[str, Any]]:
    env.reset(options={"task_id": TASK})
    for message in env.demonstration() or []:
        _, reward, terminated, truncated, info = env.step(message)
        if terminated or truncated:
            return reward, info
    raise AssertionError("the episode did not end")


def retail(shared_data: Path, **kwargs: Any) -> Tau2Env:
    return Tau2Env(domain="retail", data_dir=shared_data, **kwargs)


@pytest.mark.parametrize(("met", "expected"), [(True, 1.0), (False, 0.0)])
def test_judge_verdict_sets_the_reward_product(
    shared_data: Path, met: bool, expected: float
) -> None:
    client, engine = judge_client([verdict(met, fenced=not met)])
    reward, info = play(retail(shared_data, judge={"client": client}))
    ri = info["reward_info"]
    assert ri["components"]["DB"] == 1.0
    assert ri["components"]["NL_ASSERTION"] == expected and ri["nl_assertion"] == expected
    assert reward == expected and not ri["nl_skipped"]
    assert ri["nl_checks"] == [{"nl_assertion": ASSERTION, "met": met, "justification": "r"}]
    assert len(engine.requests) == 1
    prompt = TOK.decode(list(engine.requests[0].input_ids), skip_special_tokens=False)
    assert "expectedOutcomes:" in prompt and ASSERTION in prompt and "metExpectation" in prompt


def test_without_a_judge_nl_stays_apart(shared_data: Path) -> None:
    reward, info = play(retail(shared_data))
    ri = info["reward_info"]
    assert reward == 1.0 and ri["nl_skipped"] and ri["nl_assertion"] is None
    assert "NL_ASSERTION" not in ri["components"] and ri["nl_checks"] == []


def test_judge_calls_recorded_then_replayed(shared_data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "calls.jsonl"
    client, _ = judge_client([verdict(False)])
    rec = retail(shared_data, judge={"client": client}, user_cache=cache, user_cache_mode="record")
    reward, info = play(rec)
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert [(r["kind"], r["task_id"], r["turn"]) for r in lines] == [("nl_judge", TASK, 0)]
    replay = retail(shared_data, judge="llm", user_cache=cache, user_cache_mode="replay")
    assert play(replay) == (reward, info) and reward == 0.0


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("I think the agent did fine.", "no JSON object"),
        ('{"verdict": true}', "no 'results' list"),
        ('{"results": []}', "0 verdicts for 1 assertions"),
        ('{"results": [{"expectedOutcome": "x", "metExpectation": "maybe"}]}', "true or false"),
    ],
)
def test_malformed_judge_reply_is_an_episode_error(shared_data: Path, reply: str, why: str) -> None:
    client, _ = judge_client([reply])
    with pytest.raises(JudgeError, match=f"judge reply for task '2' is malformed: .*{why}"):
        play(retail(shared_data, judge={"client": client}))


def test_parse_matches_by_outcome_then_position() -> None:
    text = json.dumps(
        {
            "results": [
                {"expectedOutcome": "B", "reasoning": "b", "metExpectation": "false"},
                {"expectedOutcome": "other", "reasoning": "a", "metExpectation": True},
            ]
        }
    )
    assert parse_verdicts(text, ["A", "B"]) == [
        {"nl_assertion": "A", "met": True, "justification": "a"},
        {"nl_assertion": "B", "met": False, "justification": "b"},
    ]
    system, user = judge_request([{"role": "system", "content": "P"}], ["A"])["messages"]
    assert system["role"] == "system" and "P" not in user["content"]
