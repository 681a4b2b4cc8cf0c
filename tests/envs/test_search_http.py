"""The search task over HTTP: our BM25 retrieval server and the HTTP retriever.

Servers run in-process on 127.0.0.1 with a port the OS picks (port 0); the
"foreign" servers (Search-R1 shapes, junk replies) are tiny aiohttp handlers.
"""

from __future__ import annotations

import asyncio
import doctest
import gc
import json
import subprocess
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from areal_env.envs.search import http_retriever
from areal_env.envs.search.http_retriever import HTTPRetriever, RetrieverError
from areal_env.envs.search.retrieval import BM25Retriever, Passage, Retriever, load_corpus
from areal_env.envs.search.server import RetrievalServer
from areal_env.errors import EpisodeError

REPO = Path(__file__).resolve().parents[2]

FACTS = [
    Passage(id="p0", title="Zorblat", text="Zorblat is the capital city of Quenmar."),
    Passage(id="p1", title="Flimton River", text="The Flimton flows through Dorvia to the sea."),
    Passage(id="p2", title="Quenmar", text="Quenmar is a kingdom ruled by Queen Adela."),
    Passage(id="p3", title="Dorvia", text="Dorvia exports copper and wool.\nIts capital is Brell."),
    Passage(id="p4", title="Adela", text="Queen Adela was born in Zorblat in 1901."),
    Passage(id="p5", title="Brell", text="Brell is a port city of Dorvia on the Flimton."),
]
QUERIES = [
    "capital of Quenmar",
    "river through Dorvia",
    "who rules Quenmar",
    "where was Adela born",
    "copper exports",
    "xyzzy plugh",  # no known word: nothing found
]


class CountingRetriever:
    """BM25 behind a counter of ``search_batch`` calls; optionally holds the first call.

    Holding the first call (until ``release`` is set) lets a test queue more
    requests behind it and see them scored together, by state, not by timing.
    """

    def __init__(self, inner: BM25Retriever, *, hold_first: bool = False) -> None:
        self.inner = inner
        self.passages = inner.passages
        self.calls: list[tuple[list[str], int]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def search_batch(self, queries: list[str], *, top_k: int = 3) -> list[list[Passage]]:
        self.calls.append((list(queries), top_k))
        if len(self.calls) == 1:
            self.first_started.set()
            assert self.release.wait(timeout=60), "the test never released the first batch"
        return self.inner.search_batch(queries, top_k=top_k)


@pytest.fixture
def bm25() -> BM25Retriever:
    return BM25Retriever(FACTS)


@pytest.fixture
async def served(bm25) -> AsyncIterator[tuple[RetrievalServer, HTTPRetriever]]:
    async with RetrievalServer(bm25, port=0) as server:
        client = HTTPRetriever(server.url, retries=0)
        yield server, client
        await client.aclose()


async def _start_app(handler: Callable, route: str = "/retrieve") -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", route, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def _wait_until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(5000):  # a bound so that a broken server fails the test instead of hanging
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"never happened: {what}")


# --- our server and client together --------------------------------------------------------


async def test_http_retriever_returns_the_embedded_retrievers_passages(served, bm25):
    server, client = served
    assert isinstance(client, Retriever)
    for top_k in (1, 2, 3, 10):
        for query in QUERIES:
            assert await client.search(query, top_k=top_k) == await bm25.search(query, top_k=top_k)
    assert await client.search_many(QUERIES, top_k=2) == bm25.search_batch(QUERIES, top_k=2)
    assert await client.search_many([], top_k=2) == []
    # Titles and texts round-trip exactly, a newline inside the text included.
    (dorvia,) = await client.search("copper exports", top_k=1)
    assert dorvia == FACTS[3]


async def test_top_k_is_honoured_and_checked(served):
    _, client = served
    for top_k in (1, 2, 4):
        found = await client.search("Dorvia Flimton Quenmar Zorblat Adela Brell", top_k=top_k)
        assert len(found) == top_k
    with pytest.raises(ValueError, match="top_k"):
        await client.search("Dorvia", top_k=0)


