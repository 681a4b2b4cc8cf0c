r"""CalculatorEnv (``areal/Calculator-v0``): math problems with a safe ``calculator`` tool.

PythonTool-v0's episode (``envs/python_tool/env.py``: the same tasks, loop, counting,
turn limit and Math-Verify reward on the ``\boxed{}`` answer) with a tool small models
can use: ``calculator(expression)`` evaluates ``+ - * /``, parentheses and decimal numbers
exactly, with an AST whitelist and never ``eval`` (:mod:`areal_env.envs.calculator.tools`).
An expression it refuses (a name, a call, ``**``, division by zero, too long) is answered
``error: ...``, and the episode goes on. No sandbox is involved, so it runs anywhere.

The default tasks are generated multiplications of two numbers up to 999 (``437*82=``):
more than a tiny model computes in its head, while a model that calls the calculator with
the question's expression (a trailing ``=`` is accepted) and copies the result into
``\boxed{}`` wins. ``max_operand`` and ``ops`` choose others; ``dataset=`` reads GSM8K or
MATH-500 JSONL as PythonTool-v0 does.

Example:
    >>> env = CalculatorEnv()
    >>> obs, info = env.reset(options={"task_index": 0})
    >>> obs[-1]["content"], info["answer"]
    ('258*123=', '31734')
    >>> function = {"name": "calculator", "arguments": '{"expression": "258*123="}'}
    >>> call = {"id": "c1", "type": "function", "function": function}
    >>> obs, reward, done, cut, step = env.step(
    ...     {"role": "assistant", "content": None, "tool_calls": [call]})
    >>> obs[0]["content"], step["tool_calls"], step["tool_errors"]
    ('31734', 1, 0)
    >>> env.step("\\boxed{31734}")[1:3]
    (1.0, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from areal_env.envs.calculator.tools import (
    CALCULATOR_TOOL,
    MAX_EXPRESSION_CHARS,
    CalculatorError,
    calculate,
)
from areal_env.envs.python_tool.data import SYNTHETIC, ToolMathTask
from areal_env.envs.python_tool.env import ToolMathEnv, ToolReply
from areal_env.resources import ResourceRegistry

CALCULATOR_SYSTEM_PROMPT = (
    "Solve the problem. Use the calculator tool for arithmetic (numbers, + - * / and "
    "parentheses). When you know the answer, reply without a tool call and put the final "
    "answer in \\boxed{}."
)
"""The system prompt of Calculator-v0 (None drops it): it states the tool and the format."""


class CalculatorEnv(ToolMathEnv):
    """Math problems with an exact, safe ``calculator`` tool; see the module docstring.

    Args:
        dataset: ``"synthetic"`` or a GSM8K- / MATH-500-format JSONL path.
        max_operand: largest operand of generated tasks (default 999: up to 3 digits).
        ops: operators of generated tasks (default ``("*",)``).
        max_expression_chars: longer expressions are refused before parsing.
        system_prompt: defaults to :data:`CALCULATOR_SYSTEM_PROMPT`.
        **kwargs: the rest of :class:`~areal_env.envs.python_tool.env.ToolMathEnv`'s
            arguments (``max_turns``, ``max_calls_per_turn``, ``prompt_template``,
            ``data_seed``).
    """

    tool = CALCULATOR_TOOL
    argument = "expression"

    def __init__(
        self,
        dataset: str | Path = SYNTHETIC,
        *,
        max_operand: int = 999,
        ops: Sequence[str] = ("*",),
        max_expression_chars: int = MAX_EXPRESSION_CHARS,
        system_prompt: str | None = CALCULATOR_SYSTEM_PROMPT,
        resources: ResourceRegistry | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dataset,
            max_operand=max_operand,
            ops=ops,
            system_prompt=system_prompt,
            resources=resources,
            **kwargs,
        )
        chars = max_expression_chars
        if isinstance(chars, bool) or not isinstance(chars, int) or chars < 1:
            raise ValueError(f"max_expression_chars must be an int >= 1, got {chars!r}")
        self.max_expression_chars = chars

    async def _call_tool(self, value: str) -> ToolReply:
        try:
            return ToolReply(calculate(value, max_chars=self.max_expression_chars), ok=True)
        except CalculatorError as e:
            return ToolReply(f"error: {e}", ok=False)

    def _gold_calls(self, task: ToolMathTask) -> list[list[str]]:
        """One message calling the calculator on each gold calculation; none for MATH-500.

        A generated task's one call is its own expression; a GSM8K task's are the
        annotated calculations of its solution (at most ``max_calls_per_turn``, the last
        ones: the final calculation usually gives the answer).
        """
        if not task.calculations:
            return []
        return [list(task.calculations[-self.max_calls_per_turn :])]


__all__ = ["CALCULATOR_SYSTEM_PROMPT", "CalculatorEnv"]
