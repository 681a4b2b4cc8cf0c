"""tau2's ``calculate`` tool, shared by the domains that have it (airline, retail).

tau2 checks the characters and then ``eval``s the text; walking the syntax tree
instead gives the same numbers and the same error texts (``division by zero``,
``invalid syntax (<string>, line 1)``) without running arbitrary code, and
refuses powers too large to compute.

Example:
    >>> calculate("(2 + 3) * 1.5")
    '7.5'
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

_CALC_CHARS = frozenset("0123456789+-*/(). ")
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_MAX_POW_BITS = 1_000_000
"""An integer power above about this many bits is refused (upstream would compute it for ages)."""


def evaluate_arithmetic(expression: str) -> Any:
    """The value Python's ``eval`` gives ``expression`` (digits, ``+-*/().`` and spaces only).

    Raises what ``eval`` raises (``SyntaxError`` with the same text,
    ``ZeroDivisionError``...), except for a power too large to compute.
    """
    # eval strips surrounding spaces and names its source "<string>"; so do we, for the same text.
    tree = compile(expression.strip(" \t"), "<string>", "eval", ast.PyCF_ONLY_AST)
    assert isinstance(tree, ast.Expression)
    return _eval_node(tree.body)


def _eval_node(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow) and _too_big_power(left, right):
            raise ValueError("Result too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.Tuple):  # "()" : eval gives an empty tuple, float() then fails
        return tuple(_eval_node(e) for e in node.elts)
    if isinstance(node, ast.Call):  # "(2)(3)": eval calls the number and fails
        func = _eval_node(node.func)
        raise TypeError(f"'{type(func).__name__}' object is not callable")
    raise ValueError("Invalid expression")


def _too_big_power(base: Any, exponent: Any) -> bool:
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0:
        return False
    if abs(base) <= 1:
        return False
    return exponent * math.log2(abs(base)) > _MAX_POW_BITS


def calculate(expression: str) -> str:
    """The value of ``expression`` rounded to 2 decimals, as tau2's tool answers.

    Raises:
        ValueError: for characters other than digits, ``+-*/().`` and spaces.
        Whatever ``eval`` raises for the same text (``ZeroDivisionError``, ``SyntaxError``).
    """
    if not all(ch in _CALC_CHARS for ch in expression):
        raise ValueError("Invalid characters in expression")
    return str(round(float(evaluate_arithmetic(expression)), 2))
