r"""A retriever that asks a retrieval server over HTTP (the Search-R1 / ASearcher protocol).

Search-R1 and ASearcher serve their dense (e5 + FAISS) and BM25 (pyserini)
indexes behind one small HTTP route, so a run can reuse a server someone
already started, on another machine or GPU, instead of loading the index into
every trainer process. :class:`HTTPRetriever` speaks that route and turns its
documents back into :class:`~areal_env.envs.search.retrieval.Passage`; our own
server (``server.py``) speaks it too, so either side can be swapped.

The protocol (``search_r1/search/retrieval_server.py`` in Search-R1,
``tools/local_retrieval_server.py`` in ASearcher)::

    POST {url}/retrieve
    {"queries": ["q1", "q2"], "topk": 3, "return_scores": true}
    -> {"result": [[{"document": DOC, "score": 12.3}, ...], [...]]}   # one list per query
    # with "return_scores": false each item is DOC itself

where ``DOC`` is a corpus row: ``{"id": "42", "contents": "\"Title\"\ntext"}`` for
the dense index (the title, in quotes, is the first line of ``contents``), or
``{"title", "text", "contents"}`` without an id from pyserini's BM25.

A failed call (server unreachable, HTTP error, a body that is not that shape)
raises :class:`RetrieverError`, an :class:`~areal_env.errors.EpisodeError`: the
episode fails and is counted, the run goes on. Call :meth:`HTTPRetriever.check`
at start-up to fail fast instead when the server is not there at all.

Example:
    >>> doc = {"id": "7", "contents": '"Zorblat"\nZorblat is a city.'}
    >>> document_to_passage(doc)
    Passage(id='7', title='Zorblat', text='Zorblat is a city.')
    >>> passage_to_document(document_to_passage(doc))["contents"] == doc["contents"]
    True
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from areal_env.envs.search.retrieval import Passage
from areal_env.errors import EpisodeError

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
"""HTTP statuses worth another try: an overloaded or restarting server, a proxy hiccup."""


class RetrieverError(EpisodeError):
    """A retriever could not answer a query: unreachable, an HTTP error, a malformed reply.

    An episode error, not a crash: one search failing (a server restarting, a
    timeout under load) costs that episode, and the run counts it.
    """


def passage_to_document(passage: Passage) -> dict[str, str]:
    """The Search-R1 document of a passage.

    ``contents`` is the Search-R1 corpus form (``"Title"`` on the first line, the
    text after), which Search-R1's and ASearcher's clients read; ``title`` and
    ``text`` are sent as well, as pyserini's BM25 path does, so that a title
    holding a quote or a newline still comes back unchanged.
    """
    return {
        "id": passage.id,
        "contents": f'"{passage.title}"\n{passage.text}',
        "title": passage.title,
        "text": passage.text,
    }


def document_to_passage(doc: Any) -> Passage:
    """A passage from a Search-R1 document (see the module docstring for the shapes).

    ``title``/``text`` are taken when present, else parsed from ``contents``
    (first line, quotes stripped; the rest). A document without an id (pyserini's
    BM25 path sends none) gets its title as id, which is how HotpotQA names its
    supporting facts anyway.

    Raises:
        ValueError: when ``doc`` is not an object with ``contents`` or ``title`` and ``text``.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"a document must be a JSON object, got {type(doc).__name__}")
    title, text = doc.get("title"), doc.get("text")
    if not (isinstance(title, str) and isinstance(text, str)):
        contents = doc.get("contents")
        if not isinstance(contents, str):
            raise ValueError(f"a document needs 'contents' or 'title' and 'text': {doc!r:.200}")
        first, newline, rest = contents.partition("\n")
        title, text = (first.strip().strip('"'), rest) if newline else ("", contents)
    doc_id = doc.get("id", doc.get("docid"))
    if doc_id is None:
        doc_id = title
    elif not isinstance(doc_id, (str, int)):
        raise ValueError(f"a document id must be a string or an integer: {doc_id!r:.100}")
    return Passage(id=str(doc_id), title=title, text=text)


def _parse_result(body: Any, n_queries: int, top_k: int) -> list[list[Passage]]:
    if not isinstance(body, dict) or not isinstance(body.get("result"), list):
        raise ValueError(f'expected {{"result": [...]}}, got {body!r:.200}')
    result = body["result"]
    if len(result) != n_queries:
        raise ValueError(f"{len(result)} result lists for {n_queries} queries")
    out: list[list[Passage]] = []
    for hits in result:
        if not isinstance(hits, list):
            raise ValueError(f"a query's result must be a list, got {hits!r:.200}")
        passages = []
        for item in hits[:top_k]:
            # With return_scores an item is {"document": DOC, "score": s}; without, DOC.
            scored = isinstance(item, dict) and isinstance(item.get("document"), dict)
            passages.append(document_to_passage(item["document"] if scored else item))
        out.append(passages)
    return out


