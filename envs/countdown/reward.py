"""Countdown's reward: parse the model's expression safely, check its numbers, compare exactly.

Model text is never ``eval``-ed. It is parsed with :func:`ast.parse` and walked by a
whitelist; nothing outside it is evaluated, so ``__import__('os').system('x')`` is a
``Call`` node and scores 0.0 without running anything. The grammar:

- binary ``+ - * /`` (``ast.BinOp`` with ``Add``, ``Sub``, ``Mult``, ``Div``) and parentheses;
- integer literals written as plain decimal digits (``07``, ``1_0``, ``0x18``, ``1e3``,
  ``2.5``, ``True`` are refused), each of which must be one of the task's numbers;
- nothing else: no ``**`` (a power tower is the classic blow-up), no unary minus or plus
  (Countdown combines the given numbers with binary operations; ``-(a-b)`` is ``b-a``),
  no names, calls, attributes, subscripts, comparisons.

``×``, ``÷`` and ``−`` (U+2212) are read as ``*``, ``/`` and ``-`` (models write them), and
runs of white space, newlines included, as one space.
The answer is the last ``<answer>...</answer>`` span after any ``<think>`` block, else the
whole reply. One trailing ``= <integer>`` is allowed (``(6-2)*6 = 24``), and the integer must
be the target. Values are :class:`fractions.Fraction`, so ``8/(3-8/3)`` is exactly 24 and
``1/3*3`` exactly 1. The numbers used are a multiset: each given number may be used as
often as it is given; a task with ``use_all`` needs every one of them.

A failed check is a verdict with a ``reason`` (one of :data:`REASONS`), never an exception:
reward 0.0. Expressions longer than ``max_chars`` (default :data:`MAX_EXPRESSION_CHARS`) are
refused before parsing, which bounds the parser's work and the evaluator's recursion.

Example:
    >>> score_response("<answer>(6-2)*6</answer>", [6, 2, 6, 1], 24).reward
    1.0
    >>> verdict = score_response("8/(3-8/3)", [3, 3, 8, 8], 24, use_all=True)
    >>> verdict.reward, verdict.value
    (1.0, Fraction(24, 1))
    >>> score_response("6*4", [6, 2], 24).reason
    'unknown_number'
    >>> score_response("__import__('os').system('x')", [1], 1).reason
    'disallowed'
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

MAX_EXPRESSION_CHARS = 200
"""Longest expression (after extraction) that is parsed at all."""

REASONS = (
    "empty",
    "too_long",
    "syntax",
    "disallowed",
    "unknown_number",
    "reused_number",
    "unused_number",
    "division_by_zero",
    "wrong_value",
    "wrong_claim",
)
"""Why an answer scored 0.0, in the order the checks run."""

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_UNICODE_OPS = str.maketrans({"\u00d7": "*", "\u00f7": "/", "\u2212": "-"})
_CLAIM_RE = re.compile(r"(?P<expr>[^=]*)=\s*(?P<claim>\d+)\s*")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one answer.

    Example:
        >>> v = score_expression("5+5", [5, 3], 10)
        >>> v.reward, v.valid, v.reason, v.numbers_used
        (0.0, False, 'reused_number', (5, 5))
    """

    reward: float
    """1.0 when the answer is a valid expression equal to the target, else 0.0."""
    valid: bool
    """The expression parsed, used only allowed numbers and evaluated (any value)."""
    reason: str | None
    """None when correct, else one of :data:`REASONS`."""
    detail: str
    """A short human-readable explanation ("" when correct)."""
    expression: str | None = None
    """The parsed expression, re-rendered by :func:`ast.unparse`; None if it did not parse."""
    value: Fraction | None = None
    """Its exact value; None unless ``valid``."""
    numbers_used: tuple[int, ...] = ()
    """The integer literals of the expression, in order of appearance."""


class _Refused(Exception):
    """Internal: a check failed; carries the reason code and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def strip_thinking(text: str) -> str:
    """Drop a ``<think>...</think>`` block; an unclosed one leaves no reply (``""``)."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[-1]
    return "" if "<think>" in text else text


def extract_answer(reply: str) -> str:
    """The last ``<answer>`` span after any thinking, else the whole reply, stripped.

    Example:
        >>> extract_answer("<think>2*3?</think>try <answer>1+2</answer> or <answer>3*1</answer>")
        '3*1'
        >>> extract_answer(" 4*6 ")
        '4*6'
    """
    text = strip_thinking(reply)
    spans = ANSWER_RE.findall(text)
    return (spans[-1] if spans else text).strip()


