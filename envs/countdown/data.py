"""Countdown tasks: generated in code, or read from the Game of 24 CSV / d1's Countdown JSONL.

A task is a multiset of numbers, a target and a rule: each number at most once, or
(``use_all``) every number exactly once. Generated tasks are solvable by construction: the
numbers are drawn, combined by a random expression whose intermediate results are
positive integers, and its value becomes the target; the expression is the task's
solution. Tasks read from a file get theirs from :func:`solve`, a small exhaustive search
(cached), when the env first needs it.

File formats (see ``../shared/data/README.md``):

- ``*.csv``: the Tree-of-Thoughts Game of 24 file; numbers from the ``Puzzles`` column
  (``"1 1 4 6"``), target 24, every number exactly once;
- ``*.jsonl``: d1's Countdown records ``{"input": "30,100,93", "output": "23"}``, every
  number exactly once.

Example:
    >>> source = build_task_source("synthetic", num_numbers=3, max_number=20, data_seed=0)
    >>> task = source[5]
    >>> task == source[5], len(task.numbers), task.use_all
    (True, 3, False)
    >>> solve((4, 7, 8, 8), 24, use_all=True)
    '8*(4+7-8)'
"""

from __future__ import annotations

import csv
import functools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from areal_env.data.source import TaskSource

SYNTHETIC = "synthetic"
"""The ``dataset`` value that selects generated tasks."""

SYNTHETIC_NUM_TASKS = 1_000_000
"""Indices of the generated stream an env draws from."""

OPS = ("+", "-", "*", "/")
"""Operators a generated solution may use."""

GAME24_TARGET = 24
"""The target of every Game of 24 puzzle."""

_MAX_ATTEMPTS = 10_000


@dataclass(frozen=True, slots=True)
class CountdownTask:
    """One puzzle.

    Example:
        >>> CountdownTask((30, 100, 93), 23, use_all=True).solution is None
        True
    """

    numbers: tuple[int, ...]
    """The numbers to combine, in the order shown to the model."""
    target: int
    """The value to reach."""
    use_all: bool
    """Every number must be used exactly once (else each at most once)."""
    solution: str | None = None
    """A known solution; None for file tasks (see :func:`solve`)."""


@dataclass(frozen=True, slots=True)
class SyntheticTasks:
    """Tasks generated on demand; index ``i`` of a seed is always the same task."""

    seed: int
    """Names the generated stream (the env's ``data_seed``)."""
    num_numbers: int
    """Numbers per task."""
    max_number: int
    """Numbers are drawn from ``[1, max_number]``."""
    max_target: int
    """Targets are in ``[1, max_target]``."""
    ops: tuple[str, ...]
    """Operators the generated solution may use."""
    use_all: bool
    """The rule of every task."""

    @property
    def name(self) -> str:
        """``countdown-synthetic-<seed>``."""
        return f"countdown-{SYNTHETIC}-{self.seed}"

    def __len__(self) -> int:
        return SYNTHETIC_NUM_TASKS

    def __getitem__(self, index: int) -> CountdownTask:
        rng = random.Random(f"countdown:{self.seed}:{index}")
        for _ in range(_MAX_ATTEMPTS):
            numbers = [rng.randint(1, self.max_number) for _ in range(self.num_numbers)]
            value, text = _random_expression(rng, numbers, self.ops)
            if 1 <= value <= self.max_target:
                return CountdownTask(tuple(numbers), value, self.use_all, text)
        raise RuntimeError(  # pragma: no cover - parameters are validated to make this unlikely
            f"no task with a target in [1, {self.max_target}] after {_MAX_ATTEMPTS} draws"
        )


@dataclass(frozen=True, slots=True)
class FileTasks:
    """Tasks read from a file, in file order."""

    name: str
    """``<folder>/<file stem>``, e.g. ``countdown/game24_tot``."""
    tasks: tuple[CountdownTask, ...]
    """The records."""

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> CountdownTask:
        return self.tasks[index]


