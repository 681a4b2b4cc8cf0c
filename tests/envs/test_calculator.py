"""areal/Calculator-v0: the safe evaluator, the tool round trip, the default tasks, demos.

Mutations tried (each made the named test fail, then was reverted):

- ``evaluate`` returning ``Fraction(eval(text))`` instead of walking the AST:
  ``test_injection_attempts_are_refused_without_running`` (the first attempt runs).
- number literals read as ``float``: ``test_results_are_exact``.
- the ``right == 0`` check removed: ``test_division_by_zero_is_an_error_message``
  (ZeroDivisionError escapes the env step).
- a division by zero counted as a malformed call: the same test (``malformed_calls``).
- the length check removed: ``test_length_cap_is_checked_before_parsing``.
- ``normalize`` keeping the trailing ``=``:
  ``test_calling_with_the_questions_expression_and_copying_the_result_wins``.
- unary minus refused: ``test_valid_expressions[-(2+3)/4--1.25]``.
- default ``ops`` of ``+ -``: ``test_default_tasks_are_multi_digit_multiplications``.
- ``_gold_calls`` returning ``[]`` (answer-only demonstrations):
  ``test_demonstrations_call_the_calculator_and_score_one``.
"""

from __future__ import annotations

import json
import re

import gymnasium as gym
import pytest

import areal_env  # noqa: F401  (registers the ids)
from areal_env.agents.tool_calling import ToolCallingAgent
from areal_env.envs.calculator.env import CalculatorEnv
from areal_env.envs.calculator.tools import (
    MAX_EXPRESSION_CHARS,
    CalculatorError,
    calculate,
    evaluate,
)
from areal_env.inference.chat_client import ChatClient
from areal_env.rollout.demonstrations import build_demonstrations
from areal_env.testing import ScriptedEngine, char_tokenizer


def call(expression: str | None, *, id: str = "c1", name: str = "calculator") -> dict:
    args = json.dumps({} if expression is None else {"expression": expression})
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


def act(*calls: dict) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


# ---- the evaluator ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "shown"),
    [
        ("(12+3)*4/5", "12"),
        ("437*82", "35834"),
        ("437*82=", "35834"),
        ("  12 \u00d7 3 \u2212 1 ", "35"),
        ("-(2+3)/4", "-1.25"),
        ("+.5 + 2.", "2.5"),
        ("((((7))))", "7"),
        ("2/3", "2/3 (about 0.666666666667)"),
        ("9" * 60 + "*" + "9" * 60, str(int("9" * 60) ** 2)),
    ],
)
def test_valid_expressions(expression, shown):
    assert calculate(expression) == shown


def test_results_are_exact():
    assert evaluate("1/3*3") == 1 and calculate("1/3*3") == "1"
    assert calculate("0.1+0.2") == "0.3"
    assert calculate("1/3+1/3+1/3") == "1"
    assert calculate("10/4") == "2.5" and calculate("1/1024") == "0.0009765625"


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("1/0", "division by zero"),
        ("5/(3-3)", "division by zero"),
        ("", "empty expression"),
        ("=", "empty expression"),
        ("(1+2", "not a valid arithmetic expression"),
        ("2**10", "power operator"),
        ("7//2", "//"),
        ("7%2", "%"),
        ("2^3", "\\^"),
        ("1,200+1", "comma"),
        ("1e3", "plain decimals"),
        ("0x1f", "plain decimals"),
        ("1_000", "plain decimals"),
        ("True+1", "plain decimals"),
        ("2j", "plain decimals"),
        ("x+1", "a name"),
        ("'a'*3", "plain decimals"),
        ("[1][0]", "only numbers"),
        ("1<2", "comparison"),
    ],
)
def test_refused_expressions_name_the_reason(expression, reason):
    with pytest.raises(CalculatorError, match=reason):
        calculate(expression)


def test_injection_attempts_are_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    attempts = [
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w').write('x')",
        f"(lambda: open('{marker}', 'w'))()",
        "().__class__.__bases__[0].__subclasses__()",
        f"[open('{marker}', 'w') for _ in (1,)]",
        f"1 if open('{marker}', 'w') else 2",
        f"print(open('{marker}', 'w'))",
    ]
    for attempt in attempts:
        with pytest.raises(CalculatorError, match="only numbers"):
            calculate(attempt)
    assert not marker.exists()