async def test_concurrent_queries_are_scored_in_one_batch(bm25):
    counting = CountingRetriever(bm25, hold_first=True)
    async with RetrievalServer(counting, port=0) as server:
        client = HTTPRetriever(server.url, retries=0)
        try:
            first = asyncio.create_task(client.search(QUERIES[0], top_k=3))
            await asyncio.to_thread(counting.first_started.wait, 60)
            # While the first query is being scored, 4 more at top_k 3 and 2 at top_k 1.
            rest = [(q, 3) for q in QUERIES[1:5]] + [(q, 1) for q in QUERIES[4:6]]
            queued = asyncio.gather(*(client.search(q, top_k=k) for q, k in rest))
            await _wait_until(lambda: server.pending_queries == len(rest), "6 queries queued")
            assert len(counting.calls) == 1 and not first.done()
            counting.release.set()
            results = [await first, *await queued]
        finally:
            counting.release.set()
            await client.aclose()
    # One call for the first query, then one per top_k for the six that waited.
    assert sorted(counting.calls, key=lambda c: (len(c[0]), c[1])) == [
        ([QUERIES[0]], 3),
        (QUERIES[4:6], 1),
        (QUERIES[1:5], 3),
    ]
    assert server.batches == 3 and server.queries == 7
    assert results == [bm25.search_batch([q], top_k=k)[0] for q, k in [(QUERIES[0], 3), *rest]]


async def test_many_concurrent_clients_take_fewer_batches_than_queries(bm25):
    counting = CountingRetriever(bm25)
    queries = [f"{q} {i}" for i in range(8) for q in QUERIES[:5]]
    async with RetrievalServer(counting, port=0) as server:
        client = HTTPRetriever(server.url, retries=0)
        try:
            results = await asyncio.gather(*(client.search(q, top_k=2) for q in queries))
        finally:
            await client.aclose()
    assert results == bm25.search_batch(queries, top_k=2)
    assert sum(len(qs) for qs, _ in counting.calls) == len(queries)
    assert len(counting.calls) < len(queries), counting.calls


async def test_stopping_the_server_fails_waiting_queries_instead_of_hanging(bm25):
    counting = CountingRetriever(bm25, hold_first=True)
    server = RetrievalServer(counting, port=0)
    await server.start()
    client = HTTPRetriever(server.url, retries=0)
    try:
        first = asyncio.create_task(client.search("Quenmar"))
        await asyncio.to_thread(counting.first_started.wait, 60)
        waiting = asyncio.create_task(client.search("Dorvia"))
        await _wait_until(lambda: server.pending_queries == 1, "a query queued")
        await server.stop()
        for task in (first, waiting):
            with pytest.raises(RetrieverError, match="503|cannot connect"):
                await task
    finally:
        counting.release.set()
        await client.aclose()


async def test_hotpotqa_questions_get_the_same_passages_over_http(shared_data):
    folder = shared_data / "hotpotqa_dev500"
    bm25 = BM25Retriever(load_corpus(folder / "corpus.jsonl"))
    qa = [json.loads(line) for line in (folder / "qa.jsonl").read_text().splitlines()[:40]]
    questions = [q["question"] for q in qa]
    async with RetrievalServer(bm25, port=0) as server:
        client = HTTPRetriever(server.url)
        try:
            found = await asyncio.gather(*(client.search(q, top_k=5) for q in questions))
        finally:
            await client.aclose()
    assert found == bm25.search_batch(questions, top_k=5)


# --- our server's wire format (what Search-R1 / ASearcher clients read) --------------------


async def test_server_answers_in_the_search_r1_shape(served, bm25):
    server, _ = served
    async with aiohttp.ClientSession() as session:
        payload = {"queries": ["capital of Quenmar", "xyzzy"], "topk": 2, "return_scores": True}
        async with session.post(f"{server.url}/retrieve", json=payload) as resp:
            assert resp.status == 200
            body = await resp.json()
        (hits, none) = body["result"]
        assert none == []
        assert hits[0]["document"]["id"] == "p0"
        zorblat = '"Zorblat"\nZorblat is the capital city of Quenmar.'
        assert hits[0]["document"]["contents"] == zorblat
        # Real BM25 scores, best first, as the embedded index scores them.
        expected = bm25.search_batch_scored(["capital of Quenmar"], top_k=2)[0]
        assert [h["score"] for h in hits] == pytest.approx([sc for _, sc in expected])
        assert hits[0]["score"] >= hits[1]["score"] > 0
        # Search-R1's client: title = first line of contents, text = the rest.
        assert hits[0]["document"]["contents"].split("\n")[0] == '"Zorblat"'

        payload = {"queries": ["capital of Quenmar"], "return_scores": False}  # no topk: 3
        async with session.post(f"{server.url}/retrieve", json=payload) as resp:
            (items,) = (await resp.json())["result"]
        assert len(items) == 3 and items[0]["id"] == "p0" and "contents" in items[0]

        for bad in ({"queries": "one"}, {"queries": [1]}, {"queries": ["a"], "topk": -1}, [1]):
            async with session.post(f"{server.url}/retrieve", json=bad) as resp:
                assert resp.status == 400, bad
                assert "bad request" in (await resp.json())["error"]
        async with session.post(f"{server.url}/retrieve", data=b"{not json") as resp:
            assert resp.status == 400

        async with session.get(f"{server.url}/health") as resp:
            assert await resp.json() == {"status": "ok", "passages": len(FACTS)}


