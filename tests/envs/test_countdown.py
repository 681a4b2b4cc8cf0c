"""areal/Countdown-v0: the safe expression checker, the task sources, the solver, the env.

Mutations these tests were seen to catch (each applied by hand, the named tests failed,
then the code was restored):

- reused numbers allowed (the ``count > given`` check dropped): ``test_reused_number``;
- numbers not given accepted (the ``not in given`` check dropped): ``test_unknown_number``
  (the literal then reads as ``reused_number``);
- ``use_all`` ignored: ``test_missing_number_only_matters_where_every_number_is_needed``;
- floats instead of Fractions: ``test_exact_fractions`` and the whole-file Game of 24 test;
- ``**`` whitelisted beside the four operators: ``test_injection_and_non_grammar_score_zero``
  (``2**3*3``, ``9**9**9**9``);
- the checked expression evaluated with ``eval``: ``test_the_checker_never_calls_eval_or_exec``,
  ``test_division_by_zero`` (a ZeroDivisionError escapes), ``test_exact_fractions``;
- division by zero not caught: ``test_division_by_zero``;
- the first ``<answer>`` span taken instead of the last: ``test_answer_extraction``;
- generated targets off by one: ``test_generated_tasks_are_solvable_and_deterministic``,
  ``test_generator_parameters``, the env and warm-start tests;
- the solver accepting the target before every number is used:
  ``test_solver`` and both whole-file tests.
"""

from __future__ import annotations

import builtins
import json
import random
from pathlib import Path

import gymnasium as gym
import pytest

import areal_env  # noqa: F401  (registers areal/Countdown-v0)
from areal_env.agents.single_turn import SingleTurnAgent
from areal_env.envs.countdown.data import SyntheticTasks, build_task_source, solve
from areal_env.envs.countdown.env import CountdownEnv
from areal_env.envs.countdown.reward import (
    REASONS,
    extract_answer,
    score_expression,
    score_response,
)
from areal_env.inference.chat_client import ChatClient
from areal_env.rollout.demonstrations import build_demonstrations, gold_messages
from areal_env.testing import ScriptedEngine, char_tokenizer

# ---- the checker ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "numbers", "target", "use_all"),
    [
        ("(6-2)*6", [6, 2, 6], 24, True),
        ("6*(6-2)", [2, 6, 6, 1], 24, False),  # at most once: 1 may stay unused
        ("4*6 = 24", [4, 6], 24, True),  # a trailing "= target" is allowed
        ("4 \u00d7 6", [4, 6], 24, True),  # x sign
        ("12 \u00f7 (5 \u2212 2)", [12, 5, 2], 4, True),  # division sign, minus sign
        ("(100 -\n 93) + 30 - 14", [30, 100, 93, 14], 23, True),  # newlines are spaces
        ("9", [2, 1, 9], 9, False),  # a lone number is an expression
        ("5+5", [5, 3, 5], 10, False),  # a number given twice may be used twice
    ],
)
def test_valid_expressions_score_one(text, numbers, target, use_all) -> None:
    verdict = score_expression(text, numbers, target, use_all=use_all)
    assert (verdict.reward, verdict.valid, verdict.reason, verdict.detail) == (1.0, True, None, "")
    assert verdict.value == target


def test_wrong_value_is_valid_but_scores_zero() -> None:
    verdict = score_expression("(6+2)*6", [6, 2, 6], 24, use_all=True)
    assert (verdict.reward, verdict.valid, verdict.reason) == (0.0, True, "wrong_value")
    assert verdict.value == 48 and verdict.expression == "(6 + 2) * 6"
    claim = score_expression("4*6 = 25", [4, 6], 24, use_all=True)
    assert (claim.reward, claim.reason) == (0.0, "wrong_claim")


def test_reused_number() -> None:
    verdict = score_expression("5*5-1", [5, 1, 2], 24)
    assert (verdict.reward, verdict.valid, verdict.reason) == (0.0, False, "reused_number")
    assert verdict.numbers_used == (5, 5, 1)
    assert score_expression("5*5-1", [5, 1, 5], 24).reward == 1.0


def test_unknown_number() -> None:
    verdict = score_expression("6*4", [6, 2, 2], 24)
    assert (verdict.reward, verdict.reason) == (0.0, "unknown_number")
    assert "4 is not one of [6, 2, 2]" in verdict.detail
    # 24 written as a literal is not a given number either.
    assert score_expression("24", [6, 2, 2], 24).reason == "unknown_number"


