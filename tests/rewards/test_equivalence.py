"""The math reward against the answer-equivalence suite, and one test per bug it had."""

from __future__ import annotations

import time

import pytest
from equivalence_cases import CASES, Case

from areal_env.envs.math.reward import score_response
from areal_env.rewards import math_verify as mv
from areal_env.rewards.answer_extraction import final_answer, gold_candidates, set_against_tuple

MIN_AGREEMENT = 0.98


def _show(case: Case) -> str:
    reply = case.reply if len(case.reply) <= 80 else "..." + case.reply[-80:]
    return f"{reply!r} vs {case.gold!r}: expected {case.expected} ({case.why})"


def test_the_suite_is_large_and_balanced() -> None:
    assert len(CASES) >= 250
    assert len({(c.reply, c.gold) for c in CASES}) == len(CASES), "duplicate cases"
    negatives = sum(not c.expected for c in CASES)
    assert negatives >= len(CASES) // 3, "negative cases matter as much as positive ones"


def test_score_response_agrees_with_the_suite() -> None:
    wrong = [c for c in CASES if (score_response(c.reply, c.gold) == 1.0) != c.expected]
    agreement = 1 - len(wrong) / len(CASES)
    listing = "\n".join(_show(c) for c in wrong)
    assert agreement >= MIN_AGREEMENT, (
        f"agreement {agreement:.1%} < {MIN_AGREEMENT:.0%} on {len(CASES)} cases; "
        f"{len(wrong)} wrong:\n{listing}"
    )


# ---- one test per bug: each failed before the fix ------------------------------------


@pytest.mark.parametrize(
    ("reply", "gold", "expected"),
    [
        ("The answer is 42. Check: 42 + 8 = 50.", "42", 1.0),
        ("The answer is 42. Check: 42 + 8 = 50.", "50", 0.0),
        ("#### 72\nCheck: 72 + 8 = 80", "72", 1.0),
        ("#### 72\nCheck: 72 + 8 = 80", "80", 0.0),
        ("Speed is 40. The answer is 40. (Check: 40 * 1.5 = 60.)", "60", 0.0),
    ],
)
def test_a_check_after_the_stated_answer_is_not_the_answer(
    reply: str, gold: str, expected: float
) -> None:
    # Math-Verify's "answer ... = <number>" pattern reached past the sentence.
    assert score_response(reply, gold) == expected


@pytest.mark.parametrize(
    ("reply", "gold", "expected"),
    [
        # Math-Verify read these bare LaTeX golds as their first or last number.
        (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", 1.0),
        (r"\boxed{3}", r"\left( 3, \frac{\pi}{2} \right)", 0.0),  # was read as gold 3
        (r"\boxed{7}", "3, 5, 7", 0.0),  # was read as gold 7
        (r"\boxed{10}", r"10,\!080", 0.0),  # was read as gold 10
        (r"\boxed{10080}", r"10,\!080", 1.0),
        (r"\boxed{5x - 7y + 11z - 4 = 0}", r"5x - 7y + 11z + 4 = 0", 0.0),  # gold 0
        (r"\boxed{2\sqrt{5}}", r"2 \sqrt{5}", 1.0),
        (r"\boxed{C}", r"\text{(C)}", 1.0),
        (r"\boxed{(3,4]}", "(3,4]", 1.0),
    ],
)
def test_a_bare_latex_gold_is_read_as_latex(reply: str, gold: str, expected: float) -> None:
    assert score_response(reply, gold) == expected


@pytest.mark.parametrize(
    ("reply", "gold"),
    [(r"\boxed{\{4,2\}}", "(2,4)"), (r"\boxed{\{6,-1\}}", r"\left( -1, 6 \right)")],
)
def test_a_set_never_equals_an_ordered_pair(reply: str, gold: str) -> None:
    assert score_response(reply, gold) == 0.0
    assert score_response(reply.replace(r"\{", "(").replace(r"\}", ")"), gold) == 0.0
    assert set_against_tuple(final_answer(reply).text, gold)


@pytest.mark.parametrize(
    ("reply", "gold", "expected"),
    [
        (r"First I got \boxed{3}, which is wrong; the answer is \boxed{5}.", "5", 1.0),
        (r"The roots are $\boxed{3}$ and $\boxed{5}$.", "3, 5", 1.0),
        (r"So it is \fbox{5}. Check: 5 + 1 = 6", "5", 1.0),
        (r"\boxed{6.72e-5}", ".0000672", 1.0),  # e read as Euler's number
        ("1.5e3", "1500", 1.0),
        ("+12", "12", 1.0),  # Math-Verify reads no number in "+12"
        ("The answer is \\sqrt{2}.", "\\sqrt{2}", 1.0),
    ],
)
def test_answers_math_verify_missed(reply: str, gold: str, expected: float) -> None:
    assert score_response(reply, gold) == expected


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("\u0663", "3"),  # ARABIC-INDIC DIGIT THREE: Decimal reads 3, Math-Verify nothing
        ("\uff13", "3"),  # FULLWIDTH DIGIT THREE
        ("0.1234565", "0.1234564"),  # Math-Verify rounds to 6 decimals: equal there
        ("12345678901234567.5", "12345678901234567.4"),  # past float precision
        ("-03", "-3"),  # Math-Verify reads no number in "-03"
        ("-.5", "-0.5"),  # nor in "-.5"
        ("3.", "3"),  # nor in a boxed "3."
    ],
)
def test_the_fast_path_leaves_numbers_math_verify_reads_otherwise(response: str, gold: str) -> None:
    assert mv.plain_number_verdict(response, gold) is None


