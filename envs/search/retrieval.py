"""Retrieval for the search task: passages, the retriever protocol, an embedded BM25 index.

A search env asks a retriever for the top passages of a query. Retrievers sit
behind one small async protocol so that the embedded BM25 index (here) and a
remote retrieval server are interchangeable. The BM25 index uses ``bm25s``
(sparse-matrix BM25); it is built once per corpus file and cached on disk,
keyed by the corpus file's path, size and modification time, so later runs
load it instead of re-indexing.

Example:
    >>> import asyncio
    >>> corpus = [Passage(id="a", title="Zorblat", text="Zorblat is the capital of Quenmar."),
    ...           Passage(id="b", title="Flimton", text="Flimton is a river in Dorvia.")]
    >>> retriever = BM25Retriever(corpus)
    >>> [p.id for p in asyncio.run(retriever.search("capital of Quenmar", top_k=1))]
    ['a']
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from areal_env.data.jsonl import read_jsonl_objects

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True, frozen=True)
class Passage:
    """One retrievable passage of a corpus."""

    id: str
    """Stable id (e.g. ``p00001``), used to tell whether a gold passage was retrieved."""
    title: str
    """Title of the page or document the passage comes from."""
    text: str
    """The passage's text."""


@runtime_checkable
class Retriever(Protocol):
    """Top passages for a query; async because a retriever may be a server away."""

    async def search(self, query: str, *, top_k: int = 3) -> list[Passage]:
        """The ``top_k`` best passages for ``query``, best first."""
        ...

    async def aclose(self) -> None:
        """Release sessions or memory."""
        ...


def load_corpus(path: str | Path) -> list[Passage]:
    """Read a passages JSONL file (one ``{"id", "title", "text"}`` object per line).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file and line of a malformed record, a duplicate id,
            or an empty corpus.
    """
    path = Path(path)
    passages: list[Passage] = []
    seen: set[str] = set()
    for where, record in read_jsonl_objects(path, "corpus"):
        for key in ("id", "title", "text"):
            if not isinstance(record.get(key), str):
                raise ValueError(f"{where}: passage field {key!r} must be a string")
        if record["id"] in seen:
            raise ValueError(f"{where}: duplicate passage id {record['id']!r}")
        seen.add(record["id"])
        passages.append(Passage(id=record["id"], title=record["title"], text=record["text"]))
    if not passages:
        raise ValueError(f"corpus file {path} holds no passage")
    return passages


class BM25Retriever:
    """An in-process BM25 index over a list of passages (title and text are indexed).

    Args:
        passages: the corpus.
        cache_dir: where to save the index and load it from next time; None keeps
            it in memory only. The caller names a folder per corpus (see
            :meth:`from_file`, which does).
        progress: show a progress bar while indexing.
    """

    def __init__(
        self,
        passages: list[Passage],
        *,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        import bm25s  # imported here: `import areal_env` must stay light

        if not passages:
            raise ValueError("BM25Retriever needs at least one passage")
        self.passages = passages
        cache = None if cache_dir is None else Path(cache_dir)
        if cache is not None and (cache / "params.index.json").is_file():
            self._index = bm25s.BM25.load(str(cache), show_progress=False)
            return
        tokens = bm25s.tokenize(
            [f"{p.title}\n{p.text}" for p in passages], stopwords="en", show_progress=progress
        )
        self._index = bm25s.BM25()
        self._index.index(tokens, show_progress=progress)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            self._index.save(str(cache), show_progress=False)
            logger.info("BM25 index of %d passages saved to %s", len(passages), cache)

    @classmethod
    def from_file(
        cls, corpus: str | Path, *, cache_root: str | Path | None = None, progress: bool = True
    ) -> BM25Retriever:
        """Load a corpus JSONL and its cached index (built and saved on first use).

        Args:
            corpus: the passages JSONL.
            cache_root: parent of the per-corpus cache folders; default a
                ``.bm25_cache`` folder beside the corpus file, or
                ``~/.cache/areal-env/bm25`` when that folder cannot be written.
            progress: show a progress bar while indexing.
        """
        path = Path(corpus)
        passages = load_corpus(path)
        root = Path(cache_root) if cache_root is not None else _default_cache_root(path)
        return cls(passages, cache_dir=root / _corpus_key(path), progress=progress)

    def search_batch(self, queries: list[str], *, top_k: int = 3) -> list[list[Passage]]:
        """Top passages of several queries in one sparse-matrix pass (blocking)."""
        return [[p for p, _ in found] for found in self.search_batch_scored(queries, top_k=top_k)]

    def search_batch_scored(
        self, queries: list[str], *, top_k: int = 3
    ) -> list[list[tuple[Passage, float]]]:
        """Like :meth:`search_batch`, with each passage's BM25 score (only scores > 0)."""
        import bm25s

        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, len(self.passages))
        tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
        vocab = self._index.vocab_dict
        known = [[t for t in q if t in vocab] for q in tokens]
        results: list[list[tuple[Passage, float]]] = [[] for _ in queries]
        asked = [i for i, q in enumerate(known) if q]  # a query of unknown words finds nothing
        if asked:
            docs, scores = self._index.retrieve([known[i] for i in asked], k=k, show_progress=False)
            for row, i in enumerate(asked):
                results[i] = [
                    (self.passages[int(d)], float(s))
                    for d, s in zip(docs[row], scores[row], strict=True)
                    if s > 0
                ]
        return results

    async def search(self, query: str, *, top_k: int = 3) -> list[Passage]:
        """The ``top_k`` best passages for ``query`` (scored in a worker thread)."""
        return (await asyncio.to_thread(self.search_batch, [query], top_k=top_k))[0]

    async def aclose(self) -> None:
        """Nothing to release: the index is plain memory."""


def _default_cache_root(corpus: Path) -> Path:
    if os.access(corpus.parent, os.W_OK):
        return corpus.parent / ".bm25_cache"
    return Path.home() / ".cache" / "areal-env" / "bm25"  # a read-only data folder


def _corpus_key(path: Path) -> str:
    stat = path.resolve().stat()
    raw = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


__all__ = ["BM25Retriever", "Passage", "Retriever", "load_corpus"]
