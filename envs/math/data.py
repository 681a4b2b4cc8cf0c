"""Task sources for MathEnv: synthetic arithmetic, or a GSM8K-format JSONL file.

A source is a finite, indexable sequence of :class:`MathTask` with a short
``name`` used in task ids.

Example:
    >>> source = build_task_source("synthetic", max_operand=9, ops=("+",), data_seed=0)
    >>> source[3] == source[3], len(source)
    (True, 1000000)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from areal_env.data.jsonl import MathTask, load_gsm8k_jsonl
from areal_env.data.source import TaskSource
from areal_env.data.synthetic import arithmetic_task

SYNTHETIC = "synthetic"
"""The ``dataset`` value that selects generated arithmetic tasks."""

SYNTHETIC_NUM_TASKS = 1_000_000
"""Indices of the synthetic stream an env draws from; far more than distinct tasks."""


@dataclass(frozen=True, slots=True)
class SyntheticTasks:
    """Arithmetic tasks generated on demand; index ``i`` is always the same task."""

    seed: int
    """Names the generated stream (MathEnv's ``data_seed``)."""
    max_operand: int
    """Largest operand."""
    ops: tuple[str, ...]
    """Operators to choose from."""

    @property
    def name(self) -> str:
        """``synthetic-<seed>``."""
        return f"{SYNTHETIC}-{self.seed}"

    def __len__(self) -> int:
        return SYNTHETIC_NUM_TASKS

    def __getitem__(self, index: int) -> MathTask:
        task = arithmetic_task(index, seed=self.seed, max_operand=self.max_operand, ops=self.ops)
        return MathTask(task.question, str(task.answer))


@dataclass(frozen=True, slots=True)
class FileTasks:
    """Tasks read from a GSM8K-format JSONL file, in file order."""

    name: str
    """``<folder>/<file stem>``, e.g. ``gsm8k/test``."""
    tasks: tuple[MathTask, ...]
    """The records."""

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> MathTask:
        return self.tasks[index]


def build_task_source(
    dataset: str | Path, *, max_operand: int, ops: Sequence[str], data_seed: int
) -> TaskSource:
    """Make the source named by MathEnv's ``dataset`` kwarg.

    Args:
        dataset: ``"synthetic"``, or the path of a GSM8K-format JSONL file.
        max_operand: largest operand of synthetic tasks.
        ops: operators of synthetic tasks.
        data_seed: seed of the synthetic stream (unused for files).

    Raises:
        ValueError: ``dataset`` is neither ``"synthetic"`` nor an existing file.
    """
    if dataset == SYNTHETIC:
        return SyntheticTasks(data_seed, max_operand, tuple(ops))
    path = Path(dataset)
    if not path.is_file():
        raise ValueError(
            f"dataset must be {SYNTHETIC!r} or an existing JSONL file, got {dataset!r}"
        )
    stat = path.stat()
    tasks = _load_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return FileTasks(f"{path.resolve().parent.name}/{path.stem}", tasks)


# Many envs are built per run (one per concurrent episode); parse each file once.
@functools.lru_cache(maxsize=8)
def _load_file(path: str, mtime_ns: int, size: int) -> tuple[MathTask, ...]:
    return tuple(load_gsm8k_jsonl(path))


__all__ = [
    "SYNTHETIC",
    "SYNTHETIC_NUM_TASKS",
    "FileTasks",
    "SyntheticTasks",
    "TaskSource",
    "build_task_source",
]