def test_missing_number_only_matters_where_every_number_is_needed() -> None:
    exact = score_expression("6*4", [6, 4, 1], 24, use_all=True)
    assert (exact.reward, exact.reason) == (0.0, "unused_number")
    assert "[1]" in exact.detail
    assert score_expression("6*4", [6, 4, 1], 24, use_all=False).reward == 1.0
    assert score_expression("6*4*1", [6, 4, 1], 24, use_all=True).reward == 1.0


def test_division_by_zero() -> None:
    verdict = score_expression("6/(2-2)*4", [6, 2, 2, 4], 24, use_all=True)
    assert (verdict.reward, verdict.valid, verdict.reason) == (0.0, False, "division_by_zero")
    assert verdict.value is None
    assert score_expression("(3-3)/(3-3)", [3, 3, 3, 3], 1).reason == "division_by_zero"


def test_exact_fractions() -> None:
    # 3 - 8/3 = 1/3 exactly; in floats 8/(3-8/3) is 23.999999999999993.
    verdict = score_expression("8/(3-8/3)", [3, 3, 8, 8], 24, use_all=True)
    assert verdict.reward == 1.0 and str(verdict.value) == "24"
    assert score_expression("1/3*3", [1, 3, 3], 1, use_all=True).reward == 1.0
    half = score_expression("5/2", [5, 2], 2)
    assert (half.reason, half.valid, str(half.value)) == ("wrong_value", True, "5/2")


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "2**3*3",  # power: the classic blow-up
        "9**9**9**9",
        "pow(2, 3)*3",
        "x*24",
        "(24).real",
        "[24][0]",
        "24 if 1 else 2",
        "(lambda: 24)()",
        "-1+25",  # unary minus is not in the grammar
        "+24",
        "24 // 1",
        "48 % 25",
        "1 << 3",
        "24 == 24",
        "2.5*...",
        "0x18",
        "1_0+14",
        "1e1+14",
        "True+23",
        "3j",
        "(1, 24)",
        "'24'",
    ],
)
def test_injection_and_non_grammar_score_zero(text: str) -> None:
    verdict = score_expression(text, [1, 2, 3, 4, 8, 9, 10, 14, 23, 24, 25, 48], 24)
    assert verdict.reward == 0.0 and not verdict.valid
    assert verdict.reason in ("disallowed", "syntax")


def test_injection_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for payload in (
        f"open({str(marker)!r}, 'w').write('x')",
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        f"<answer>__import__('os').system('touch {marker}')</answer>",
    ):
        verdict = score_response(payload, [1], 1)
        assert (verdict.reward, verdict.reason) == (0.0, "disallowed")
    assert not marker.exists()


def test_the_checker_never_calls_eval_or_exec(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("eval/exec called on model text")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    assert score_expression("8/(3-8/3)", [3, 3, 8, 8], 24, use_all=True).reward == 1.0
    assert score_expression("__import__('os')", [1], 1).reason == "disallowed"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("1+" * 150 + "1", "too_long"),
        ("The answer is 6*4.", "syntax"),
        ("6*4=24=24", "syntax"),
        ("6*4 == 24", "syntax"),
        ("6*4 = x", "syntax"),
        ("(6*4", "syntax"),
        ("6\x004", "syntax"),
    ],
)
def test_malformed_answers_give_a_reason_not_an_exception(text: str, reason: str) -> None:
    verdict = score_expression(text, [6, 4, 1], 24)
    assert (verdict.reward, verdict.valid, verdict.reason) == (0.0, False, reason)
    assert verdict.reason in REASONS and verdict.detail


def test_a_raised_length_cap_still_never_raises() -> None:
    chain = "1+" * 100_000 + "1"
    assert score_expression(chain, [1], 1, max_chars=10**7).reason in ("syntax", "too_long")
    nested = "(" * 5000 + "1" + ")" * 5000
    assert score_expression(nested, [1], 1, max_chars=10**7).reason in ("syntax", "too_long")
    assert score_expression("6*4", [6, 4], 24, max_chars=2).reason == "too_long"


def test_answer_extraction() -> None:
    reply = "<answer>6+4</answer> no wait <answer> 6*4 </answer>"
    assert extract_answer(reply) == "6*4"
    assert score_response(reply, [6, 4], 24).reward == 1.0
    assert extract_answer("6*4") == "6*4"  # no tags: the whole reply
    assert extract_answer("<think><answer>6*4</answer></think>I give up") == "I give up"
    assert extract_answer("<think>6*4 is it") == ""  # thinking never closed: no answer
    assert score_response("<think>hmm</think><answer>6*4</answer>", [6, 4], 24).reward == 1.0
    assert score_response("<answer>6*4", [6, 4], 24).reason == "syntax"  # unclosed tag


