"""Task sources: generated arithmetic and GSM8K-format JSONL files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from areal_env.data.jsonl import MathTask, load_gsm8k_jsonl
from areal_env.data.synthetic import ArithmeticTask, arithmetic_task

QUESTION = re.compile(r"(\d+)([-+*])(\d+)=")


def test_arithmetic_is_deterministic_and_pinned() -> None:
    # Pinned values: a change here silently changes every synthetic run.
    assert [arithmetic_task(i, seed=0) for i in range(3)] == [
        ArithmeticTask("32-15=", 17),
        ArithmeticTask("98+49=", 147),
        ArithmeticTask("52-21=", 31),
    ]
    assert arithmetic_task(5, seed=7, max_operand=9, ops=("*",)) == ArithmeticTask("1*2=", 2)


def test_seeds_name_different_streams() -> None:
    stream_0 = [arithmetic_task(i, seed=0) for i in range(20)]
    stream_1 = [arithmetic_task(i, seed=1) for i in range(20)]
    assert stream_0 != stream_1
    assert stream_0 == [arithmetic_task(i, seed=0) for i in range(20)]


@pytest.mark.parametrize("ops", [("+",), ("-",), ("*",), ("+", "-", "*")])
def test_answers_are_right_and_never_negative(ops: tuple[str, ...]) -> None:
    seen_ops = set()
    for index in range(500):
        task = arithmetic_task(index, seed=3, max_operand=20, ops=ops)
        a, op, b = QUESTION.fullmatch(task.question).groups()
        a, b = int(a), int(b)
        assert 0 <= a <= 20 and 0 <= b <= 20
        assert task.answer == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert task.answer >= 0
        seen_ops.add(op)
    assert seen_ops == set(ops)


def test_wordier_template() -> None:
    task = arithmetic_task(0, seed=0, template="What is {a} {op} {b}?")
    assert task.question == "What is 32 - 15?"
    assert task.answer == 17


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"index": -1}, "index"),
        ({"max_operand": 0}, "max_operand"),
        ({"ops": ("/",)}, "ops"),
        ({"ops": "+-"}, "ops"),
    ],
)
def test_arithmetic_rejects_bad_params(kwargs: dict, name: str) -> None:
    args = {"index": 0, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        arithmetic_task(args.pop("index"), **args)


def test_load_gsm8k_test_split(shared_data: Path) -> None:
    tasks = load_gsm8k_jsonl(shared_data / "gsm8k" / "test.jsonl")
    assert len(tasks) == 1319
    assert tasks[1] == MathTask(
        "A robe takes 2 bolts of blue fiber and half that much white fiber.  "
        "How many bolts in total does it take?",
        "3",
        "It takes 2/2=<<2/2=1>>1 bolt of white fiber\n"
        "So the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric\n#### 3",
    )
    assert all(re.fullmatch(r"-?\d+", t.answer) for t in tasks)


def test_load_gsm8k_format_file(tiny_gsm8k: Path) -> None:
    # The checks above, on invented records in the same format: these run on a plain clone.
    tasks = load_gsm8k_jsonl(tiny_gsm8k)
    assert len(tasks) == 3
    assert tasks[1] == MathTask(
        "A shop sells 1,200 pens in May and twice as many in June. "
        "How many pens does it sell in the two months?",
        "3600",
        "In June it sells 1,200 * 2 = <<1200*2=2400>>2,400 pens.\n"
        "In all it sells 1,200 + 2,400 = <<1200+2400=3600>>3,600 pens.\n#### 3,600",
    )
    assert tasks[0].question.startswith("Ann\u2019s hens")
    assert [t.answer for t in tasks] == ["30", "3600", "-3"]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = _write(tmp_path / "ok.jsonl", [GOOD, "", "   ", GOOD])
    assert load_gsm8k_jsonl(path) == [MathTask("1+1?", "2", "1+1=2\n#### 2")] * 2


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_gsm8k_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"question": "q"}), "'answer' must be a string"),
        (json.dumps({"question": 3, "answer": "#### 3"}), "'question' must be a string"),
        (json.dumps({"question": "q", "answer": "no final line"}), "####"),
    ],
    ids=["json", "not-object", "no-answer", "question-type", "no-marker"],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, match: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [GOOD, bad_line, GOOD])
    with pytest.raises(ValueError, match=match) as excinfo:
        load_gsm8k_jsonl(path)
    assert "bad.jsonl:2:" in str(excinfo.value)