class HTTPRetriever:
    """A :class:`~areal_env.envs.search.retrieval.Retriever` backed by a retrieval server.

    Safe to share between episodes and event loops: it keeps one
    ``aiohttp.ClientSession`` (a keep-alive connection pool) per event loop that
    uses it, made on first use, because a session works only on the loop that
    made it and envs driven through the sync API each run on a loop of their own.
    A loop's session is closed when that loop shuts down through ``asyncio.run``
    or ``asyncio.Runner`` (as the envs' sync API does), or by :meth:`aclose`; a
    loop closed bare, without that shutdown, leaves its connections unclosed.

    Args:
        url: the server's base URL (``http://host:port``); a trailing ``/retrieve``
            is accepted too.
        timeout_s: limit for one request, connecting included.
        connect_timeout_s: limit for connecting, so that a dead host fails fast.
        retries: further tries after a connection error, a timeout or an HTTP
            429/502/503/504 (the server restarting or overloaded), not after an
            answer that is malformed; then :class:`RetrieverError`.
        retry_delay_s: wait before the first retry, doubled for each next one.
        max_connections: connections open at once per event loop; more
            concurrent searches wait for one.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        retries: int = 2,
        retry_delay_s: float = 0.5,
        max_connections: int = 64,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        base = url.rstrip("/")
        base = base.removesuffix("/retrieve")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"retriever url must start with http:// or https://, got {url!r}")
        self.url = base
        """The server's base URL, without a trailing ``/retrieve``."""
        self.retrieve_url = f"{base}/retrieve"
        """The route every search is posted to, named in errors."""
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._retries = retries
        self._retry_delay_s = retry_delay_s
        self._max_connections = max_connections
        self._sessions: dict[
            asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]
        ] = {}

    async def search(self, query: str, *, top_k: int = 3) -> list[Passage]:
        """The ``top_k`` best passages for ``query``, best first.

        Raises:
            RetrieverError: naming the URL and the cause, when the server cannot answer.
            ValueError: when ``top_k`` < 1.
        """
        return (await self.search_many([query], top_k=top_k))[0]

    async def search_many(self, queries: list[str], *, top_k: int = 3) -> list[list[Passage]]:
        """The top passages of several queries in one request (one list per query).

        Raises:
            RetrieverError: naming the URL and the cause, when the server cannot answer.
            ValueError: when ``top_k`` < 1.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not queries:
            return []
        payload = {"queries": list(queries), "topk": top_k, "return_scores": True}
        body = await self._post(payload)
        try:
            return _parse_result(body, len(queries), top_k)
        except ValueError as e:
            raise RetrieverError(f"retrieval server {self.retrieve_url}: bad reply: {e}") from e

    async def check(self) -> None:
        """Fail fast when the server is unreachable or does not speak the protocol.

        One real search of one passage, with no retry: Search-R1's servers have no
        health route, and a search also proves the reply's shape. Call it at
        start-up so that a wrong URL stops the run with a clear message instead of
        failing every episode.

        Raises:
            RetrieverError: naming the URL and the cause.
        """
        body = await self._post({"queries": ["health check"], "topk": 1, "return_scores": True}, 0)
        try:
            _parse_result(body, 1, 1)
        except ValueError as e:
            raise RetrieverError(f"retrieval server {self.retrieve_url}: bad reply: {e}") from e

    async def aclose(self) -> None:
        """Close the sessions; the retriever opens a new one if used again.

        The current loop's session is closed and awaited; one on another loop that
        is still running is closed on that loop; one whose loop is closed already
        was closed when that loop shut down (see :meth:`_session`).
        """
        sessions, self._sessions = self._sessions, {}
        current = _running_loop()
        for loop, (session, keeper) in sessions.items():
            if loop is current:
                await keeper.aclose()
            elif not loop.is_closed() and loop.is_running():
                asyncio.run_coroutine_threadsafe(keeper.aclose(), loop)
            else:
                session.detach()  # a loop closed without shutdown: nothing can be awaited

    async def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        for other in [lp for lp in self._sessions if lp.is_closed()]:
            self._sessions.pop(other)[0].detach()  # closed at that loop's shutdown, if it had one
        entry = self._sessions.get(loop)
        if entry is not None and not entry[0].closed:
            return entry[0]
        session = aiohttp.ClientSession(
            timeout=self._timeout, connector=aiohttp.TCPConnector(limit=self._max_connections)
        )
        # An async generator started on this loop is finalised by the loop's
        # shutdown (asyncio.run and asyncio.Runner call shutdown_asyncgens before
        # closing it), which closes the session there, on its own loop, with its
        # keep-alive connections: an env driven through the sync API runs on a
        # loop of its own and never calls our aclose on it.
        keeper = _close_at_loop_shutdown(session)
        self._sessions[loop] = (session, keeper)
        await keeper.__anext__()
        return session

    async def _post(self, payload: dict[str, Any], retries: int | None = None) -> Any:
        retries = self._retries if retries is None else retries
        delay = self._retry_delay_s
        for attempt in range(retries + 1):
            try:
                return await self._post_once(payload)
            except _Retryable as e:
                if attempt == retries:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise RetrieverError(
                        f"retrieval server {self.retrieve_url}: {e}{tries}"
                    ) from e.__cause__
                logger.warning("retrieval server %s: %s; retrying", self.retrieve_url, e)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post_once(self, payload: dict[str, Any]) -> Any:
        try:
            session = await self._session()
            async with session.post(self.retrieve_url, json=payload) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as e:  # aiohttp's timeouts subclass it
            raise _Retryable(f"no reply within the time limit ({e!r})") from e
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise _Retryable(f"cannot connect or read the reply ({e})") from e
        except aiohttp.ClientError as e:  # e.g. an invalid URL
            raise RetrieverError(f"retrieval server {self.retrieve_url}: {e!r}") from e
        text = raw.decode("utf-8", errors="replace")
        if status != 200:
            message = f"HTTP {status}: {text[:200]!r}"
            if status in _RETRYABLE_STATUS or status >= 500:
                raise _Retryable(message)
            raise RetrieverError(f"retrieval server {self.retrieve_url}: {message}")
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise RetrieverError(
                f"retrieval server {self.retrieve_url}: reply is not JSON ({e.msg}): {text[:200]!r}"
            ) from e

    def __repr__(self) -> str:
        return f"HTTPRetriever({self.url!r})"


class _Retryable(Exception):
    """A failure that another try may not have (raised and caught inside ``_post``)."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _close_at_loop_shutdown(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await session.close()


__all__ = ["HTTPRetriever", "RetrieverError", "document_to_passage", "passage_to_document"]