# ---- tasks and the solver ------------------------------------------------------------


def test_generated_tasks_are_solvable_and_deterministic() -> None:
    source, again = build_task_source("synthetic"), build_task_source("synthetic")
    for index in range(300):
        task = source[index]
        assert task == again[index]
        assert len(task.numbers) == 3 and all(1 <= n <= 20 for n in task.numbers)
        assert 1 <= task.target <= 100 and task.use_all is False
        assert task.solution is not None
        assert score_expression(task.solution, task.numbers, task.target, use_all=True).reward
    other = build_task_source("synthetic", data_seed=1)
    assert [source[i] for i in range(20)] != [other[i] for i in range(20)]


def test_generator_parameters() -> None:
    source = SyntheticTasks(7, 5, 9, 200, ("+", "-"), True)
    for index in range(100):
        task = source[index]
        assert len(task.numbers) == 5 and max(task.numbers) <= 9 and task.use_all
        assert task.solution is not None and not set(task.solution) & set("*/")
        assert score_expression(task.solution, task.numbers, task.target, use_all=True).reward
    with pytest.raises(ValueError, match="ops must include"):
        build_task_source("synthetic", ops=["-", "/"])
    with pytest.raises(ValueError, match="num_numbers"):
        build_task_source("synthetic", num_numbers=0)
    with pytest.raises(ValueError, match="unknown operators"):
        build_task_source("synthetic", ops=["**"])


def test_solver() -> None:
    assert solve([1, 1], 5, use_all=True) is None
    assert solve([2, 9, 1], 9, use_all=False) == "9"
    assert solve([2, 9, 1], 9, use_all=True) is not None  # 9*(2-1)
    rng = random.Random(0)
    for _ in range(50):
        numbers = [rng.randint(1, 13) for _ in range(4)]
        target = rng.randint(1, 30)
        for use_all in (True, False):
            found = solve(numbers, target, use_all=use_all)
            if found is not None:
                assert score_expression(found, numbers, target, use_all=use_all).reward == 1.0


def test_small_files_in_code(tmp_path: Path) -> None:
    csv_path = tmp_path / "cd" / "g24.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("Rank,Puzzles,AMT (s)\n1,1 1 4 6,4.4\n2,3 3 8 8,9.9\n")
    jsonl_path = tmp_path / "cd" / "cd3.jsonl"
    jsonl_path.write_text(
        '{"input": "30,100,93", "output": "23"}\n\n{"input": "4,5,6", "output": "26"}\n'
    )
    game24, cd3 = build_task_source(csv_path), build_task_source(jsonl_path)
    assert (game24.name, len(game24), cd3.name, len(cd3)) == ("cd/g24", 2, "cd/cd3", 2)
    assert game24[1].numbers == (3, 3, 8, 8) and game24[1].target == 24 and game24[1].use_all
    assert cd3[0].numbers == (30, 100, 93) and cd3[1].target == 26 and cd3[0].use_all
    assert build_task_source(jsonl_path, use_all=False)[0].use_all is False
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "1,2"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1"):
        build_task_source(bad)
    with pytest.raises(ValueError, match="dataset must be"):
        build_task_source(tmp_path / "missing.jsonl")


@pytest.fixture
def countdown_dir(shared_data: Path) -> Path:
    return shared_data / "countdown"


def test_every_cd3_task_has_a_solution_that_scores_one(countdown_dir: Path) -> None:
    source = build_task_source(countdown_dir / "countdown_cd3_test_d1.jsonl")
    assert len(source) == 256 and source.name == "countdown/countdown_cd3_test_d1"
    for index in range(len(source)):
        task = source[index]
        assert len(task.numbers) == 3 and task.use_all
        found = solve(task.numbers, task.target, use_all=True)
        assert found is not None, task
        assert score_expression(found, task.numbers, task.target, use_all=True).reward == 1.0


def test_every_game24_puzzle_has_a_solution_that_scores_one(countdown_dir: Path) -> None:
    # The whole file: the solver takes about a second for all 1362 puzzles.
    source = build_task_source(countdown_dir / "game24_tot.csv")
    assert len(source) == 1362 and source[0].numbers == (1, 1, 4, 6)
    for index in range(len(source)):
        task = source[index]
        assert task.target == 24 and task.use_all and len(task.numbers) == 4
        found = solve(task.numbers, 24, use_all=True)
        assert found is not None, task
        assert score_expression(found, task.numbers, 24, use_all=True).reward == 1.0


