r"""A retrieval server for a BM25 index, on the Search-R1 / ASearcher HTTP protocol.

Why a server when the index can be embedded: a corpus index held once serves
every rollout worker and trainer process of a run (and other runs), instead of
one copy per process, and Search-R1's and ASearcher's clients can use our
corpora unchanged. Routes:

- ``POST /retrieve`` with ``{"queries": [...], "topk": k, "return_scores": bool}``
  answers ``{"result": [[{"document": DOC, "score": S}, ...], ...]}`` (one list
  per query, best first; each item is ``DOC`` itself when ``return_scores`` is
  false), where ``DOC`` is ``{"id", "contents": "\"Title\"\ntext", "title", "text"}``
  (see :func:`~areal_env.envs.search.http_retriever.passage_to_document`) and
  ``S`` the BM25 score (null for a retriever without ``search_batch_scored``).
- ``GET /health``: ``{"status": "ok", "passages": N}``.

Queries are batched: BM25 scores many queries in one sparse-matrix pass far
faster than one by one, so requests that arrive while a batch is being scored
wait and are scored together, in one ``search_batch`` call in a worker thread
(the event loop keeps accepting requests meanwhile). A lone request is scored at
once: batching adds no wait when the server is idle.

Run it::

    python -m areal_env.envs.search.server --corpus corpus.jsonl --port 8000

or in-process (tests, benchmarks)::

    async with RetrievalServer(BM25Retriever(passages), port=0) as server:
        retriever = HTTPRetriever(server.url)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from areal_env.envs.search.http_retriever import passage_to_document
from areal_env.envs.search.retrieval import BM25Retriever, Passage
from areal_env.http_service import HTTPService

logger = logging.getLogger(__name__)


class BatchRetriever(Protocol):
    """What the server scores with: a blocking batched search, like BM25Retriever's."""

    def search_batch(self, queries: list[str], *, top_k: int = 3) -> list[list[Passage]]:
        """The top passages of each query, best first (blocking; run in a worker thread)."""
        ...


Scored = list[tuple[Passage, float | None]]
"""One query's passages, best first, each with its score (None when not known)."""


class _ShuttingDown(Exception):
    """Set on the queries still waiting when the server stops."""


@dataclass(slots=True)
class _Job:
    queries: list[str]
    top_k: int
    future: asyncio.Future[list[Scored]] = field(repr=False)


