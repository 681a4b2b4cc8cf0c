"""Question sources for the search task: a QA JSONL file, or a synthetic corpus of facts.

A QA file holds one ``{"question": str, "answers": [str, ...]}`` object per line
(``supporting_passage_ids`` optional: the passages that answer it), the format of
HotpotQA/NQ exports used by Search-R1. A Hugging Face dataset (hub id or a local
folder) with a ``question`` column and the answers in ``answers``,
``golden_answers`` or ``answer`` works too. The synthetic task invents entities and
facts in code, so no download is needed and no question can be answered
without searching: the names exist nowhere but in the generated corpus.

Example:
    >>> task = SyntheticFacts(num_entities=50, seed=0)
    >>> q = task.questions[0]
    >>> q.answers[0] in " ".join(p.text for p in task.passages)
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from areal_env.data.hf import read_hf_records
from areal_env.data.jsonl import read_jsonl_objects
from areal_env.envs.search.retrieval import Passage

SYNTHETIC = "synthetic"
"""The ``dataset`` value that selects the generated task."""

RELATIONS = (
    ("capital", "The capital of {e} is {v}.", "What is the capital of {e}?"),
    ("river", "The main river of {e} is the {v}.", "What is the main river of {e}?"),
    ("founder", "{e} was founded by {v}.", "Who founded {e}?"),
)
"""(relation, fact template, question template) of the synthetic task."""

_SYLLABLES = (
    "zor", "bla", "quen", "mar", "dor", "via", "fli", "mton", "ka", "rel", "tu", "nis",
    "bo", "gri", "lan", "pes", "sha", "vek", "wu", "xan", "yol", "eth", "ib", "om",
)  # fmt: skip
MAX_ENTITIES = 5000
"""Most entities the synthetic task invents: names are 2-3 of 24 syllables (14,400
spellings), and drawing many more than a third of them would mostly draw repeats."""


@dataclass(kw_only=True, slots=True, frozen=True)
class QATask:
    """One question with its gold answers."""

    question: str
    """The question as the user asks it."""
    answers: tuple[str, ...]
    """Accepted answers (any one scores)."""
    supporting_ids: tuple[str, ...] = ()
    """Ids of the passages that answer it, when known."""
    query: str = ""
    """A search query that finds a supporting passage (for demonstrations); empty: the
    question itself."""


ANSWER_KEYS = ("answers", "golden_answers", "answer")
"""Where a record's gold answers may sit, in order: our files and Search-R1's
(``golden_answers``) hold a list; HotpotQA on the hub one string (``answer``);
SQuAD-style data a ``{"text": [...]}`` object."""


def load_qa(path: str | Path, *, split: str = "train") -> list[QATask]:
    """Read a QA JSONL file, or a Hugging Face dataset (hub id or local folder).

    ``path`` is read as JSONL when it is a file or ends in ``.jsonl``; anything
    else is handed to the ``datasets`` library (``split`` chooses the split).

    Raises:
        FileNotFoundError: when a JSONL ``path`` does not exist.
        ValueError: naming the file and line (or dataset row) of a malformed record,
            or an empty source.
    """
    if Path(path).is_file() or str(path).endswith((".jsonl", ".json")):
        records = read_jsonl_objects(path, "QA")
    else:
        records = read_hf_records(str(path), split=split, what="QA")
    tasks = [_parse_task(record, where) for where, record in records]
    if not tasks:
        raise ValueError(f"QA data {path} holds no question")
    return tasks


def _answers(record: dict[str, Any]) -> Any:
    for key in ANSWER_KEYS:
        if key in record:
            value = record[key]
            if isinstance(value, dict):  # SQuAD: {"text": [...], "answer_start": [...]}
                value = value.get("text")
            return [value] if isinstance(value, str) else value
    return None


def _parse_task(record: dict[str, Any], where: str) -> QATask:
    if not isinstance(record.get("question"), str):
        raise ValueError(f"{where}: a QA record needs a string 'question'")
    answers = _answers(record)
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(
            f"{where}: the gold answers (one of {list(ANSWER_KEYS)}) must be a string or a "
            f"non-empty list of strings; the record has keys {sorted(record)}"
        )
    support = record.get("supporting_passage_ids", [])
    if not isinstance(support, list) or not all(isinstance(s, str) for s in support):
        raise ValueError(f"{where}: 'supporting_passage_ids' must be a list of strings")
    return QATask(
        question=record["question"], answers=tuple(answers), supporting_ids=tuple(support)
    )


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


@dataclass(kw_only=True, slots=True)
class SyntheticFacts:
    """Invented entities, one fact passage per (entity, relation), and their questions.

    Args:
        num_entities: entities to invent; each gets one fact per relation.
        seed: seeds the names, so a task is the same on every machine.
        relations: how many of ``RELATIONS`` to use (1 is the easiest task).
    """

    num_entities: int = 100
    seed: int = 0
    relations: int = 1
    passages: list[Passage] = field(init=False)
    questions: list[QATask] = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.num_entities <= MAX_ENTITIES:
            raise ValueError(
                f"num_entities must be in [1, {MAX_ENTITIES}], got {self.num_entities}"
            )
        if not 1 <= self.relations <= len(RELATIONS):
            raise ValueError(f"relations must be in [1, {len(RELATIONS)}], got {self.relations}")
        rng = random.Random(self.seed)
        entities: dict[str, None] = {}  # insertion-ordered set
        while len(entities) < self.num_entities:
            entities.setdefault(_name(rng))
        self.passages, self.questions = [], []
        for i, entity in enumerate(entities):
            for relation, fact, question in RELATIONS[: self.relations]:
                value = _name(rng)
                pid = f"f{i:05d}-{relation}"
                self.passages.append(
                    Passage(id=pid, title=entity, text=fact.format(e=entity, v=value))
                )
                self.questions.append(
                    QATask(
                        question=question.format(e=entity),
                        answers=(value,),
                        supporting_ids=(pid,),
                        query=entity,
                    )
                )