async def test_a_failing_index_gives_http_500_and_a_retriever_error():
    class Broken:
        def search_batch(self, queries, *, top_k=3):
            raise RuntimeError("index corrupted")

    async with RetrievalServer(Broken(), port=0) as server:
        client = HTTPRetriever(server.url, retries=0)
        try:
            with pytest.raises(RetrieverError, match="HTTP 500.*index corrupted"):
                await client.search("anything")
        finally:
            await client.aclose()


# --- the client against other servers ------------------------------------------------------


async def test_client_reads_search_r1_and_asearcher_replies():
    seen: list[dict] = []
    shapes = {
        # Search-R1 dense (e5 + FAISS) with scores: corpus rows {"id", "contents"}.
        "dense": lambda: [
            {"document": {"id": "12", "contents": '"Paris"\nParis is in France.'}, "score": 0.9},
            {"document": {"id": 7, "contents": '"Lyon"\nLyon.\nOn the Rhone.'}, "score": 0.5},
        ],
        # A server that ignores return_scores: bare documents.
        "bare": lambda: [{"id": "12", "contents": '"Paris"\nParis is in France.'}],
        # pyserini BM25: title/text/contents, no id.
        "pyserini": lambda: [
            {"document": {"title": "Paris", "text": "Paris.", "contents": '"Paris"\nParis.'}}
        ],
    }
    shape = "dense"

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"result": [shapes[shape]() for _ in seen[-1]["queries"]]})

    runner = await _start_app(handler)
    client = HTTPRetriever(_url(runner) + "/retrieve/", retries=0)  # either URL form works
    try:
        assert await client.search("capital of France", top_k=5) == [
            Passage(id="12", title="Paris", text="Paris is in France."),
            Passage(id="7", title="Lyon", text="Lyon.\nOn the Rhone."),
        ]
        assert seen[-1] == {"queries": ["capital of France"], "topk": 5, "return_scores": True}
        assert [p.id for p in await client.search("x", top_k=1)] == ["12"]  # cut to top_k
        shape = "bare"
        assert (
            await client.search_many(["a", "b"], top_k=3)
            == [[Passage(id="12", title="Paris", text="Paris is in France.")]] * 2
        )
        shape = "pyserini"
        assert await client.search("x") == [Passage(id="Paris", title="Paris", text="Paris.")]
        await client.check()
    finally:
        await client.aclose()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (200, "<html>oops</html>", "reply is not JSON"),
        (200, '{"results": []}', r'expected \{"result"'),
        (200, '{"result": [[], []]}', "2 result lists for 1 queries"),
        (200, '{"result": ["p1"]}', "a query's result must be a list"),
        (200, '{"result": [[{"document": {"id": "1"}, "score": 1}]]}', "needs 'contents'"),
        (200, '{"result": [[{"id": [1], "contents": "x"}]]}', "document id"),
        (500, "Internal Server Error", "HTTP 500"),
        (404, "Not Found", "HTTP 404"),
        (422, '{"detail": "field required"}', "HTTP 422"),
    ],
)
async def test_malformed_or_failed_replies_raise_a_retriever_error(status, body, match):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type="application/json")

    runner = await _start_app(handler)
    client = HTTPRetriever(_url(runner), retries=0)
    try:
        with pytest.raises(RetrieverError, match=match) as info:
            await client.search("anything")
        assert f"{_url(runner)}/retrieve" in str(info.value)
        assert isinstance(info.value, EpisodeError)  # an episode's failure, not the run's
        with pytest.raises(RetrieverError, match=match):
            await client.check()
    finally:
        await client.aclose()
        await runner.cleanup()