def test_a_stated_bare_number_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_worker(*args: object) -> bool:
        raise AssertionError("the fast path should have answered")

    monkeypatch.setattr(mv, "_verdict", no_worker)
    reply = "She sells 16 - 3 - 4 = 9 eggs at $2, 9 * 2 = 18.\nThe answer is 18."
    assert mv.math_reward(reply, "18") == 1.0
    assert mv.math_reward(reply + " ", "19") == 0.0
    assert mv.math_reward("\\boxed{18}.", "18") == 1.0


# ---- extraction rules ------------------------------------------------------------------


_NO_PHRASE = "I verify my answer by adding 42 + 8 = 50"


@pytest.mark.parametrize(
    ("reply", "text", "rule"),
    [
        (r"\boxed{\boxed{5}}", "5", "boxed"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", "boxed"),
        (r"\boxed 7.", "7", "boxed"),
        (r"answer \boxed{1} then \boxed{2", "1", "boxed"),  # the unclosed box does not count
        (r"The answer is \boxed{5}. Check: \boxed{6} - 1 = 5", "6", "boxed"),
        ("The final answer is $8$. I hope it is correct.", "$8$", "stated"),
        ("**Answer:** 1,250", "1,250", "stated"),
        ("The answer is\n\\[\n\\frac{1}{2}\n\\]\nso...", "\\[\n\\frac{1}{2}\n\\]", "stated"),
        ("The answer is 3. No: the answer is 4.", "4", "stated"),
        (
            "I verify my answer by adding 42 + 8 = 50",
            "I verify my answer by adding 42 + 8 = 50",
            "reply",
        ),
        ("  85 \n", "85", "reply"),
    ],
)
def test_final_answer_rules(reply: str, text: str, rule: str) -> None:
    answer = final_answer(reply)
    assert (answer.text, answer.rule) == (text, rule)


def test_gold_candidates_read_bare_latex_inside_a_box() -> None:
    assert gold_candidates(r" \$18.90 ") == (r"\boxed{\$18.90}", r"\$18.90")
    assert gold_candidates(r"$\frac12$") == (r"$\frac12$",)
    assert gold_candidates(r"\boxed{5}") == (r"\boxed{5}",)


@pytest.mark.parametrize(
    "reply",
    ["\\boxed{" * 4000, "\\boxed{x}" * 1000, "{" * 4000 + "}" * 4000, "answer is " * 500],
)
def test_extraction_is_fast_on_adversarial_replies(reply: str) -> None:
    start = time.perf_counter()
    final_answer(reply)
    assert time.perf_counter() - start < 0.5


def test_deeply_nested_boxes_do_not_recurse() -> None:
    assert final_answer("\\boxed{" * 2000 + "7" + "}" * 2000).text == "7"
