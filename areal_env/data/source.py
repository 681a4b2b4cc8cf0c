"""The shape every env's task list has: finite, indexable, named.

Envs draw a task index from their seeded RNG and build the episode from
``source[index]``; the name prefixes task ids (``gsm8k/test:12``). Generated
sources compute a task from its index on demand; file sources hold the records.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import numpy as np

TaskT_co = TypeVar("TaskT_co", covariant=True)


class TaskSource(Protocol[TaskT_co]):
    """A finite, indexable sequence of tasks with a short stable name."""

    @property
    def name(self) -> str:
        """Short stable name, the prefix of task ids (``synthetic-0``, ``gsm8k/test``)."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> TaskT_co: ...


RESET_OPTIONS = ("task_index",)
"""The ``reset(options=...)`` keys every task env accepts."""


def choose_task_index(
    options: dict[str, Any], *, size: int, rng: np.random.Generator, name: str = "the tasks"
) -> int:
    """The task of a reset: ``options["task_index"]`` when given, else a draw from ``rng``.

    Raises:
        ValueError: naming an unknown option, or a task_index that is not an int in
            ``[0, size)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> choose_task_index({"task_index": 3}, size=10, rng=rng)
        3
        >>> 0 <= choose_task_index({}, size=10, rng=rng) < 10
        True
    """
    unknown = sorted(set(options) - set(RESET_OPTIONS))
    if unknown:
        raise ValueError(f"unknown reset options {unknown}; valid: {list(RESET_OPTIONS)}")
    if "task_index" not in options:
        return int(rng.integers(size))
    index = options["task_index"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
        raise ValueError(
            f"options['task_index'] must be an int in [0, {size}) for {name}, got {index!r}"
        )
    return index
