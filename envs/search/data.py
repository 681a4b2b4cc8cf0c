"""Question sources for the search task: a QA JSONL file, or a synthetic corpus of facts.

A QA file holds one ``{"question": str, "answers": [str, ...]}`` object per line
(``supporting_passage_ids`` optional: the passages that answer it), the format of
HotpotQA/NQ exports used by Search-R1. The synthetic task invents entities and
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


def load_qa(path: str | Path) -> list[QATask]:
    """Read a QA JSONL file.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file and line of a malformed record, or an empty file.
    """
    tasks = [_parse_task(record, where) for where, record in read_jsonl_objects(path, "QA")]
    if not tasks:
        raise ValueError(f"QA file {path} holds no question")
    return tasks


def _parse_task(record: dict[str, Any], where: str) -> QATask:
    if not isinstance(record.get("question"), str):
        raise ValueError(f"{where}: a QA record needs a string 'question'")
    answers = record.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{where}: 'answers' must be a non-empty list of strings")
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