def score_response(
    reply: str,
    numbers: Sequence[int],
    target: int,
    *,
    use_all: bool = False,
    max_chars: int = MAX_EXPRESSION_CHARS,
) -> Verdict:
    """Check an assistant reply: :func:`extract_answer`, then :func:`score_expression`."""
    return score_expression(
        extract_answer(reply), numbers, target, use_all=use_all, max_chars=max_chars
    )


def score_expression(
    text: str,
    numbers: Sequence[int],
    target: int,
    *,
    use_all: bool = False,
    max_chars: int = MAX_EXPRESSION_CHARS,
) -> Verdict:
    """Check one expression against a task; never raises on any ``text``.

    Args:
        text: the expression, optionally followed by ``= <target>``.
        numbers: the task's numbers (a multiset).
        target: the value to reach.
        use_all: every number must be used (exactly once per occurrence); else at most once.
        max_chars: longer texts are refused (``too_long``) without being parsed.

    Returns:
        The :class:`Verdict`; its ``reward`` is 1.0 or 0.0.
    """
    expression: str | None = None
    used: tuple[int, ...] = ()
    value: Fraction | None = None
    try:
        # Whitespace (newlines included) only separates tokens: "(6-2)\n*6" is one line.
        body, claim = _split_claim(" ".join(text.translate(_UNICODE_OPS).split()), max_chars)
        tree = _parse(body)
        expression = ast.unparse(tree)
        used = tuple(_literals(tree.body, body))
        _check_numbers(used, numbers, use_all)
        value = _evaluate(tree.body)
        if value != target:
            raise _Refused("wrong_value", f"the expression is {value}, not {target}")
        if claim is not None and claim != target:
            raise _Refused("wrong_claim", f"the answer states = {claim}, the target is {target}")
    except _Refused as refused:
        return Verdict(
            0.0, value is not None, refused.reason, refused.detail, expression, value, used
        )
    except RecursionError:  # only with a raised max_chars: a chain too deep to walk
        return Verdict(0.0, False, "too_long", "nested too deeply to check")
    return Verdict(1.0, True, None, "", expression, value, used)


def _split_claim(text: str, max_chars: int) -> tuple[str, int | None]:
    if not text:
        raise _Refused("empty", "no expression")
    if len(text) > max_chars:
        raise _Refused("too_long", f"{len(text)} characters; at most {max_chars}")
    if "=" not in text:
        return text, None
    match = _CLAIM_RE.fullmatch(text)
    if match is None:
        raise _Refused("syntax", "'=' may only be followed by one integer, once")
    return match["expr"].strip(), int(match["claim"])


def _parse(text: str) -> ast.Expression:
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise _Refused("syntax", f"not an expression: {type(e).__name__}") from None


def _literals(node: ast.AST, source: str) -> list[int]:
    """Walk the whitelist; return the integer literals, refusing any other node."""
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _OPS:
            raise _Refused("disallowed", f"operator {type(node.op).__name__} is not + - * /")
        return _literals(node.left, source) + _literals(node.right, source)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        written = ast.get_source_segment(source, node) or ""
        if not written.isdigit() or not written.isascii():
            raise _Refused("disallowed", f"number {written!r} is not plain decimal digits")
        return [node.value]
    raise _Refused("disallowed", f"{type(node).__name__} is not allowed")


def _check_numbers(used: Sequence[int], numbers: Sequence[int], use_all: bool) -> None:
    given, counts = Counter(numbers), Counter(used)
    for number, count in counts.items():
        if number not in given:
            raise _Refused("unknown_number", f"{number} is not one of {list(numbers)}")
        if count > given[number]:
            raise _Refused("reused_number", f"{number} used {count} times, given {given[number]}")
    missing = given - counts
    if use_all and missing:
        raise _Refused("unused_number", f"{sorted(missing.elements())} not used; use every number")


def _evaluate(node: ast.expr) -> Fraction:
    # Only nodes that _literals accepted reach here.
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int)
        return Fraction(node.value)
    assert isinstance(node, ast.BinOp)
    left, right = _evaluate(node.left), _evaluate(node.right)
    op = _OPS[type(node.op)]
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if right == 0:
        raise _Refused("division_by_zero", "division by zero")
    return left / right


__all__ = [
    "MAX_EXPRESSION_CHARS",
    "REASONS",
    "Verdict",
    "extract_answer",
    "score_expression",
    "score_response",
    "strip_thinking",
]
