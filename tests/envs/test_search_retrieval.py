"""The search task's retrieval: corpus loading, the BM25 index, its on-disk cache."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from areal_env.envs.search.retrieval import BM25Retriever, Passage, Retriever, load_corpus

FACTS = [
    Passage(id="p0", title="Zorblat", text="Zorblat is the capital city of Quenmar."),
    Passage(id="p1", title="Flimton River", text="The Flimton flows through Dorvia to the sea."),
    Passage(id="p2", title="Quenmar", text="Quenmar is a kingdom ruled by Queen Adela."),
    Passage(id="p3", title="Dorvia", text="Dorvia exports copper and wool."),
]


def _write(path: Path, passages: list[Passage]) -> Path:
    lines = [json.dumps({"id": p.id, "title": p.title, "text": p.text}) for p in passages]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bm25_ranks_the_matching_passage_first_and_is_a_retriever():
    retriever = BM25Retriever(FACTS)
    assert isinstance(retriever, Retriever)
    assert [p.id for p in asyncio.run(retriever.search("capital of Quenmar", top_k=1))] == ["p0"]
    found = retriever.search_batch(["river through Dorvia", "who rules Quenmar"], top_k=2)
    assert found[0][0].id == "p1" and found[1][0].id == "p2"


def test_queries_without_known_words_find_nothing_and_top_k_is_checked():
    retriever = BM25Retriever(FACTS)
    assert retriever.search_batch(["xyzzy plugh", "the of"], top_k=3) == [[], []]
    assert len(retriever.search_batch(["Dorvia"], top_k=50)[0]) == 2  # only matching passages
    with pytest.raises(ValueError, match="top_k"):
        retriever.search_batch(["Dorvia"], top_k=0)


def test_index_is_cached_beside_the_corpus_and_reloaded(tmp_path, monkeypatch):
    corpus = _write(tmp_path / "corpus.jsonl", FACTS)
    first = BM25Retriever.from_file(corpus, progress=False)
    (cache,) = (tmp_path / ".bm25_cache").iterdir()
    assert (cache / "params.index.json").is_file()

    import bm25s

    def no_reindex(*args, **kwargs):
        raise AssertionError("a cached corpus was indexed again")

    monkeypatch.setattr(bm25s.BM25, "index", no_reindex)
    again = BM25Retriever.from_file(corpus, progress=False)
    queries = ["capital of Quenmar", "copper exports"]
    assert again.search_batch(queries) == first.search_batch(queries)
    # A changed corpus file gets a new cache folder (and so a new index).
    monkeypatch.undo()
    _write(corpus, [*FACTS, Passage(id="p4", title="Adela", text="Adela was born in Zorblat.")])
    BM25Retriever.from_file(corpus, progress=False)
    assert len(list((tmp_path / ".bm25_cache").iterdir())) == 2


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"id": "a", "title": "t", "text": "x"}\nnot json\n', r"corpus.jsonl:2: not valid JSON"),
        ('{"id": "a", "title": "t"}\n', r"corpus.jsonl:1: passage field 'text'"),
        ('{"id": 1, "title": "t", "text": "x"}\n', r"corpus.jsonl:1: passage field 'id'"),
        ('{"id": "a", "title": "t", "text": "x"}\n' * 2, r"corpus.jsonl:2: duplicate passage id"),
        ("\n\n", "holds no passage"),
        ('["a"]\n', "expected a JSON object"),
    ],
)
def test_bad_corpus_files_name_the_file_and_line(tmp_path, content, match):
    path = tmp_path / "corpus.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_corpus(path)


def test_missing_corpus_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_corpus(tmp_path / "nope.jsonl")


def test_bm25_finds_a_supporting_passage_for_most_hotpotqa_questions(shared_data, tmp_path):
    folder = shared_data / "hotpotqa_dev500"
    retriever = BM25Retriever.from_file(
        folder / "corpus.jsonl", cache_root=tmp_path, progress=False
    )
    qa = [json.loads(line) for line in (folder / "qa.jsonl").read_text().splitlines()]
    found = retriever.search_batch([q["question"] for q in qa], top_k=5)
    hits = [
        bool({p.id for p in passages} & set(q["supporting_passage_ids"]))
        for q, passages in zip(qa, found, strict=True)
    ]
    recall = sum(hits) / len(hits)
    assert recall > 0.7, f"recall@5 of a supporting passage: {recall:.2f}"


def test_a_read_only_corpus_folder_caches_under_the_home_folder(tmp_path, monkeypatch):
    from areal_env.envs.search import retrieval

    corpus = _write(tmp_path / "corpus.jsonl", FACTS)
    monkeypatch.setattr(retrieval.os, "access", lambda path, mode: False)  # root writes anywhere
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    BM25Retriever.from_file(corpus, progress=False)
    assert not (tmp_path / ".bm25_cache").exists()
    assert len(list((tmp_path / "home" / ".cache" / "areal-env" / "bm25").iterdir())) == 1