def build_task_source(
    dataset: str | Path,
    *,
    num_numbers: int = 3,
    max_number: int = 20,
    max_target: int = 100,
    ops: Sequence[str] = OPS,
    use_all: bool | None = None,
    data_seed: int = 0,
) -> TaskSource[CountdownTask]:
    """Make the source named by the env's ``dataset`` kwarg.

    Args:
        dataset: ``"synthetic"``, a Game of 24 ``.csv`` or a d1 Countdown ``.jsonl``.
        num_numbers: numbers per generated task.
        max_number: largest generated number.
        max_target: largest generated target.
        ops: operators of generated solutions.
        use_all: the rule; None keeps the data's (generated: at most once; files: exactly once).
        data_seed: seed of the generated stream (unused for files).

    Raises:
        ValueError: a bad parameter, or ``dataset`` is not ``"synthetic"`` or a readable file.
    """
    if dataset == SYNTHETIC:
        _check_generator(num_numbers, max_number, max_target, ops)
        rule = False if use_all is None else use_all
        return SyntheticTasks(data_seed, num_numbers, max_number, max_target, tuple(ops), rule)
    path = Path(dataset)
    if not path.is_file() or path.suffix not in (".csv", ".jsonl"):
        raise ValueError(
            f"dataset must be {SYNTHETIC!r}, a Game of 24 .csv or a Countdown .jsonl file, "
            f"got {dataset!r}"
        )
    stat = path.stat()
    tasks = _load_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if use_all is not None:
        tasks = tuple(CountdownTask(t.numbers, t.target, use_all) for t in tasks)
    return FileTasks(f"{path.resolve().parent.name}/{path.stem}", tasks)


def solve(numbers: Sequence[int], target: int, *, use_all: bool) -> str | None:
    """One expression over ``numbers`` equal to ``target``, or None when there is none.

    Exhaustive: combine any two values with ``+ - * /`` (both orders), recurse on the
    smaller multiset, and skip multisets of values already searched. Exact (Fractions).
    Fast for the sizes Countdown uses (up to 5 or 6 numbers); cached per task.

    Example:
        >>> solve([2, 3], 6, use_all=True), solve([2, 3, 9], 9, use_all=False)
        ('2*3', '9')
        >>> solve([1, 1], 5, use_all=True) is None
        True
    """
    return _solve(tuple(sorted(numbers)), target, use_all)


# ---- generation ----------------------------------------------------------------------

# An expression node: (value, text, precedence); leaves bind tightest.
_Node = tuple[Fraction, str, int]
_LEAF, _PRECEDENCE = 3, {"+": 1, "-": 1, "*": 2, "/": 2}


def _combine(left: _Node, op: str, right: _Node) -> _Node | None:
    """``left op right`` with minimal parentheses; None for a division by zero."""
    (a, a_text, a_prec), (b, b_text, b_prec) = left, right
    prec = _PRECEDENCE[op]
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op == "*":
        value = a * b
    elif b == 0:
        return None
    else:
        value = a / b
    if a_prec < prec:
        a_text = f"({a_text})"
    if b_prec < prec or (b_prec == prec and op in "-/"):
        b_text = f"({b_text})"
    return value, f"{a_text}{op}{b_text}", prec


def _random_expression(
    rng: random.Random, numbers: Sequence[int], ops: Sequence[str]
) -> tuple[int, str]:
    """Combine all ``numbers`` in a random order and shape, keeping positive integers.

    Each step picks two values, puts the larger first and picks an operator among
    ``ops`` whose result is a positive integer (``-`` of equal values and inexact
    ``/`` are skipped; ``+`` and ``*`` always qualify when given).
    """
    nodes: list[_Node] = [(Fraction(n), str(n), _LEAF) for n in numbers]
    while len(nodes) > 1:
        i, j = rng.sample(range(len(nodes)), 2)
        a, b = nodes[i], nodes[j]
        if a[0] < b[0]:
            a, b = b, a
        allowed = [
            op
            for op in ops
            if not (op == "-" and a[0] == b[0]) and not (op == "/" and a[0] % b[0] != 0)
        ]
        # "+" or "*" is always in ops (checked), so allowed is never empty.
        node = _combine(a, allowed[rng.randrange(len(allowed))], b)
        assert node is not None  # values stay positive integers: no division by zero
        nodes = [n for k, n in enumerate(nodes) if k not in (i, j)] + [node]
    value, text, _ = nodes[0]
    return int(value), text


