"""ResourceRegistry: expensive objects that envs share across episodes.

A run makes a fresh env per episode, but what an env talks to should not be
rebuilt every time: a retrieval index takes seconds to load, a sandbox pool
holds processes, an HTTP client holds a connection pool. A registry hands every
env the same object under a key (``get`` with a sync factory, ``aget`` with an
async one; the first caller creates it) and closes them all, newest first, when
its owner is done: the training run, or, for envs made with ``gym.make`` outside
a run, the process at exit (:func:`default_registry`).

Note:
    An object bound to an event loop (an aiohttp ``ClientSession``, an
    ``asyncio.Lock``, an asyncio subprocess) works only on the loop that made
    it. Share through a registry only objects that are loop-agnostic (an index,
    a thread pool, a sync client), or create them with ``aget`` on the loop that
    uses them, which in a run is the run's one loop. Envs driven through the sync
    API each run on their own loop (see ``envs/base.py``), so they must not share
    a loop-bound object: each opens its own in ``areset`` and closes it in
    ``aclose``. Close the registry on the loop that made its loop-bound objects
    (``await registry.aclose()``); the sync ``close()`` runs on a fresh loop.
    Use one kind of factory per key: mixing ``get`` and ``aget`` for one key can
    race, and the second creation raises.

Example:
    >>> registry = ResourceRegistry()
    >>> index = registry.get("index", lambda: {"paris": "France"})
    >>> registry.get("index", dict) is index  # the factory ran once
    True
    >>> registry.close()
    >>> registry.get("index", dict)
    Traceback (most recent call last):
    ...
    RuntimeError: ResourceRegistry 'resources' is closed; cannot get 'index'
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar, cast

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class ResourceRegistry:
    """Objects shared under a key, created once, closed together in reverse order.

    Args:
        name: shown in errors and logs, to tell registries apart.
    """

    def __init__(self, name: str = "resources") -> None:
        self.name = name
        self._resources: dict[Hashable, Any] = {}  # insertion order is creation order
        self._creating: dict[Hashable, asyncio.Lock] = {}
        self._sync_lock = threading.RLock()  # reentrant: a factory may get() what it needs
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once ``aclose``/``close`` started; every later get is refused."""
        return self._closed

    def get(self, key: Hashable, factory: Callable[[], _T]) -> _T:
        """The object under ``key``, made by ``factory()`` if nobody made it yet.

        Thread-safe: concurrent callers (for example ``asyncio.to_thread``
        workers) create it once.

        Raises:
            RuntimeError: when the registry is closed.
        """
        with self._sync_lock:
            self._check_open(key)
            if key not in self._resources:
                self._add(key, factory())
            return cast(_T, self._resources[key])

    async def aget(self, key: Hashable, factory: Callable[[], Awaitable[_T]]) -> _T:
        """The object under ``key``, made by ``await factory()`` if nobody made it yet.

        Concurrent callers for one key wait on a per-key lock, so the factory
        runs once; if it raises, nothing is stored and the next caller tries again.

        Raises:
            RuntimeError: when the registry is closed (also when it closed while
                the factory ran: the new object is closed, not leaked).
        """
        self._check_open(key)
        if key in self._resources:
            return cast(_T, self._resources[key])
        lock = self._creating.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._resources:  # else another caller made it while we waited
                self._check_open(key)
                value = await factory()
                if self._closed:
                    await _close_resource(value)
                    self._check_open(key)
                self._add(key, value)
                # Later callers take the fast path; waiters still queued on this
                # lock find the key. Dropping it keeps the lock off other loops.
                self._creating.pop(key, None)
        return cast(_T, self._resources[key])

    async def aclose(self) -> None:
        """Close every object, newest first; refuse gets from now on. Safe to call twice.

        Each object is closed with ``await x.aclose()`` when it has one, else
        ``x.close()`` (awaited when it returns an awaitable, as aiohttp's does).
        An error closing one is logged and the others still close. Objects are
        closed in reverse creation order because a later one may use an earlier
        one (a sandbox pool built on a client).
        """
        self._closed = True
        while self._resources:
            key, value = self._resources.popitem()  # LIFO: newest first
            try:
                await _close_resource(value)
            except Exception:
                logger.exception("%s: closing resource %r failed", self.name, key)

    def close(self) -> None:
        """Sync form of :meth:`aclose`, on a fresh event loop (see the module's Note).

        Raises:
            RuntimeError: inside a running event loop, where the objects may
                belong to that loop: ``await registry.aclose()`` there instead.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self.aclose())
            return
        raise RuntimeError(
            f"ResourceRegistry {self.name!r}.close() was called inside a running event loop; "
            "use `await registry.aclose()` there"
        )

    def _check_open(self, key: Hashable) -> None:
        if self._closed:
            raise RuntimeError(f"ResourceRegistry {self.name!r} is closed; cannot get {key!r}")

    def _add(self, key: Hashable, value: Any) -> None:
        if key in self._resources:
            raise RuntimeError(
                f"ResourceRegistry {self.name!r}: {key!r} was created twice; "
                "use either get() or aget() for one key, not both"
            )
        self._resources[key] = value

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._resources)} resources"
        return f"ResourceRegistry({self.name!r}, {state})"


async def _close_resource(resource: Any) -> None:
    aclose = getattr(resource, "aclose", None)
    if callable(aclose):
        await aclose()
        return
    close = getattr(resource, "close", None)
    if callable(close):
        result = close()
        if inspect.isawaitable(result):
            await result


_default: ResourceRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> ResourceRegistry:
    """The process-wide registry, for envs made without a run's; closed at exit.

    A new one replaces it after someone closed it, so envs made later still work.

    Example:
        >>> default_registry() is default_registry()
        True
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = ResourceRegistry("default")
        return _default


@atexit.register
def _close_default_registry() -> None:
    if _default is not None:
        _default.close()


__all__ = ["ResourceRegistry", "default_registry"]
