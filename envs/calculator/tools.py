"""The calculator tool: its OpenAI function schema and a safe, exact evaluator.

Model text is never ``eval``-ed. The expression is parsed with :func:`ast.parse` and
walked by a whitelist, so ``__import__('os').system('x')`` is a ``Call`` node that is
refused before anything runs. The grammar:

- binary ``+ - * /``, unary ``-`` and ``+``, parentheses;
- numbers written as plain decimals: ``12``, ``3.5``, ``.5`` (no ``1e3``, ``0x1f``,
  ``1_000``, ``1,200``, ``True``, names, calls, attributes, ``**``, ``//``, ``%``).

No power operator, and at most :data:`MAX_EXPRESSION_CHARS` characters, checked before
parsing: the values then stay small (a few hundred digits at worst), the parser's and the
evaluator's work is bounded, and nesting stays far below the recursion limit. Values are
:class:`fractions.Fraction` built from the literal's digits, so ``0.1+0.2`` is ``0.3`` and
``1/3*3`` is ``1``, exactly. ``×``, ``÷`` and ``−`` read as ``*``, ``/`` and ``-``, and one
trailing ``=`` is dropped (a small model copies ``437*82=`` from the question).

A refused or failing expression (syntax, a forbidden construct, division by zero, too
long) raises :class:`CalculatorError`, whose message is what the model is shown.

Example:
    >>> calculate("(12+3)*4/5")
    '12'
    >>> calculate("1/3*3"), calculate("0.1+0.2"), calculate("7/2"), calculate("10/3")
    ('1', '0.3', '3.5', '10/3 (about 3.33333333333)')
    >>> try:
    ...     calculate("__import__('os').system('echo hi')")
    ... except CalculatorError as e:
    ...     print(e)
    only numbers, + - * / and parentheses are allowed (found a function call)
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction
from typing import Any

MAX_EXPRESSION_CHARS = 200
"""Longest expression (after normalisation) that is parsed at all."""

SIGNIFICANT_DIGITS = 12
"""Digits shown of a value whose decimal expansion does not end."""

CALCULATOR_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": (
            "Evaluate an arithmetic expression exactly: numbers, + - * / and parentheses."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "expression": {"type": "string", "description": "For example (12+3)*4/5."},
            },
            "required": ["expression"],
        },
    },
}
"""OpenAI function schema of the calculator tool."""

_NUMBER_RE = re.compile(r"\d+(\.\d*)?|\.\d+")
_UNICODE_OPS = str.maketrans({"\u00d7": "*", "\u00f7": "/", "\u2212": "-"})
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_NAMED = {
    ast.Pow: "the power operator **",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.BitXor: "^ (write powers as products)",
    ast.Call: "a function call",
    ast.Name: "a name",
    ast.Attribute: "an attribute",
    ast.Subscript: "a subscript",
    ast.Compare: "a comparison",
    ast.Tuple: "a comma (write numbers without thousands separators)",
}


class CalculatorError(ValueError):
    """The expression was refused or cannot be evaluated; the message is shown to the model."""


def normalize(expression: str) -> str:
    """The expression as it is parsed: unicode operators mapped, one trailing ``=`` dropped.

    Example:
        >>> normalize(" 12 \u00d7 3 = ")
        '12 * 3'
    """
    text = " ".join(expression.translate(_UNICODE_OPS).split())
    if text.endswith("="):
        text = text[:-1].rstrip()
    return text


def evaluate(expression: str, *, max_chars: int = MAX_EXPRESSION_CHARS) -> Fraction:
    """The exact value of an arithmetic expression (see the module docstring for the grammar).

    Raises:
        CalculatorError: empty, longer than ``max_chars``, not an expression, a construct
            outside the grammar, or a division by zero.

    Example:
        >>> evaluate("-(2+3)/4")
        Fraction(-5, 4)
    """
    text = normalize(expression)
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > max_chars:
        raise CalculatorError(f"expression longer than {max_chars} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"not a valid arithmetic expression ({e.msg})") from None
    except (ValueError, RecursionError, MemoryError):  # null bytes; nesting the parser refuses
        raise CalculatorError("not a valid arithmetic expression") from None
    return _value(tree.body, text)


def format_value(value: Fraction) -> str:
    """A value as the tool shows it: an integer, an exact decimal, or ``p/q (about d)``.

    Example:
        >>> [format_value(Fraction(*x)) for x in [(35834,), (-1, 8), (2, 3)]]
        ['35834', '-0.125', '2/3 (about 0.666666666667)']
    """
    if value.denominator == 1:
        return str(value.numerator)
    places = _terminating_places(value.denominator)
    if places is not None and places <= SIGNIFICANT_DIGITS:
        sign = "-" if value < 0 else ""
        scaled = abs(value.numerator) * 10**places // value.denominator
        whole, frac = divmod(scaled, 10**places)
        return f"{sign}{whole}.{str(frac).zfill(places).rstrip('0')}"
    approx = f"{float(value):.{SIGNIFICANT_DIGITS}g}" if abs(value) < 1e300 else "a huge number"
    return f"{value.numerator}/{value.denominator} (about {approx})"


def calculate(expression: str, *, max_chars: int = MAX_EXPRESSION_CHARS) -> str:
    """The tool's reply to ``expression``: its formatted exact value.

    Raises:
        CalculatorError: see :func:`evaluate`.
    """
    return format_value(evaluate(expression, max_chars=max_chars))


def _value(node: ast.AST, text: str) -> Fraction:
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left, text), _value(node.right, text)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise CalculatorError("division by zero")
        return left / right
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand, text)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Constant):
        literal = ast.get_source_segment(text, node) or ""
        if isinstance(node.value, (int, float)) and _NUMBER_RE.fullmatch(literal):
            return Fraction(literal)
        raise CalculatorError(f"numbers must be plain decimals such as 12 or 3.5, got {literal}")
    what = _NAMED.get(type(node.op) if isinstance(node, ast.BinOp) else type(node))
    raise CalculatorError(
        f"only numbers, + - * / and parentheses are allowed (found {what or type(node).__name__})"
    )


def _terminating_places(denominator: int) -> int | None:
    """Decimal places of ``1/denominator`` when its expansion ends, else None."""
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    return max(twos, fives) if denominator == 1 else None


__all__ = [
    "CALCULATOR_TOOL",
    "MAX_EXPRESSION_CHARS",
    "SIGNIFICANT_DIGITS",
    "CalculatorError",
    "calculate",
    "evaluate",
    "format_value",
    "normalize",
]