def _check_generator(
    num_numbers: int, max_number: int, max_target: int, ops: Sequence[str]
) -> None:
    for name, value, low in (
        ("num_numbers", num_numbers, 1),
        ("max_number", max_number, 1),
        ("max_target", max_target, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if num_numbers > 6:
        raise ValueError(f"num_numbers must be <= 6 (the solver is exhaustive), got {num_numbers}")
    if isinstance(ops, str) or not isinstance(ops, Sequence) or not ops:
        raise ValueError(f"ops must be a non-empty list of operators, got {ops!r}")
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"ops has unknown operators {unknown}; valid: {list(OPS)}")
    if not set(ops) & {"+", "*"}:
        raise ValueError(f"ops must include '+' or '*' so that every draw can be combined: {ops}")


# ---- files ---------------------------------------------------------------------------


# Many envs are built per run (one per concurrent episode); parse each file once.
@functools.lru_cache(maxsize=8)
def _load_file(path: str, mtime_ns: int, size: int) -> tuple[CountdownTask, ...]:
    loader = _load_game24 if path.endswith(".csv") else _load_countdown_jsonl
    tasks = loader(Path(path))
    if not tasks:
        raise ValueError(f"{path} holds no tasks")
    return tuple(tasks)


def _load_game24(path: Path) -> list[CountdownTask]:
    tasks = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "Puzzles" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: a Game of 24 CSV needs a 'Puzzles' column")
        for line, row in enumerate(reader, start=2):
            numbers = _ints(row["Puzzles"].split(), path, line)
            tasks.append(CountdownTask(numbers, GAME24_TARGET, use_all=True))
    return tasks


def _load_countdown_jsonl(path: Path) -> list[CountdownTask]:
    tasks = []
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                numbers = _ints(str(record["input"]).split(","), path, line)
                target = int(record["output"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f'{path}:{line}: expected {{"input": "30,100,93", "output": "23"}} ({e})'
                ) from None
            tasks.append(CountdownTask(numbers, target, use_all=True))
    return tasks


def _ints(fields: Sequence[str], path: Path, line: int) -> tuple[int, ...]:
    try:
        numbers = tuple(int(x) for x in fields)
    except ValueError:
        raise ValueError(f"{path}:{line}: numbers must be integers, got {fields!r}") from None
    if not numbers:
        raise ValueError(f"{path}:{line}: no numbers")
    return numbers


# ---- solver --------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _solve(numbers: tuple[int, ...], target: int, use_all: bool) -> str | None:
    goal = Fraction(target)
    nodes = tuple((Fraction(n), str(n), _LEAF) for n in numbers)
    if not use_all or len(nodes) == 1:  # a single number may be the whole answer
        for value, text, _ in nodes:
            if value == goal:
                return text
    seen: set[tuple[Fraction, ...]] = set()

    def search(nodes: tuple[_Node, ...]) -> str | None:
        key = tuple(sorted(n[0] for n in nodes))
        if key in seen:
            return None
        seen.add(key)
        for i in range(len(nodes)):
            for j in range(i + 1, len(nodes)):
                rest = nodes[:i] + nodes[i + 1 : j] + nodes[j + 1 :]
                for left, op, right in _pairings(nodes[i], nodes[j]):
                    node = _combine(left, op, right)
                    if node is None:
                        continue
                    if node[0] == goal and (not use_all or not rest):
                        return node[1]
                    if rest and (found := search((*rest, node))) is not None:
                        return found
        return None

    return search(nodes)


def _pairings(a: _Node, b: _Node) -> tuple[tuple[_Node, str, _Node], ...]:
    return ((a, "+", b), (a, "*", b), (a, "-", b), (b, "-", a), (a, "/", b), (b, "/", a))


__all__ = [
    "GAME24_TARGET",
    "OPS",
    "SYNTHETIC",
    "SYNTHETIC_NUM_TASKS",
    "CountdownTask",
    "FileTasks",
    "SyntheticTasks",
    "TaskSource",
    "build_task_source",
    "solve",
]
