"""BM25 retrieval speed: batched against one query at a time, and HTTP against embedded.

On a passages corpus and its questions (HotpotQA dev500 from ``../shared/data``
by default), four measurements, each the best of ``--repeats`` timed runs after
one untimed warm-up:

1. ``search_batch`` of all questions in one call, against one ``search_batch``
   call per question (the ratio is what batching buys the server);
2. ``--concurrency`` queries in flight at a time through ``HTTPRetriever`` to our
   ``RetrievalServer`` (in this process, on 127.0.0.1; the server batches what
   arrives together), against the same through the embedded retriever's
   ``search`` (a worker thread per query, what an env does in-process);
3. the same two one query at a time (the latency an episode sees per search; the
   difference is the HTTP round trip);
4. recall@k: questions with at least one (and with all) supporting passages in
   the top k.

Both sides of 2 and 3 must return the same passages; the benchmark checks that.

Usage::

    python benchmarks/retrieval.py
    python benchmarks/retrieval.py --corpus my_corpus.jsonl --qa my_qa.jsonl --concurrency 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from areal_env.envs.search.http_retriever import HTTPRetriever
from areal_env.envs.search.retrieval import BM25Retriever, Passage, load_corpus
from areal_env.envs.search.server import RetrievalServer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hotpotqa_dev500"


def best_of(repeats: int, run: Callable[[], object]) -> tuple[float, object]:
    run()  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


async def abest_of(repeats: int, run: Callable[[], Awaitable[object]]) -> tuple[float, object]:
    await run()  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = await run()
        best = min(best, time.perf_counter() - start)
    return best, out


async def bounded(
    search: Callable[[str], Awaitable[list[Passage]]], queries: list[str], concurrency: int
) -> list[list[Passage]]:
    gate = asyncio.Semaphore(concurrency)

    async def one(q: str) -> list[Passage]:
        async with gate:
            return await search(q)

    return list(await asyncio.gather(*(one(q) for q in queries)))


def rate(n: int, seconds: float) -> str:
    return f"{n} queries in {seconds:.3f} s = {n / seconds:,.0f} q/s"


async def http_vs_embedded(args: argparse.Namespace, bm25: BM25Retriever, questions: list[str]):
    k, n = args.top_k, len(questions)
    async with RetrievalServer(bm25, port=0) as server:
        client = HTTPRetriever(server.url, max_connections=args.concurrency)
        await client.check()

        async def embedded_concurrent():
            return await bounded(lambda q: bm25.search(q, top_k=k), questions, args.concurrency)

        async def http_concurrent():
            return await bounded(lambda q: client.search(q, top_k=k), questions, args.concurrency)

        async def embedded_sequential():
            return [await bm25.search(q, top_k=k) for q in questions]

        async def http_sequential():
            return [await client.search(q, top_k=k) for q in questions]

        t_emb, emb = await abest_of(args.repeats, embedded_concurrent)
        batches_before, queries_before = server.batches, server.queries
        t_http, got = await abest_of(args.repeats, http_concurrent)
        calls = server.batches - batches_before
        scored = server.queries - queries_before
        assert got == emb, "HTTP and embedded retrieval disagree"
        t_emb1, emb1 = await abest_of(args.repeats, embedded_sequential)
        t_http1, got1 = await abest_of(args.repeats, http_sequential)
        assert got1 == emb1, "HTTP and embedded retrieval disagree"
        await client.aclose()

    print(f"\n{args.concurrency} queries in flight at a time, {n} queries, top_k={k}:")
    print(f"  embedded BM25Retriever.search: {rate(n, t_emb)}")
    print(f"  HTTPRetriever -> RetrievalServer: {rate(n, t_http)}")
    print(
        f"  (server: {calls / (args.repeats + 1):.1f} search_batch calls per run, "
        f"{scored / calls:.1f} queries each)"
    )
    print(f"  ratio HTTP / embedded throughput: {t_emb / t_http:.2f}x")
    print(f"\none query at a time, {n} queries:")
    print(f"  embedded: {1000 * t_emb1 / n:.3f} ms/query ({rate(n, t_emb1)})")
    print(f"  HTTP:     {1000 * t_http1 / n:.3f} ms/query ({rate(n, t_http1)})")
    print(
        f"  HTTP overhead: +{1000 * (t_http1 - t_emb1) / n:.3f} ms/query, "
        f"ratio HTTP / embedded latency: {t_http1 / t_emb1:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DATA / "corpus.jsonl")
    parser.add_argument(
        "--qa", type=Path, default=None, help="questions JSONL (default: qa.jsonl beside corpus)"
    )
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    qa_path = args.qa or args.corpus.parent / "qa.jsonl"

    start = time.perf_counter()
    passages = load_corpus(args.corpus)
    bm25 = BM25Retriever(passages)  # in memory: the benchmark leaves no cache behind
    t_index = time.perf_counter() - start
    qa = [json.loads(line) for line in qa_path.read_text().splitlines() if line.strip()]
    questions = [q["question"] for q in qa]
    n, k = len(questions), args.top_k

    py = platform.python_version()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {py}")
    print(f"corpus: {args.corpus} ({len(passages)} passages, indexed in {t_index:.2f} s)")
    print(f"questions: {qa_path} ({n})")

    t_batch, batched = best_of(args.repeats, lambda: bm25.search_batch(questions, top_k=k))
    t_one, one = best_of(
        args.repeats, lambda: [bm25.search_batch([q], top_k=k)[0] for q in questions]
    )
    assert batched == one, "batched and one-at-a-time retrieval disagree"
    print(f"\nBM25 search_batch, top_k={k}:")
    print(f"  all {n} questions in one call: {rate(n, t_batch)}")
    print(f"  one call per question:          {rate(n, t_one)}")
    print(f"  ratio batched / one at a time: {t_one / t_batch:.2f}x")

    asyncio.run(http_vs_embedded(args, bm25, questions))

    if qa and "supporting_passage_ids" in qa[0]:
        any_hit = all_hit = 0
        for q, found in zip(qa, batched, strict=True):
            ids, gold = {p.id for p in found}, set(q["supporting_passage_ids"])
            any_hit += bool(ids & gold)
            all_hit += gold <= ids
        print(f"\nBM25 recall@{k} ({n} questions): a supporting passage in the top {k}: ", end="")
        print(f"{any_hit / n:.3f}; all of them: {all_hit / n:.3f}")


if __name__ == "__main__":
    main()