async def test_a_server_error_is_retried_and_a_bad_reply_is_not():
    calls: list[str] = []
    replies = [(503, "restarting"), (200, json.dumps({"result": [[{"id": "1", "contents": "x"}]]}))]

    async def handler(request: web.Request) -> web.Response:
        calls.append((await request.json())["queries"][0])
        status, text = replies[min(len(calls), len(replies)) - 1]
        return web.Response(status=status, text=text)

    runner = await _start_app(handler)
    client = HTTPRetriever(_url(runner), retries=2, retry_delay_s=0)
    try:
        assert await client.search("q") == [Passage(id="1", title="", text="x")]
        assert calls == ["q", "q"]
        replies[:] = [(200, "junk")]
        with pytest.raises(RetrieverError, match="not JSON"):
            await client.search("r")
        assert calls == ["q", "q", "r"]
        replies[:] = [(502, "bad gateway")]
        with pytest.raises(RetrieverError, match=r"HTTP 502.*after 3 tries"):
            await client.search("s")
        assert calls[3:] == ["s", "s", "s"]
    finally:
        await client.aclose()
        await runner.cleanup()


async def test_server_down_raises_a_retriever_error_naming_the_url(bm25):
    async with RetrievalServer(bm25, port=0) as server:
        url = server.url  # a port that was free, and is again once the server stops
    client = HTTPRetriever(url, retries=1, retry_delay_s=0)
    try:
        with pytest.raises(RetrieverError, match=rf"{url}/retrieve: cannot connect.*2 tries"):
            await client.search("Quenmar")
        with pytest.raises(RetrieverError, match=rf"{url}/retrieve: cannot connect"):
            await client.check()
    finally:
        await client.aclose()


def test_bad_urls_and_retries_are_refused_at_construction():
    with pytest.raises(ValueError, match="http://"):
        HTTPRetriever("localhost:8000")
    with pytest.raises(ValueError, match="retries"):
        HTTPRetriever("http://127.0.0.1:1", retries=-1)
    assert HTTPRetriever("http://h:1/retrieve").retrieve_url == "http://h:1/retrieve"


# --- event loops ---------------------------------------------------------------------------


def test_one_retriever_serves_several_event_loops_and_leaks_no_connection(bm25):
    """Envs driven through the sync API run on loops of their own, then close them."""
    ready, stop = threading.Event(), threading.Event()
    urls: list[str] = []

    def serve() -> None:
        async def main() -> None:
            async with RetrievalServer(bm25, port=0) as server:
                urls.append(server.url)
                ready.set()
                await asyncio.to_thread(stop.wait)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(timeout=60)
    try:
        client = HTTPRetriever(urls[0], retries=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for query in QUERIES[:3]:  # each asyncio.run is a new loop, closed after
                assert asyncio.run(client.search(query)) == bm25.search_batch([query])[0]
            asyncio.run(client.aclose())
            gc.collect()
        leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert not leaks, [str(w.message) for w in leaks]
    finally:
        stop.set()
        thread.join(timeout=60)


# --- command line and docs ------------------------------------------------------------------


def test_cli_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "areal_env.envs.search.server", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "--corpus" in out and "--port" in out and "--cache-root" in out


async def test_cli_serves_a_corpus_file(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(vars_of(p)) + "\n" for p in FACTS))
    log = (tmp_path / "server.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "areal_env.envs.search.server", "--corpus", str(corpus)],
        *["--port", "0", "--cache-root", str(tmp_path / "cache")],
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=120)).decode()
        assert "listening on http://127.0.0.1:" in line, (tmp_path / "server.log").read_text()
        client = HTTPRetriever(line.split()[-1], retries=0)
        try:
            await client.check()
            (best,) = await client.search("capital of Quenmar", top_k=1)
            assert best == FACTS[0]
        finally:
            await client.aclose()
        assert any((tmp_path / "cache").iterdir())  # --cache-root was used
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=60) == 0  # SIGTERM: a clean stop
        log.close()


def vars_of(p: Passage) -> dict[str, str]:
    return {"id": p.id, "title": p.title, "text": p.text}


def test_http_retriever_docstring_example_runs():
    assert doctest.testmod(http_retriever).failed == 0


async def test_a_retriever_without_scores_is_served_with_null_scores(bm25):
    async with RetrievalServer(CountingRetriever(bm25), port=0) as server:
        async with aiohttp.ClientSession() as session:
            payload = {"queries": ["capital of Quenmar"], "topk": 2, "return_scores": True}
            async with session.post(f"{server.url}/retrieve", json=payload) as resp:
                (hits,) = (await resp.json())["result"]
    assert [h["score"] for h in hits] == [None, None] and hits[0]["document"]["id"] == "p0"
