r"""Math reward agreement: our ``score_response`` against a plain Math-Verify call.

Runs every case of the answer-equivalence suite (``tests/rewards/equivalence_cases.py``:
MATH-500 answer formats and GSM8K-style replies, each with the verdict a grader would
give) through two graders, and prints, side by side, how often each agrees with the
expected verdict, then every case where either disagrees:

- **ours**: ``areal_env.envs.math.reward.score_response(reply, gold)`` (thinking removed,
  final answer extracted, bare-number fast path, Math-Verify in the process pool);
- **plain math-verify**: what a user who calls the library directly gets,
  ``verify(parse(gold), parse(reply))`` with Math-Verify's defaults, in this process;
- **math-verify, gold in $**: the same with a bare gold written ``$gold$``, as
  Math-Verify's README writes its golds (MATH-500's golds are bare LaTeX), to show how
  much of the gap is the gold's parsing and how much the reply's.

When ``../shared/data`` is there, a second table checks the same graders on pairs
built from the data sets themselves rather than written by us: every MATH-500 solution
against its own answer (equivalent) and against the answer of the problem 7 rows on
(not, unless the two answers are the same string), and every GSM8K test solution
(``... #### 72``) against its answer, with and without a check line appended
(``Check: 72 + 1 = 73``), and against the answer 7 rows on.

Usage::

    python benchmarks/math_reward_agreement.py
    python benchmarks/math_reward_agreement.py --quiet   # totals only
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

import math_verify

from areal_env.envs.math.reward import score_response
from areal_env.rewards.math_verify import extract_gsm8k_answer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "rewards"))
from equivalence_cases import CASES, Case

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def plain_math_verify(reply: str, gold: str) -> bool:
    """Math-Verify as its README shows it: parse both sides, then verify(gold, answer)."""
    return bool(math_verify.verify(math_verify.parse(gold), math_verify.parse(reply)))


def math_verify_gold_in_dollars(reply: str, gold: str) -> bool:
    """Plain Math-Verify with a gold that has no ``$`` written ``$gold$``."""
    return plain_math_verify(reply, gold if "$" in gold.replace("\\$", "") else f"${gold}$")


def ours(reply: str, gold: str) -> bool:
    """Our env reward, as MathEnv computes it."""
    return score_response(reply, gold) == 1.0


def run(
    grader: Callable[[str, str], bool], cases: Sequence[Case] = CASES
) -> tuple[list[bool], float]:
    """Every case's verdict from ``grader``, and the seconds the whole suite took."""
    start = time.perf_counter()
    verdicts = [grader(case.reply, case.gold) for case in cases]
    return verdicts, time.perf_counter() - start


def data_set_cases() -> dict[str, list[Case]]:
    """Pairs built from MATH-500 and GSM8K (see the module docstring), by kind."""
    math500 = [json.loads(line) for line in open(SHARED_DATA / "math500" / "test.jsonl")]
    gsm8k = [json.loads(line) for line in open(SHARED_DATA / "gsm8k" / "test.jsonl")]
    gsm_gold = [extract_gsm8k_answer(row["answer"]) for row in gsm8k]

    def shifted(golds: list[str], i: int) -> str:
        return golds[(i + 7) % len(golds)]

    m_gold = [row["answer"] for row in math500]
    return {
        "MATH-500 solution, own answer": [
            Case(row["solution"], row["answer"], True, "own answer") for row in math500
        ],
        "MATH-500 solution, other answer": [
            Case(row["solution"], shifted(m_gold, i), False, "another problem's answer")
            for i, row in enumerate(math500)
            if shifted(m_gold, i).replace(" ", "") != row["answer"].replace(" ", "")
        ],
        "GSM8K solution, own answer": [
            Case(row["answer"], gold, True, "own answer")
            for row, gold in zip(gsm8k, gsm_gold, strict=True)
        ],
        "GSM8K solution + check line": [
            Case(f"{row['answer']}\nCheck: {gold} + 1 = {float(gold) + 1:g}", gold, True, "check")
            for row, gold in zip(gsm8k, gsm_gold, strict=True)
        ],
        "GSM8K solution, other answer": [
            Case(row["answer"], shifted(gsm_gold, i), False, "another problem's answer")
            for i, row in enumerate(gsm8k)
            if shifted(gsm_gold, i) != gsm_gold[i]
        ],
    }


def print_data_set_table() -> None:
    """Agreement of ours and plain Math-Verify on the data-set pairs, per kind."""
    print(f"\n{'data-set pairs':<34} {'ours':>20} {'plain math-verify':>20}")
    for kind, cases in data_set_cases().items():
        row = f"{kind:<34}"
        for grader in (ours, plain_math_verify):
            verdicts, _ = run(grader, cases)
            agree = sum(v == c.expected for v, c in zip(verdicts, cases, strict=True))
            row += f" {f'{agree}/{len(cases)} = {agree / len(cases):.1%}':>20}"
        print(row)


def show(case: Case, limit: int = 70) -> str:
    """A case on one line: reply (its tail when long), gold, expected verdict, why."""
    reply = case.reply if len(case.reply) <= limit else "..." + case.reply[-limit:]
    return f"{reply!r} vs {case.gold!r}: expected {case.expected} ({case.why})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="print the totals only")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # Math-Verify logs every parse failure

    ours(CASES[0].reply, "warm-up: starts the verifier pool")
    plain, plain_s = run(plain_math_verify)
    dollars, dollars_s = run(math_verify_gold_in_dollars)
    mine, mine_s = run(ours)
    expected = [case.expected for case in CASES]
    n = len(CASES)

    print(
        f"{n} cases ({sum(expected)} equivalent, {n - sum(expected)} not); "
        f"math-verify {version('math-verify')}, Python {platform.python_version()}"
    )
    graders = (
        ("ours", mine, mine_s),
        ("plain math-verify", plain, plain_s),
        ("math-verify, gold in $", dollars, dollars_s),
    )
    print(f"{'grader':<24} {'agreement':>18} {'false +':>8} {'false -':>8} {'seconds':>8}")
    for name, verdicts, secs in graders:
        agree = sum(v == e for v, e in zip(verdicts, expected, strict=True))
        false_pos = sum(v and not e for v, e in zip(verdicts, expected, strict=True))
        false_neg = sum(e and not v for v, e in zip(verdicts, expected, strict=True))
        share = f"{agree}/{n} = {agree / n:.1%}"
        print(f"{name:<24} {share:>18} {false_pos:>8} {false_neg:>8} {secs:>8.2f}")
    if SHARED_DATA.is_dir():
        print_data_set_table()
    if args.quiet:
        return
    for name, verdicts, _ in graders:
        wrong = [c for c, v in zip(CASES, verdicts, strict=True) if v != c.expected]
        print(f"\n{name} disagrees on {len(wrong)}:")
        for case in wrong:
            print("  " + show(case))


if __name__ == "__main__":
    main()
