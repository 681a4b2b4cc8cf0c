"""Arithmetic tasks generated in code: an index and a seed give one task, always the same.

The default run trains a tiny model with a character tokenizer, so questions are
compact (``37+48=``); pass a wordier ``template`` for larger models.

Example:
    >>> task = arithmetic_task(0, seed=0)
    >>> task == arithmetic_task(0, seed=0)
    True
    >>> arithmetic_task(3, seed=1, template="What is {a} {op} {b}?").question.startswith("What")
    True
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

OPERATORS: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}
"""The operators a task may use, by symbol."""

DEFAULT_TEMPLATE = "{a}{op}{b}="
"""Question text; ``{a}``, ``{op}`` and ``{b}`` are filled in."""


@dataclass(frozen=True, slots=True)
class ArithmeticTask:
    """One generated question with its integer answer.

    Example:
        >>> ArithmeticTask("37+48=", 85).answer
        85
    """

    question: str
    """The question text, e.g. ``"37+48="``."""
    answer: int
    """The exact integer result; never negative for subtraction."""


def validate_arithmetic_params(max_operand: int, ops: Sequence[str]) -> tuple[str, ...]:
    """Check generator parameters and return ``ops`` as a tuple.

    Args:
        max_operand: largest operand; must be an int >= 1.
        ops: non-empty operator symbols, each a key of ``OPERATORS``.

    Raises:
        ValueError: naming ``max_operand`` or ``ops`` when one is invalid.
    """
    if isinstance(max_operand, bool) or not isinstance(max_operand, int) or max_operand < 1:
        raise ValueError(f"max_operand must be an int >= 1, got {max_operand!r}")
    if isinstance(ops, str) or not isinstance(ops, Sequence) or len(ops) == 0:
        raise ValueError(f"ops must be a non-empty list of operators, got {ops!r}")
    unknown = [op for op in ops if op not in OPERATORS]
    if unknown:
        raise ValueError(f"ops has unknown operators {unknown}; valid: {sorted(OPERATORS)}")
    return tuple(ops)


def arithmetic_task(
    index: int,
    *,
    seed: int,
    max_operand: int = 99,
    ops: Sequence[str] = ("+", "-"),
    template: str = DEFAULT_TEMPLATE,
) -> ArithmeticTask:
    """Generate task number ``index`` of the stream named by ``seed``.

    Operands are drawn uniformly from ``[0, max_operand]``; for subtraction the
    larger one comes first, so answers are never negative.

    Args:
        index: position in the stream, >= 0.
        seed: names the stream; the same (seed, index) always gives the same task.
        max_operand: largest operand.
        ops: operator symbols to choose from (keys of ``OPERATORS``).
        template: question format with ``{a}``, ``{op}`` and ``{b}``.

    Returns:
        The task.

    Example:
        >>> t = arithmetic_task(7, seed=0, ops=("-",))
        >>> t.answer >= 0
        True
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be an int >= 0, got {index!r}")
    ops = validate_arithmetic_params(max_operand, ops)
    # A str seed is hashed with SHA-512, so the stream is the same in every
    # process and Python version, and (seed, index) pairs never collide.
    rng = random.Random(f"arithmetic:{seed}:{index}")
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    op = ops[rng.randrange(len(ops))]
    if op == "-" and a < b:
        a, b = b, a
    return ArithmeticTask(template.format(a=a, op=op, b=b), OPERATORS[op](a, b))


__all__ = [
    "DEFAULT_TEMPLATE",
    "OPERATORS",
    "ArithmeticTask",
    "arithmetic_task",
    "validate_arithmetic_params",
]
