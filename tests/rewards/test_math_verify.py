"""math_reward: equivalent forms, wrong answers, garbage, threads, failures, GSM8K gold."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


# ---- failures that are no verdict: RewardError, never 0.0 ----------------------------


def _crash(response: str, gold: str) -> bool:
    """Stands in for the worker function (pickled by name): the worker dies mid-check."""
    os._exit(3)


def _workers() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name == mv.WORKER_NAME]


def test_a_check_past_its_timeout_raises_and_the_pool_recovers() -> None:
    # 9^9^9^9 keeps SymPy in one C-level integer power for minutes.
    with pytest.raises(RewardError, match=r"timed out after 0\.5s on .*'9\^9\^9\^9'"):
        verify_answer("9^9^9^9", "85", timeout_s=0.5)
    assert verify_answer("\\boxed{85}", "85") is True


def test_math_reward_raises_on_timeout_and_caches_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mv, "DEFAULT_TIMEOUT_S", 0.5)
    entries = mv._cached_reward.cache_info().currsize
    with pytest.raises(RewardError, match="timed out"):
        math_reward("so it is 9^9^9^9", "85")
    assert mv._cached_reward.cache_info().currsize == entries


def test_a_crashed_worker_raises_the_error_is_not_cached_and_the_pool_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not a bare number: "\\boxed{777}" would take the fast path and reach no worker.
    response = "a crash comes before the verdict: \\boxed{777\\pi}"
    with monkeypatch.context() as m:
        m.setattr(mv, "_verify_in_worker", _crash)
        with pytest.raises(RewardError, match=r"crashed.*777"):
            math_reward(response, "777\\pi")
    assert math_reward(response, "777\\pi") == 1.0


def test_the_pool_survives_killed_idle_workers() -> None:
    assert verify_answer("x = 6", "6") is True
    # Killed and already noticed: pebble marks the whole pool broken; a new one starts.
    for worker in _workers():
        os.kill(worker.pid, signal.SIGKILL)
    for _ in range(1000):  # wait until pebble has noticed
        if mv._pool is None or not mv._pool.active:
            break
        time.sleep(0.01)
    assert verify_answer("x = 7", "7") is True
    # Killed just before a check is sent: the check gets a second, fresh pool.
    for worker in _workers():
        os.kill(worker.pid, signal.SIGKILL)
    assert verify_answer("x = 8", "8") is True


def test_workers_that_cannot_start_raise_reward_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A broken install must not read as "every answer is wrong". Workers get the
    # parent's sys.path, so this broken math_verify is the one they import.
    (tmp_path / "math_verify.py").write_text("raise ImportError('broken install')\n")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.setattr(mv, "_pool", None)
    try:
        with pytest.raises(RewardError, match="could not start"):
            verify_answer("x = 1", "1")
        with pytest.raises(RewardError):
            math_reward("a response never seen before: 31337", "31337")
    finally:
        mv._shutdown()


def test_workers_run_neither_the_parent_main_nor_torch(tmp_path: Path) -> None:
    # Spawned processes normally re-run the parent's __main__: a trainer script
    # importing torch would load torch into every verifier process.
    script, runs = tmp_path / "trainer.py", tmp_path / "runs.txt"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import sys

            import torch  # noqa: F401
            from areal_env.rewards import math_verify as mv

            with open(sys.argv[1], "a") as runs:  # once per process that runs this file
                runs.write(f"{os.getpid()}\\n")

            if __name__ == "__main__":
                assert mv.verify_answer("x = 2", "2")
                probe = "'torch' in __import__('sys').modules"
                print(mv._get_pool().schedule(eval, (probe,)).result(timeout=60))
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script), str(runs)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert result.stdout.strip() == "False", result.stderr
    assert len(runs.read_text().splitlines()) == 1
