"""The bare-number fast path gives exactly Math-Verify's verdict, on thousands of random pairs.

The fast path skips Math-Verify when reply and gold are both plain numbers; it may
only do so where its verdict is the one Math-Verify would give. Checked here against
two Math-Verify calls, run in this process: a plain one, ``verify(parse(gold),
parse(reply))``, and ours without the fast path (the extracted answer's candidates
against the gold's, what the verifier workers run), for the reply written bare,
boxed, and as a stated answer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import math_verify
import pytest

from areal_env.rewards import math_verify as mv
from areal_env.rewards.answer_extraction import final_answer, gold_candidates

PAIRS = 3000
DIGITS = "0123456789"
ARABIC_INDIC = str.maketrans(DIGITS, "".join(chr(0x660 + d) for d in range(10)))


@pytest.fixture(autouse=True, scope="module")
def _quiet_math_verify() -> Iterator[None]:
    logging.disable(logging.WARNING)  # Math-Verify warns about disabled timeouts, every call
    yield
    logging.disable(logging.NOTSET)


def _number(rng: random.Random) -> str:
    sign = "-" if rng.random() < 0.3 else ""
    whole = str(rng.randrange(10 ** rng.choice([1, 1, 2, 3, 5, 8, 12, 15, 16, 17, 20, 25])))
    if rng.random() < 0.1:
        whole = "0" * rng.randint(1, 3) + whole
    kind = rng.random()
    if kind < 0.4:
        return sign + whole
    decimals = "".join(rng.choices(DIGITS, k=rng.choice([1, 2, 3, 5, 6, 7, 8, 10])))
    return f"{sign}.{decimals}" if kind < 0.5 else f"{sign}{whole}.{decimals}"


def _variant(rng: random.Random, s: str) -> str:
    """Another way to write ``s``, a near miss, an odd format, or another number."""
    kind = rng.random()
    if kind < 0.2:
        return s
    if kind < 0.35:  # same value: trailing zeros
        return s + "0" * rng.randint(1, 3) if "." in s else s + "." + "0" * rng.randint(1, 3)
    if kind < 0.45:  # same value: a leading zero
        return "-0" + s[1:] if s.startswith("-") else "0" + s
    if kind < 0.65:  # last digit off by one
        return s[:-1] + str((int(s[-1]) + rng.choice([1, 9])) % 10)
    if kind < 0.72:
        return s[1:] if s.startswith("-") else "-" + s
    if kind < 0.85:  # formats the fast path must leave alone, or agree on
        odd = [
            f" {s}\n",
            f"+{s}",
            f"{s}.",
            s.replace("-0.", "-."),
            s.translate(ARABIC_INDIC),
            f"{s}%",
            f"{s}e0",
            f"1,{s.lstrip('-')}",
        ]
        return rng.choice(odd)
    return _number(rng)


def _plain_math_verify(reply: str, gold: str) -> bool:
    gold_parsed = math_verify.parse(gold, parsing_timeout=None)
    parsed = math_verify.parse(reply, parsing_timeout=None)
    return bool(math_verify.verify(gold_parsed, parsed, timeout_seconds=None))


def _ours_without_fast_path(reply: str, gold: str) -> bool:
    return mv._verify_in_worker(final_answer(reply).candidates, gold_candidates(gold))


def test_fast_path_matches_math_verify_on_random_pairs() -> None:
    rng = random.Random(20261201)
    taken, wrong = 0, []
    for _ in range(PAIRS):
        a = _number(rng)
        reply, gold = (a, _variant(rng, a)) if rng.random() < 0.5 else (_variant(rng, a), a)
        fast = mv.plain_number_verdict(reply, gold)
        if fast is None:
            continue
        taken += 1
        written = rng.choice([reply, f"\\boxed{{{reply}}}", f"So the answer is {reply}."])
        plain = _plain_math_verify(reply, gold)
        ours = _ours_without_fast_path(written, gold)
        if not fast == plain == ours:
            wrong.append(f"{reply!r} vs {gold!r} as {written!r}: {fast=} {plain=} {ours=}")
    assert taken > PAIRS // 3, "the fast path should answer most plain pairs"
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("reply", "gold"),
    [("85", "85"), ("085", "85"), ("85.000", "85"), ("-0", "0"), ("0.5", ".5"), ("1.25", "1.2500")]
    + [("84", "85"), ("-3", "3"), ("100", "1000"), ("0.000001", "0.000002"), ("2.5", "25")]
    + [("12345678901234", "12345678901234.0"), ("99999999999999999999", "99999999999999999999")],
)
def test_fast_path_on_chosen_pairs(reply: str, gold: str) -> None:
    fast = mv.plain_number_verdict(reply, gold)
    assert fast is not None
    assert fast == _plain_math_verify(reply, gold) == _ours_without_fast_path(reply, gold)
