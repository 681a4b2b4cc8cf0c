r"""Load GSM8K-format JSONL files into math tasks.

Each line is ``{"question": str, "answer": str}`` where ``answer`` is a worked
solution whose last line is ``#### <final number>``.

Example:
    >>> import json, pathlib, tempfile
    >>> line = {"question": "2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"}
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "tiny.jsonl")
    ...     _ = path.write_text(json.dumps(line) + "\n")
    ...     tasks = load_gsm8k_jsonl(path)
    >>> tasks[0].answer
    '4'
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from areal_env.rewards.math_verify import extract_gsm8k_answer


@dataclass(frozen=True, slots=True)
class MathTask:
    """A math word problem with its gold answer.

    Example:
        >>> MathTask("How many?", "72").solution
        ''
    """

    question: str
    """The problem statement."""
    answer: str
    """The final answer as a string, e.g. ``"72"`` (no thousands separators)."""
    solution: str = ""
    """The worked solution, when the data set has one."""


def read_jsonl_objects(path: str | Path, what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", record)`` for every non-blank line of a JSONL file of objects.

    Args:
        path: the ``.jsonl`` file.
        what: what the file holds, for the not-found message (``"GSM8K JSONL"``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line is not JSON or not an object; the message names file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def load_gsm8k_jsonl(path: str | Path) -> list[MathTask]:
    """Read every record of a GSM8K-format JSONL file; blank lines are skipped.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        One task per record, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line is not JSON, lacks ``question``/``answer`` strings, or
            its answer has no ``#### <number>`` line; the message names file and line.
    """
    return [
        _parse_record(record, where) for where, record in read_jsonl_objects(path, "GSM8K JSONL")
    ]


def _parse_record(record: dict[str, Any], where: str) -> MathTask:
    for key in ("question", "answer"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"{where}: field {key!r} must be a string")
    try:
        answer = extract_gsm8k_answer(record["answer"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    return MathTask(record["question"], answer, record["answer"])


__all__ = ["MathTask", "load_gsm8k_jsonl", "read_jsonl_objects"]
