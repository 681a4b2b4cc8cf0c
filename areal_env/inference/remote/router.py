"""Which server a request goes to: least loaded, with episode affinity.

Requests of one episode (one ``session_id``) stay on the server that served its
first turn while that server is available: multi-turn prompts share their
prefix, and the server's prefix cache only helps if the next turn lands where
the last one was computed. New episodes go to the available server with the
fewest requests in flight. A server is *available* when it is healthy and
trusted (holds the weights of the current version); the engine flips those
flags, the router only reads them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from areal_env.inference.remote.api import ServerAPI


@dataclass(eq=False)
class Server:
    """One server as the engine sees it: its dialect, state and counters."""

    api: ServerAPI
    healthy: bool = True
    """In rotation as far as health goes: not taken out by failed checks or calls."""
    failed_checks: int = 0
    """Health checks failed in a row (reset by one that passes)."""
    trusted: bool = True
    """Holds the engine's current weights; an untrusted server gets no requests."""
    inflight: set[asyncio.Task[object]] = field(default_factory=set)
    """Generate calls on their way to or from this server (cancelled if it dies)."""
    requests: int = 0
    """Generate calls sent here, in all."""
    failures: int = 0
    """Generate calls that failed here and were retried elsewhere or failed."""
    downs: int = 0
    """Times it was taken out of rotation (failed health check or call)."""
    rejoins: int = 0
    """Times it came back after reloading the current weights."""

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.api.url

    @property
    def load(self) -> int:
        """Requests in flight here now."""
        return len(self.inflight)

    @property
    def available(self) -> bool:
        """May receive new requests."""
        return self.healthy and self.trusted


class Router:
    """Least-loaded choice with sticky sessions.

    Example:
        >>> from areal_env.inference.remote.api import VLLMAPI
        >>> a, b = Server(VLLMAPI("http://a")), Server(VLLMAPI("http://b"))
        >>> router = Router([a, b])
        >>> router.pick("ep1") is router.pick("ep1")
        True
        >>> a.healthy = False
        >>> router.pick("ep1").url, router.pick(None, exclude=[b])
        ('http://b', None)
    """

    def __init__(self, servers: Sequence[Server], *, max_sessions: int = 100_000) -> None:
        if not servers:
            raise ValueError("the router needs at least one server")
        self.servers = list(servers)
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Server] = OrderedDict()
        self._assigned = dict.fromkeys(self.servers, 0)

    def pick(self, session_id: str | None, exclude: Collection[Server] = ()) -> Server | None:
        """The server for the next call of ``session_id``; None when none is available."""
        candidates = [s for s in self.servers if s.available and s not in exclude]
        if not candidates:
            return None
        if session_id is not None:
            sticky = self._sessions.get(session_id)
            if sticky is not None and sticky in candidates:
                self._sessions.move_to_end(session_id)
                return sticky
        server = min(candidates, key=lambda s: (s.load, self._assigned[s]))
        self._assigned[server] += 1
        if session_id is not None:
            self._sessions[session_id] = server
            self._sessions.move_to_end(session_id)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return server

    def forget(self, session_id: str) -> None:
        """Drop a finished session's affinity."""
        self._sessions.pop(session_id, None)
