r"""Tasks of the tool-using math envs: generated arithmetic, GSM8K or MATH-500 JSONL files.

Besides question and answer, a task carries the gold *calculations*: arithmetic
expressions a worked solution computes, which the envs' demonstrations hand to their
tool. A generated task's is its own expression (``437*82``); a GSM8K task's are the
``<<16-3-4=9>>`` annotations of its solution, in order (those the calculator accepts);
a MATH-500 task has none (its solutions are LaTeX prose).

The file format is detected from the first record's keys: ``question`` + ``answer``
(``#### <final>`` line) is GSM8K, ``problem`` + ``answer`` (+ ``solution``, ``subject``,
``level``, ...) is MATH-500; every line must then be of that format, and a line that
is not names its file and line number.

Example:
    >>> source = build_task_source("synthetic", max_operand=999, ops=("*",), data_seed=0)
    >>> task = source[0]
    >>> task.question, task.answer, task.calculations
    ('258*123=', '31734', ('258*123',))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from areal_env.data.jsonl import read_jsonl_objects
from areal_env.data.source import TaskSource
from areal_env.data.synthetic import arithmetic_task
from areal_env.envs.calculator.tools import CalculatorError, evaluate
from areal_env.envs.math.data import SYNTHETIC, SYNTHETIC_NUM_TASKS
from areal_env.envs.math.data import SyntheticTasks as MathSyntheticTasks
from areal_env.rewards.math_verify import extract_gsm8k_answer

FORMATS = {"gsm8k": ("question", "answer"), "math500": ("problem", "answer")}
"""Keys that identify each file format (the first record decides)."""

_ANNOTATION_RE = re.compile(r"<<([^=<>]*)=[^<>]*>>")


@dataclass(frozen=True, slots=True)
class ToolMathTask:
    """A math problem, its gold answer, and the calculations of a gold solution."""

    question: str
    """The problem statement shown to the model."""
    answer: str
    """The final answer: ``"72"``, or LaTeX such as ``"\\frac{\\pi}{2}"`` for MATH-500."""
    calculations: tuple[str, ...] = ()
    """Arithmetic expressions a gold solution computes, in order; may be empty."""


@dataclass(frozen=True, slots=True)
class SyntheticTasks:
    """Math-v0's generated arithmetic, each task with its expression as the calculation."""

    seed: int
    """Names the generated stream."""
    max_operand: int
    """Largest operand."""
    ops: tuple[str, ...]
    """Operators to choose from."""

    @property
    def _math(self) -> MathSyntheticTasks:
        return MathSyntheticTasks(seed=self.seed, max_operand=self.max_operand, ops=self.ops)

    @property
    def name(self) -> str:
        """``synthetic-<seed>``, as Math-v0's."""
        return self._math.name

    def __len__(self) -> int:
        return len(self._math)

    def __getitem__(self, index: int) -> ToolMathTask:
        task = self._math[index]
        # Same (seed, index), same draws: the template only changes how it is written.
        expression = arithmetic_task(
            index, seed=self.seed, max_operand=self.max_operand, ops=self.ops, template="{a}{op}{b}"
        ).question
        return ToolMathTask(task.question, task.answer, (expression,))


@dataclass(frozen=True, slots=True)
class FileTasks:
    """Tasks read from a GSM8K- or MATH-500-format JSONL file, in file order."""

    name: str
    """``<folder>/<file stem>``, e.g. ``math500/test``."""
    format: str
    """``"gsm8k"`` or ``"math500"``."""
    tasks: tuple[ToolMathTask, ...]
    """The records."""

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> ToolMathTask:
        return self.tasks[index]


def gsm8k_calculations(solution: str) -> tuple[str, ...]:
    r"""The ``<<expr=result>>`` annotations of a GSM8K solution that the calculator accepts.

    Example:
        >>> gsm8k_calculations("She sells 16 - 3 - 4 = <<16-3-4=9>>9.\n#### 9")
        ('16-3-4',)
    """
    found = []
    for expression in _ANNOTATION_RE.findall(solution):
        try:
            evaluate(expression)
        except CalculatorError:
            continue
        found.append(expression.strip())
    return tuple(found)


def load_math_jsonl(path: str | Path) -> FileTasks:
    """Read a GSM8K- or MATH-500-format JSONL file (the first record's keys decide).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line is not a JSON object, has neither format's keys, is not of the
            file's format, or has a bad field; the message names the file and line.
    """
    path = Path(path)
    tasks: list[ToolMathTask] = []
    fmt = ""
    for where, record in read_jsonl_objects(path, "math JSONL"):
        found = _format_of(record)
        if not fmt:
            if found is None:
                raise ValueError(
                    f"{where}: unknown math format: expected GSM8K keys {FORMATS['gsm8k']} or "
                    f"MATH-500 keys {FORMATS['math500']}, got keys {sorted(record)}"
                )
            fmt = found
        elif found != fmt:
            raise ValueError(
                f"{where}: not a {fmt} record like the file's first one: expected keys "
                f"{FORMATS[fmt]}, got keys {sorted(record)}"
            )
        tasks.append(_parse(record, where, fmt))
    if not tasks:
        raise ValueError(f"{path}: no records")
    return FileTasks(f"{path.resolve().parent.name}/{path.stem}", fmt, tuple(tasks))


def build_task_source(
    dataset: str | Path,
    *,
    max_operand: int,
    ops: Sequence[str],
    data_seed: int,
    load: Any = load_math_jsonl,
) -> TaskSource[ToolMathTask]:
    """The source named by an env's ``dataset`` kwarg.

    Args:
        dataset: ``"synthetic"``, or the path of a GSM8K- or MATH-500-format JSONL file.
        max_operand: largest operand of generated tasks.
        ops: operators of generated tasks.
        data_seed: seed of the generated stream (unused for files).
        load: reads a file (the envs pass a cached one).

    Raises:
        ValueError: ``dataset`` is neither ``"synthetic"`` nor an existing file.
    """
    if str(dataset) == SYNTHETIC:
        return SyntheticTasks(data_seed, max_operand, tuple(ops))
    if not Path(dataset).is_file():
        raise ValueError(
            f"dataset must be {SYNTHETIC!r} or an existing GSM8K/MATH-500 JSONL file, "
            f"got {str(dataset)!r}"
        )
    source: TaskSource[ToolMathTask] = load(dataset)
    return source


def _format_of(record: dict[str, Any]) -> str | None:
    for fmt, keys in FORMATS.items():
        if all(k in record for k in keys):
            return fmt
    return None


def _parse(record: dict[str, Any], where: str, fmt: str) -> ToolMathTask:
    for key in FORMATS[fmt]:
        if not isinstance(record[key], str) or not record[key].strip():
            raise ValueError(f"{where}: field {key!r} must be a non-empty string")
    if fmt == "math500":
        return ToolMathTask(record["problem"], record["answer"].strip())
    try:
        answer = extract_gsm8k_answer(record["answer"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    return ToolMathTask(record["question"], answer, gsm8k_calculations(record["answer"]))


__all__ = [
    "FORMATS",
    "SYNTHETIC",
    "SYNTHETIC_NUM_TASKS",
    "FileTasks",
    "SyntheticTasks",
    "TaskSource",
    "ToolMathTask",
    "build_task_source",
    "gsm8k_calculations",
    "load_math_jsonl",
]