class RetrievalServer(HTTPService):
    """Serves a retriever's ``search_batch`` on the Search-R1 ``/retrieve`` route.

    Args:
        retriever: scores the queries; ``search_batch`` runs in a worker thread,
            one call at a time.
        host: interface to listen on.
        port: TCP port; 0 picks a free one (read :attr:`url` after :meth:`start`).
        default_top_k: passages per query when a request sends no ``topk``
            (Search-R1's servers fall back to their configured top-k likewise).
        max_batch: most queries scored in one ``search_batch`` call, to bound its
            memory; a request is never split, so one bigger request is scored alone.
    """

    service_name = "retrieval server"  # stopping fails waiting queries (HTTP 503)

    def __init__(
        self,
        retriever: BatchRetriever,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default_top_k: int = 3,
        max_batch: int = 1024,
    ) -> None:
        if default_top_k < 1 or max_batch < 1:
            raise ValueError("default_top_k and max_batch must be >= 1")
        self.retriever = retriever
        super().__init__(host=host, port=port)
        self.default_top_k = default_top_k
        self.max_batch = max_batch
        self.batches = 0
        """``search_batch`` calls made so far."""
        self.queries = 0
        """Queries scored so far."""
        self._pending: list[_Job] = []
        self._worker: asyncio.Task[None] | None = None

    @property
    def pending_queries(self) -> int:
        """Queries waiting for the next batch (not counting the one being scored)."""
        return sum(len(job.queries) for job in self._pending)

    def make_app(self) -> web.Application:
        """The aiohttp application (routes and shutdown hook), for a runner of one's own."""
        app = web.Application(client_max_size=16 * 1024**2)
        app.router.add_post("/retrieve", self._handle_retrieve)
        app.router.add_get("/health", self._handle_health)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def retrieve(self, queries: list[str], top_k: int) -> list[list[Passage]]:
        """Score ``queries`` in the next batch and return their passages.

        Public so that in-process callers share the batching too.
        """
        return [[p for p, _ in found] for found in await self.retrieve_scored(queries, top_k)]

    async def retrieve_scored(self, queries: list[str], top_k: int) -> list[Scored]:
        """Like :meth:`retrieve`, with scores: what the ``/retrieve`` handler awaits."""
        future: asyncio.Future[list[Scored]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(list(queries), top_k, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        # Runs while there is work: every pass takes all jobs queued so far (they
        # arrived while the previous batch was scored) and scores them together.
        batch: list[_Job] = []
        try:
            while self._pending:
                batch = self._take_batch()
                by_top_k: dict[int, list[_Job]] = {}
                for job in batch:
                    by_top_k.setdefault(job.top_k, []).append(job)
                for top_k, jobs in by_top_k.items():  # one call per top_k: exact results
                    await self._score(jobs, top_k)
                batch = []
        finally:  # cancelled by shutdown: no request may wait forever
            for job in [*batch, *self._pending]:
                if not job.future.done():
                    job.future.set_exception(_ShuttingDown("the retrieval server is stopping"))
            self._pending.clear()

    def _take_batch(self) -> list[_Job]:
        taken, size = 0, 0
        for job in self._pending:
            if taken and size + len(job.queries) > self.max_batch:
                break
            taken += 1
            size += len(job.queries)
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    async def _score(self, jobs: list[_Job], top_k: int) -> None:
        queries = [q for job in jobs for q in job.queries]
        self.batches += 1
        self.queries += len(queries)
        try:
            found = await asyncio.to_thread(self._search, queries, top_k)
            if len(found) != len(queries):
                raise RuntimeError(f"search_batch gave {len(found)} results for {len(queries)}")
        except Exception as e:
            logger.exception("retrieval of %d queries failed", len(queries))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        start = 0
        for job in jobs:
            if not job.future.done():  # a client that went away leaves a cancelled future
                job.future.set_result(found[start : start + len(job.queries)])
            start += len(job.queries)

    def _search(self, queries: list[str], top_k: int) -> list[Scored]:
        scored = getattr(self.retriever, "search_batch_scored", None)
        if scored is not None:
            return [list(found) for found in scored(queries, top_k=top_k)]
        return [
            [(p, None) for p in found]
            for found in self.retriever.search_batch(queries, top_k=top_k)
        ]

    async def _handle_retrieve(self, request: web.Request) -> web.Response:
        try:
            queries, top_k, with_scores = self._parse_request(await request.json())
        except ValueError as e:  # json.JSONDecodeError is one
            return web.json_response({"error": f"bad request: {e}"}, status=400)
        try:
            found = await self.retrieve_scored(queries, top_k) if queries else []
        except _ShuttingDown as e:
            return web.json_response({"error": str(e)}, status=503)
        except Exception as e:
            return web.json_response({"error": f"retrieval failed: {e!r}"}, status=500)
        result = [
            [
                {"document": passage_to_document(p), "score": score}
                if with_scores
                else passage_to_document(p)
                for p, score in passages
            ]
            for passages in found
        ]
        return web.json_response({"result": result})

    def _parse_request(self, body: Any) -> tuple[list[str], int, bool]:
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        queries = body.get("queries")
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise ValueError("'queries' must be a list of strings")
        top_k = body.get("topk")
        if top_k is None or top_k == 0:  # Search-R1 falls back on a missing or zero topk
            top_k = self.default_top_k
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"'topk' must be a positive integer, got {top_k!r}")
        return queries, top_k, bool(body.get("return_scores", False))

    async def _handle_health(self, request: web.Request) -> web.Response:
        passages = getattr(self.retriever, "passages", None)
        count = len(passages) if isinstance(passages, Sequence) else None
        return web.json_response({"status": "ok", "passages": count})

    async def _on_shutdown(self, app: web.Application) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker


async def _serve_until_signalled(server: RetrievalServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        # Printed (not only logged) so that a parent process started with --port 0
        # can read the address from the first line of stdout.
        print(f"retrieval server listening on {server.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """The command line: load (or build and cache) a corpus's BM25 index and serve it."""
    parser = argparse.ArgumentParser(
        prog="python -m areal_env.envs.search.server",
        description="Serve a passages JSONL corpus with BM25 on the Search-R1 /retrieve "
        "protocol (POST /retrieve, GET /health).",
    )
    parser.add_argument("--corpus", required=True, type=Path, help="passages JSONL file")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--cache-root",
        type=Path,
        default=None,
        help="parent folder of the index caches (default: .bm25_cache beside the corpus)",
    )
    parser.add_argument(
        "--topk", type=int, default=3, help="passages per query when a request sends no topk"
    )
    parser.add_argument(
        "--max-batch", type=int, default=1024, help="most queries scored in one pass"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    retriever = BM25Retriever.from_file(args.corpus, cache_root=args.cache_root, progress=False)
    logger.info("loaded %d passages from %s", len(retriever.passages), args.corpus)
    server = RetrievalServer(
        retriever,
        host=args.host,
        port=args.port,
        default_top_k=args.topk,
        max_batch=args.max_batch,
    )
    asyncio.run(_serve_until_signalled(server))


__all__ = ["BatchRetriever", "RetrievalServer", "main"]

if __name__ == "__main__":
    main()
