"""Per-episode sessions: a base URL and an API key whose every call lands in one Trajectory.

An agent we cannot change (a program that only takes ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY``, a framework's own model class) is trained by giving each
episode its own session. The adapter's side, in a few lines::

    session = server.sessions.open(client)          # client: the episode's EpisodeClient
    try:
        await run_agent(base_url=session.base_url, api_key=session.api_key)
    finally:
        trajectory = await session.close()          # = client.trajectory, now final
    reward = session.reward                         # if the agent posted one, else None

Every chat completion under the key runs through that episode's
:class:`~areal_env.inference.chat_client.EpisodeClient`, so it is recorded with
the same token-in/token-out rules and drift handling as our own agent's calls;
raw ``/v1/completions`` go to the session's
:class:`~areal_env.serving.completions.TextRecorder`, into the same trajectory.

Auth (:meth:`SessionManager.authorize`): no key or an unknown key is a 401; a
key on another session's routes is a 403; a closed session answers 410, which
the official client does not retry.

Retries (AReaL #1498): the official client retries a request that timed out
with the same body and ``x-stainless-retry-count: 1`` (2, ...), while the first
attempt may still be generating. Generating again would record the turn twice,
and the retry would start a second sample (the first attempt still holds the
sample), splitting the episode. So a session remembers its recent requests by
a fingerprint of route and body; a *retry* (``x-stainless-retry-count`` > 0) or
a request with an ``Idempotency-Key`` seen before gets the first attempt's
response, awaiting it if it is still running. A first attempt without those
headers always generates, even with a body seen before: an agent may well ask
the same thing twice to get two samples. A failed attempt is forgotten, so its
retry generates afresh. Generation runs in a task of the session, not of the
HTTP handler, so a client that hangs up does not cancel it; closing the session
cancels what is still running (those calls are not recorded).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from areal_env.inference.chat_client import ChatClient, EpisodeClient
from areal_env.serving.completions import TextRecorder
from areal_env.serving.errors import (
    APIError,
    bad_request,
    forbidden,
    session_closed,
    unauthorized,
)
from areal_env.types import Trajectory, new_id

logger = logging.getLogger(__name__)

T = TypeVar("T")

REMEMBERED_REQUESTS = 64
"""Requests per session whose responses are kept for retries (oldest forgotten first)."""

REMEMBERED_CLOSED = 65536
"""Closed sessions whose keys still answer 410 rather than 401 (oldest forgotten first)."""


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    task: asyncio.Future[Any]


class Session:
    """One episode's endpoint: ``base_url`` + ``api_key``, recording into ``episode``.

    Made by :meth:`SessionManager.open`. Usable as ``async with``, which closes it.
    """

    def __init__(
        self, manager: SessionManager, session_id: str, api_key: str, episode: EpisodeClient
    ) -> None:
        self.id = session_id
        """Appears in the routes: ``/sessions/<id>/v1/...``."""
        self.base_url = f"{manager.server_url()}/sessions/{session_id}/v1"
        """What the agent's OpenAI client takes as ``base_url`` (ends in ``/v1``)."""
        self.api_key = api_key
        """The bearer token of this session's routes, and of no other."""
        self.episode = episode
        """The per-episode chat client every chat completion of the session goes through."""
        self.text = TextRecorder(client=episode.shared, trajectory=episode.trajectory)
        """Runs and records the session's raw ``/v1/completions``."""
        self.reward: float | None = None
        """The reward the agent posted (``POST <base_url>/reward``); None if it did not."""
        self.reward_info: dict[str, Any] = {}
        """The ``info`` object posted with the reward."""
        self.requests = 0
        """Completions requests generated (a retry answered from the record is not one)."""
        self.replayed = 0
        """Retries matched to an earlier attempt, answered with its response (counted on
        arrival, while that attempt may still be running)."""
        self._manager = manager
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closed = False

    @property
    def trajectory(self) -> Trajectory:
        """The episode recorded so far (final once :meth:`close` returned)."""
        return self.episode.trajectory

    @property
    def in_flight(self) -> int:
        """Requests of this session generating now."""
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` started: every new call is refused with 410."""
        return self._closed

    def env_vars(self) -> dict[str, str]:
        """``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` for an agent program's environment."""
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.api_key}

    async def run(
        self,
        fingerprint: str,
        work: Callable[[], Awaitable[T]],
        *,
        retry: bool = False,
        idempotency_key: str | None = None,
    ) -> T:
        """Run one request's ``work`` in a task of the session, or replay its first attempt.

        Args:
            fingerprint: identifies the request (route and body).
            work: generates and records the completions.
            retry: the client says this is a retry (``x-stainless-retry-count`` > 0).
            idempotency_key: the ``Idempotency-Key`` header, if any.

        Raises:
            APIError: 410 when the session is closed (or closes while the work runs),
                400 when an idempotency key comes back with another body.
        """
        if self._closed:
            raise session_closed(self.id)
        key = f"key:{idempotency_key}" if idempotency_key else f"body:{fingerprint}"
        entry = self._entries.get(key) if (retry or idempotency_key) else None
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise bad_request(
                    f"Idempotency-Key {idempotency_key!r} was used before with another body",
                    code="idempotency_key_reused",
                )
            if not _failed(entry.task):  # a failed attempt is forgotten: generate afresh
                self.replayed += 1
                return await self._await(entry.task)
        task = asyncio.ensure_future(work())
        self._tasks.add(task)
        task.add_done_callback(self._done)
        self._entries[key] = _Entry(fingerprint, task)
        self._entries.move_to_end(key)
        while len(self._entries) > REMEMBERED_REQUESTS:
            self._entries.popitem(last=False)
        result = await self._await(task)
        self.requests += 1
        return result

    async def _await(self, task: asyncio.Future[T]) -> T:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self._closed:  # cancelled by close(), not our caller
                raise session_closed(self.id) from None
            raise

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not warn when nobody awaited it

    def post_reward(self, reward: Any, info: Any = None) -> None:
        """Record the reward the agent program posted for its own episode (the last one wins).

        Raises:
            APIError: 410 for a closed session, 400 for a reward that is not a finite number.
        """
        if self._closed:
            raise session_closed(self.id)
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or reward != reward:
            raise bad_request(f"reward must be a number, got {reward!r}", param="reward")
        if reward in (float("inf"), float("-inf")):
            raise bad_request(f"reward must be finite, got {reward!r}", param="reward")
        if info is not None and not isinstance(info, dict):
            raise bad_request("info must be an object", param="info")
        self.reward = float(reward)
        self.reward_info = dict(info or {})

    async def close(self) -> Trajectory:
        """Refuse new calls, cancel the ones still running, and return the trajectory.

        Cancelled calls record nothing (the chat client appends a turn only once
        it is generated). ``trajectory.metrics["replayed_requests"]`` counts the
        retries answered from the record. Closing twice returns the same trajectory.
        """
        if not self._closed:
            self._closed = True
            self._manager._forget(self)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._entries.clear()
            self.trajectory.metrics["replayed_requests"] = float(self.replayed)
        return self.trajectory

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Session({self.id!r}, {state}, requests={self.requests})"


