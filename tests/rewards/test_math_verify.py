"""math_reward: equivalent forms, wrong answers, garbage, threads, the guard, GSM8K gold."""

from __future__ import annotations

import asyncio

import pytest

from areal_env.errors import RewardError
from areal_env.rewards import math_verify as mv
from areal_env.rewards.math_verify import extract_gsm8k_answer, math_reward, verify_answer


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("\\boxed{85}", "85"),
        ("85", "85"),
        ("85.0", "85"),
        ("The answer is 85.", "85"),
        ("37+48=85", "85"),
        ("$1,234$", "1234"),
        ("\\frac{170}{2}", "85"),
        ("so x = \\boxed{\\frac{1}{2}}", "0.5"),
        ("-7", "-7"),
    ],
)
def test_equivalent_forms_score_one(response: str, gold: str) -> None:
    assert math_reward(response, gold) == 1.0


@pytest.mark.parametrize(
    ("response", "gold"),
    [("84", "85"), ("\\boxed{86}", "85"), ("", "85"), ("eighty-five", "85"), ("7", "-7")],
)
def test_wrong_answers_score_zero(response: str, gold: str) -> None:
    assert math_reward(response, gold) == 0.0


@pytest.mark.parametrize(
    "response",
    [
        None,
        ["85"],
        b"85",
        "((((" * 2000,
        "\\boxed{" * 500,
        "\\frac{" * 1000,
        "\x00\ud800\uffff",
        "x" * 200_000,
    ],
    ids=["none", "list", "bytes", "parens", "boxes", "fracs", "odd-chars", "long"],
)
def test_garbage_scores_zero_and_never_raises(response: object) -> None:
    assert math_reward(response, "85") == 0.0  # type: ignore[arg-type]


def test_only_the_tail_of_a_long_response_is_parsed() -> None:
    assert math_reward("x" * 100_000 + " so the answer is 85", "85") == 1.0


def test_pathological_input_times_out_and_the_verifier_recovers() -> None:
    # 9^9^9^9 keeps SymPy in one C-level integer power for minutes.
    assert verify_answer("9^9^9^9", "85", timeout_s=1.0) is False
    assert verify_answer("85", "85") is True


async def test_works_from_worker_threads() -> None:
    results = await asyncio.gather(
        asyncio.to_thread(math_reward, "\\boxed{12}", "12"),
        asyncio.to_thread(math_reward, "13", "12"),
        asyncio.to_thread(verify_answer, "12.0", "12"),
        asyncio.to_thread(verify_answer, "\\boxed{11}", "12"),
    )
    assert results == [1.0, 0.0, True, False]


def test_results_are_cached() -> None:
    response = "after some thought, \\boxed{4242}"
    first = math_reward(response, "4242")
    hits = mv._cached_reward.cache_info().hits
    assert math_reward(response, "4242") == first == 1.0
    assert mv._cached_reward.cache_info().hits == hits + 1


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("#### 72", "72"),
        ("2 + 70 = <<2+70=72>>72\n#### 72", "72"),
        ("lots\n#### 1,234,567", "1234567"),
        ("loss\n####  -5 ", "-5"),
        ("a #### in the text\n#### 9", "9"),
    ],
)
def test_gsm8k_gold_extraction(answer: str, gold: str) -> None:
    assert extract_gsm8k_answer(answer) == gold


@pytest.mark.parametrize("answer", ["72", "the answer is 72", "####", "#### , "])
def test_gsm8k_gold_extraction_rejects_answers_without_a_final_line(answer: str) -> None:
    with pytest.raises(ValueError, match="####"):
        extract_gsm8k_answer(answer)


def test_a_verifier_that_cannot_start_raises_reward_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A broken install must not read as "every answer is wrong".
    monkeypatch.setattr(mv, "_pool", None)
    monkeypatch.setattr(mv.sys, "executable", "/bin/false")
    with pytest.raises(RewardError, match="exit code 1"):
        verify_answer("1", "1")
    with pytest.raises(RewardError):
        math_reward("a response never seen before: 31337", "31337")
    mv._get_pool().close()


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("85", "85"),
        (" 85\n", "85"),
        ("85.0", "85"),
        ("84", "85"),
        ("-3", "3"),
        ("-3", "-3"),
        ("007", "7"),
        ("0.5", ".5"),
        ("1.25", "1.2500"),
        ("100", "1000"),
    ],
)
def test_plain_number_fast_path_agrees_with_math_verify(response: str, gold: str) -> None:
    fast = mv.plain_number_verdict(response, gold)
    assert fast is not None
    assert fast == mv.verify_answer(response, gold)


@pytest.mark.parametrize("response", ["\\boxed{85}", "85 apples", "8+5", "1/2", "", "85%", "+85"])
def test_anything_but_a_bare_number_goes_to_math_verify(response: str) -> None:
    assert mv.plain_number_verdict(response, "85") is None