def test_length_cap_is_checked_before_parsing():
    at_cap = "1+" * ((MAX_EXPRESSION_CHARS - 1) // 2) + "1"
    assert len(at_cap) <= MAX_EXPRESSION_CHARS and calculate(at_cap) == str(at_cap.count("1"))
    too_long = "1+" * MAX_EXPRESSION_CHARS + "1"
    with pytest.raises(CalculatorError, match=f"longer than {MAX_EXPRESSION_CHARS}"):
        calculate(too_long)
    with pytest.raises(CalculatorError, match="longer than 5"):
        calculate("123*456", max_chars=5)
    # Nesting past the parser's limit is refused as a message, not a crash.
    with pytest.raises(CalculatorError, match="not a valid arithmetic expression"):
        calculate("(" * 250 + "1" + ")" * 250, max_chars=600)
    with pytest.raises(CalculatorError, match="not a valid arithmetic expression"):
        calculate("1+\x00")


# ---- the env --------------------------------------------------------------------------------


def test_default_tasks_are_multi_digit_multiplications():
    env = CalculatorEnv()
    tasks = [env.source[i] for i in range(200)]
    assert all(re.fullmatch(r"\d+\*\d+=", t.question) for t in tasks)
    operands = [int(x) for t in tasks for x in t.question[:-1].split("*")]
    assert max(operands) <= 999 and sum(x >= 100 for x in operands) > 0.8 * len(operands)
    assert sum(int(t.answer) >= 10_000 for t in tasks) > 0.7 * len(tasks)
    custom = CalculatorEnv(max_operand=99, ops=("+",)).source[0].question
    assert re.fullmatch(r"\d{1,2}\+\d{1,2}=", custom)


def test_calling_with_the_questions_expression_and_copying_the_result_wins():
    env = CalculatorEnv(system_prompt=None)
    for index in range(30):
        obs, info = env.reset(options={"task_index": index})
        question = obs[-1]["content"]  # "437*82=" copied as it is
        tool_reply = env.step(act(call(question)))[0][0]["content"]
        assert tool_reply == info["answer"]
        assert env.step(f"\\boxed{{{tool_reply}}}")[1] == 1.0


async def test_round_trip_through_the_agent():
    env = gym.make("areal/Calculator-v0").unwrapped
    obs, info = await env.areset(options={"task_index": 0})
    assert env.tools[0]["function"]["name"] == "calculator"
    question = obs[-1]["content"]
    call_text = '<tool_call>{"name": "calculator", "arguments": {"expression": "%s"}}</tool_call>'
    replies = [call_text % question, f"\\boxed{{{info['answer']}}}"]
    tok = char_tokenizer()
    client = ChatClient(ScriptedEngine(replies=[tok.encode(r) for r in replies]), tok)
    traj = await ToolCallingAgent().run(env, client.episode(), options={"task_index": 0})
    assert traj.reward == 1.0 and traj.num_turns == 2
    assert [m["content"] for m in traj.messages if m["role"] == "tool"] == [info["answer"]]
    (sample,) = traj.samples
    prompt = tok.decode(
        [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m == 0]
    )
    assert info["answer"] in prompt  # the tool's result is a prompt token span


def test_division_by_zero_is_an_error_message():
    env = CalculatorEnv()
    _, info = env.reset(options={"task_index": 0})
    obs, reward, done, cut, step = env.step(act(call("1/0"), call("2*3", id="c2")))
    assert [m["content"] for m in obs] == ["error: division by zero", "6"]
    assert (reward, done, cut) == (0.0, False, False)
    assert step == {"tool_calls": 2, "tool_errors": 1, "malformed_calls": 0}
    assert env.step(f"\\boxed{{{info['answer']}}}")[1] == 1.0


def test_malformed_calls_are_answered_and_counted():
    env = CalculatorEnv(max_calls_per_turn=3)
    env.reset(options={"task_index": 0})
    calls = [call("1+1", name="python"), call(None, id="c2"), call("1+1", id="c3"), call("2")]
    obs, _, _, _, step = env.step(act(*calls))
    assert [m["content"] for m in obs] == [
        "error: unknown tool 'python'; the only tool is 'calculator'",
        "error: 'expression' must be a non-empty string",
        "2",
        "error: too many tool calls in one message (at most 3); this one was not run",
    ]
    assert step == {"tool_calls": 4, "tool_errors": 3, "malformed_calls": 3}


def test_turn_limit_truncates():
    env = CalculatorEnv(max_turns=1)
    env.reset(options={"task_index": 0})
    _, reward, done, cut, _ = env.step(act(call("1+1")))
    assert cut and not done and reward == 0.0


def test_it_needs_no_sandbox(monkeypatch):
    import areal_env.sandbox.sandbox as sandbox_module

    def refuse(*args, **kwargs):
        raise AssertionError("the calculator must not start a sandbox")

    monkeypatch.setattr(sandbox_module.Sandbox, "__init__", refuse)
    env = CalculatorEnv()
    env.reset(seed=0)
    assert env.step(act(call("6*7")))[0][0]["content"] == "42"


def test_bad_options_fail_at_construction_naming_the_option():
    for kwargs, match in [
        ({"max_expression_chars": 0}, "max_expression_chars"),
        ({"max_operand": 0}, "max_operand"),
        ({"max_turns": 0}, "max_turns"),
        ({"dataset": 3}, "dataset"),
    ]:
        with pytest.raises(ValueError, match=match):
            CalculatorEnv(**kwargs)


# ---- demonstrations -----------------------------------------------------------------------


async def demos(make, seeds):
    client = ChatClient(ScriptedEngine(replies=[[5]]), char_tokenizer())
    return await build_demonstrations(make, ToolCallingAgent(max_turns=4), client, seeds=seeds)


async def test_demonstrations_call_the_calculator_and_score_one(tiny_gsm8k):
    kept, stats = await demos(CalculatorEnv, range(5))
    assert stats.dropped == 0 and [d.reward for d in kept] == [1.0] * 5
    for demo in kept:
        question, first = demo.messages[1]["content"], demo.messages[2]
        expression = json.loads(first["tool_calls"][0]["function"]["arguments"])["expression"]
        assert expression + "=" == question
        assert demo.messages[3]["content"] == demo.info["answer"]

    env = CalculatorEnv(dataset=str(tiny_gsm8k))
    kept, stats = await demos(lambda: CalculatorEnv(dataset=str(tiny_gsm8k)), range(6))
    assert stats.dropped == 0 and {d.info["task_index"] for d in kept} >= {1, 2}
    for demo in kept:  # one call per annotated calculation of the worked solution
        task = env.source[demo.info["task_index"]]
        assert demo.metrics["tool_calls"] == len(task.calculations) > 0
        assert demo.metrics["tool_errors"] == 0.0 and demo.reward == 1.0


async def test_real_gsm8k_demonstrations(shared_data):
    path = str(shared_data / "gsm8k" / "test.jsonl")
    kept, stats = await demos(lambda: CalculatorEnv(dataset=path), range(8))
    assert stats.dropped == 0 and all(d.reward == 1.0 for d in kept)
    assert all(d.metrics["tool_errors"] == 0.0 for d in kept)