def test_env_on_the_files(countdown_dir: Path) -> None:
    env = CountdownEnv(dataset=countdown_dir / "countdown_cd3_test_d1.jsonl", system_prompt=None)
    obs, info = env.reset(options={"task_index": 0})
    assert obs == [
        {"role": "user", "content": "Numbers: 30 100 93\nTarget: 23\nUse each number exactly once."}
    ]
    assert info["task_id"] == "countdown/countdown_cd3_test_d1:0" and info["use_all"] is True
    assert env.step(f"<answer>{info['answer']}</answer>")[1] == 1.0
    env.reset(options={"task_index": 0})
    assert env.step("100-93+30")[4]["reason"] == "wrong_value"
    game24 = gym.make("areal/Countdown-v0", dataset=str(countdown_dir / "game24_tot.csv"))
    _, info = game24.reset(seed=0)
    assert info["target"] == 24 and game24.step(info["answer"])[1] == 1.0
    game24.close()


# ---- the env -------------------------------------------------------------------------


async def test_reset_info_answer_scores_one_through_the_async_api() -> None:
    env = CountdownEnv()
    for seed in range(20):
        obs, info = await env.areset(seed=seed)
        assert [m["role"] for m in obs] == ["system", "user"]
        assert "<answer>" in obs[0]["content"]
        assert set(info) == {"task_id", "task_index", "answer", "numbers", "target", "use_all"}
        numbers = " ".join(map(str, info["numbers"]))
        assert obs[1]["content"] == (
            f"Numbers: {numbers}\nTarget: {info['target']}\nUse each number at most once."
        )
        demo = env.demonstration()
        assert demo == [{"role": "assistant", "content": f"<answer>{info['answer']}</answer>"}]
        obs, reward, terminated, truncated, step = await env.astep(demo[0])
        assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
        assert step["correct"] and step["valid"] and step["reason"] is None
        assert step["value"] == str(info["target"]) and step["numbers"] == info["numbers"]
    await env.aclose()


def test_step_info_on_a_wrong_answer_and_sync_api_via_gym_make() -> None:
    env = gym.make("areal/Countdown-v0", num_numbers=4, max_number=9, data_seed=3)
    _, info = env.reset(seed=1)
    assert len(info["numbers"]) == 4
    _, reward, terminated, truncated, step = env.step("no idea")
    assert (reward, terminated, truncated) == (0.0, True, False)
    assert step["correct"] is False and step["valid"] is False and step["reason"] == "syntax"
    assert step["expression"] is None and step["value"] is None
    assert step["answer"] == info["answer"] and step["target"] == info["target"]
    env.close()


def test_task_index_option_and_validation() -> None:
    env_a, env_b = CountdownEnv(data_seed=3), CountdownEnv(data_seed=3)
    obs_a, info_a = env_a.reset(options={"task_index": 7})
    obs_b, info_b = env_b.reset(seed=99, options={"task_index": 7})
    assert obs_a == obs_b and info_a == info_b and info_a["task_id"] == "countdown-synthetic-3:7"
    with pytest.raises(ValueError, match="unknown reset options"):
        env_a.reset(options={"index": 1})
    with pytest.raises(ValueError, match="task_index"):
        env_a.reset(options={"task_index": -1})
    with pytest.raises(ValueError, match="prompt_template"):
        CountdownEnv(prompt_template="{numbers} only")
    with pytest.raises(ValueError, match="use_all"):
        CountdownEnv(use_all="yes")  # type: ignore[arg-type]
    compact = CountdownEnv(system_prompt=None, prompt_template="{numbers} -> {target}")
    obs, info = compact.reset(options={"task_index": 0})
    assert obs == [{"role": "user", "content": "2 1 9 -> 7"}]


async def test_warm_start_demonstrations_earn_the_reward() -> None:
    client = ChatClient(ScriptedEngine(replies=[[5]]), char_tokenizer())
    env = CountdownEnv()
    _, info = await env.areset(seed=0)
    assert gold_messages(env, info)[0]["content"] == f"<answer>{info['answer']}</answer>"
    demos, stats = await build_demonstrations(
        lambda: CountdownEnv(), SingleTurnAgent(), client, seeds=range(6)
    )
    assert [d.reward for d in demos] == [1.0] * 6 and stats.dropped == 0


def test_cd3_format_fixture_matches_the_real_file(tmp_path: Path) -> None:
    # The same code path as the shared file, on a plain clone.
    path = tmp_path / "countdown" / "cd3.jsonl"
    path.parent.mkdir()
    records = [{"input": "83,18,75", "output": "10"}, {"input": "90,43,90", "output": "43"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    env = CountdownEnv(dataset=str(path))
    for index in range(2):
        _, info = env.reset(options={"task_index": index})
        assert env.step(info["answer"])[1] == 1.0