def _failed(task: asyncio.Future[Any]) -> bool:
    """True once ``task`` ended without a result (raised or was cancelled)."""
    return task.done() and (task.cancelled() or task.exception() is not None)


class SessionManager:
    """Opens sessions, checks their keys, and forgets them once closed.

    Args:
        client: the chat client a session's episode comes from when the caller
            brings none (``open()`` without an ``EpisodeClient``).
        server_url: returns the server's ``http://host:port`` (known once it listens).
    """

    def __init__(self, client: ChatClient, server_url: Callable[[], str]) -> None:
        self.client = client
        self.server_url = server_url
        self._by_id: dict[str, Session] = {}
        self._by_key: dict[str, Session] = {}
        self._closed_keys: OrderedDict[str, str] = OrderedDict()  # key -> session id

    def open(self, episode: EpisodeClient | None = None) -> Session:
        """A new session recording into ``episode`` (a fresh ``client.episode()`` if None).

        Pass the ``EpisodeClient`` the rollout gave the agent, so the trajectory
        the scheduler reads is the one the session fills.

        Raises:
            RuntimeError: when the server is not listening (it has no URL yet).
        """
        session = Session(
            self,
            session_id=new_id("sess-", 20),
            api_key=f"sk-areal-{secrets.token_hex(20)}",
            episode=self.client.episode() if episode is None else episode,
        )
        self._by_id[session.id] = session
        self._by_key[session.api_key] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """The open session with this id, if any."""
        return self._by_id.get(session_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def authorize(self, session_id: str, api_key: str | None) -> Session:
        """The open session ``session_id`` if ``api_key`` is its key.

        Raises:
            APIError: 401 for a missing or unknown key, 403 for a key of another
                session, 410 when the session is closed.
        """
        if not api_key:
            raise unauthorized(
                "missing API key: send 'Authorization: Bearer <the session's api_key>'",
                code="missing_api_key",
            )
        owner = self.owner_of(api_key)
        if owner is None:
            raise unauthorized("unknown API key: it belongs to no session of this server")
        if owner != session_id:
            raise forbidden(
                f"this API key belongs to session {owner}, not to session {session_id}: "
                "use the base_url given with the key"
            )
        session = self._by_key.get(api_key)
        if session is None:
            raise session_closed(session_id)
        return session

    def owner_of(self, api_key: str) -> str | None:
        """The id of the session (open or recently closed) whose key this is."""
        session = self._by_key.get(api_key)
        return session.id if session is not None else self._closed_keys.get(api_key)

    async def aclose(self) -> None:
        """Close every open session (their running calls are cancelled)."""
        await asyncio.gather(*(s.close() for s in list(self._by_id.values())))

    def _forget(self, session: Session) -> None:
        self._by_id.pop(session.id, None)
        self._by_key.pop(session.api_key, None)
        self._closed_keys[session.api_key] = session.id
        while len(self._closed_keys) > REMEMBERED_CLOSED:
            self._closed_keys.popitem(last=False)


def is_retry(headers: Any) -> bool:
    """True when the OpenAI client says this request is a retry (``x-stainless-retry-count`` > 0).

    Example:
        >>> is_retry({"x-stainless-retry-count": "1"}), is_retry({})
        (True, False)
    """
    value = headers.get("x-stainless-retry-count", "0")
    try:
        return int(value) > 0
    except ValueError:
        return False


__all__ = ["APIError", "Session", "SessionManager", "is_retry"]
