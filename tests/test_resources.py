"""ResourceRegistry: created once per key, closed newest first, refuses gets once closed."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading

import pytest

from areal_env.resources import ResourceRegistry, default_registry


class Closable:
    """Records into ``log`` when closed; ``kind`` picks aclose, close, or an async close."""

    def __init__(self, name: str, log: list[str], kind: str = "aclose", fail: bool = False):
        self.name, self.log, self.fail = name, log, fail
        if kind == "aclose":
            self.aclose = self._aclose
        elif kind == "close":
            self.close = self._close
        elif kind == "async-close":  # aiohttp.ClientSession.close() is a coroutine
            self.close = self._aclose

    def _close(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise OSError(f"{self.name} would not close")

    async def _aclose(self) -> None:
        await asyncio.sleep(0)
        self._close()


def test_get_creates_once_for_every_caller() -> None:
    registry = ResourceRegistry()
    calls = []
    first = registry.get("index", lambda: calls.append(1) or object())
    assert registry.get("index", lambda: calls.append(2) or object()) is first
    assert registry.get("other", object) is not first
    assert calls == [1]
    registry.close()


def test_concurrent_sync_gets_from_threads_create_once() -> None:
    registry = ResourceRegistry()
    entered, release = threading.Event(), threading.Event()
    calls = []

    def slow_factory() -> object:
        calls.append(1)
        entered.set()
        release.wait()
        return object()

    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.get("pool", slow_factory)))
        for _ in range(4)
    ]
    threads[0].start()
    entered.wait()  # the first thread is inside the factory; the others arrive now
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join()
    assert calls == [1]
    assert len(results) == 4 and all(r is results[0] for r in results)


async def test_concurrent_agets_create_once() -> None:
    registry = ResourceRegistry()
    gate = asyncio.Event()
    calls = []

    async def factory() -> object:
        calls.append(1)
        await gate.wait()
        return object()

    tasks = [asyncio.ensure_future(registry.aget("client", factory)) for _ in range(5)]
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert calls == [1]  # the others wait on the key's lock
        assert not any(task.done() for task in tasks)
    finally:
        gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == [1]
    assert all(r is results[0] for r in results)
    assert await registry.aget("client", factory) is results[0]


async def test_a_failed_async_factory_stores_nothing_and_the_next_caller_retries() -> None:
    registry = ResourceRegistry()
    attempts = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("simulator not up yet")
        return "client"

    with pytest.raises(ConnectionError):
        await registry.aget("sim", flaky)
    assert await registry.aget("sim", flaky) == "client"
    assert await registry.aget("sim", flaky) == "client"
    assert len(attempts) == 2


async def test_aclose_closes_newest_first_whatever_the_close_method() -> None:
    registry = ResourceRegistry()
    log: list[str] = []
    registry.get("a", lambda: Closable("a", log, "close"))
    await registry.aget("b", lambda: _value(Closable("b", log, "aclose")))
    registry.get("plain", dict)  # nothing to close
    registry.get("c", lambda: Closable("c", log, "async-close"))
    await registry.aclose()
    assert log == ["c", "b", "a"]


async def test_an_error_closing_one_is_logged_and_the_others_still_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = ResourceRegistry("run")
    log: list[str] = []
    for name in ("a", "b", "c"):
        registry.get(name, lambda name=name: Closable(name, log, fail=name == "b"))
    with caplog.at_level(logging.ERROR, logger="areal_env.resources"):
        await registry.aclose()
    assert log == ["c", "b", "a"]
    assert [r.getMessage() for r in caplog.records] == ["run: closing resource 'b' failed"]
    assert "b would not close" in caplog.text


async def test_gets_after_close_are_refused() -> None:
    registry = ResourceRegistry("run")
    registry.get("a", object)
    await registry.aclose()
    assert registry.closed
    with pytest.raises(RuntimeError, match=r"'run' is closed; cannot get 'a'"):
        registry.get("a", object)
    with pytest.raises(RuntimeError, match=r"'run' is closed; cannot get 'b'"):
        await registry.aget("b", lambda: _value(object()))


async def test_an_object_finished_after_close_is_closed_and_refused() -> None:
    registry = ResourceRegistry()
    log: list[str] = []
    gate = asyncio.Event()

    async def factory() -> Closable:
        await gate.wait()
        return Closable("late", log)

    task = asyncio.ensure_future(registry.aget("late", factory))
    await asyncio.sleep(0)
    await registry.aclose()
    gate.set()
    with pytest.raises(RuntimeError, match="is closed"):
        await task
    assert log == ["late"]


def test_close_is_idempotent() -> None:
    registry = ResourceRegistry()
    log: list[str] = []
    registry.get("a", lambda: Closable("a", log, "close"))
    registry.get("b", lambda: Closable("b", log, "aclose"))
    registry.close()
    registry.close()
    asyncio.run(registry.aclose())
    assert log == ["b", "a"]


async def test_sync_close_inside_a_running_loop_is_refused() -> None:
    registry = ResourceRegistry()
    with pytest.raises(RuntimeError, match=r"await registry\.aclose\(\)"):
        registry.close()
    assert not registry.closed
    await registry.aclose()


def test_mixing_get_and_aget_for_one_key_is_reported() -> None:
    registry = ResourceRegistry()

    async def race() -> None:
        async def factory() -> object:
            registry.get("k", object)  # someone else made it meanwhile
            return object()

        await registry.aget("k", factory)

    with pytest.raises(RuntimeError, match="created twice"):
        asyncio.run(race())


def test_the_default_registry_is_shared_and_replaced_once_closed() -> None:
    first = default_registry()
    assert default_registry() is first
    first.close()
    second = default_registry()
    assert second is not first and not second.closed


def test_the_default_registry_is_closed_at_exit() -> None:
    code = (
        "from areal_env.resources import default_registry\n"
        "class Pool:\n"
        "    def close(self):\n"
        "        print('pool closed', flush=True)\n"
        "default_registry().get('pool', Pool)\n"
        "print('exiting', flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.splitlines() == ["exiting", "pool closed"]


async def _value(x: object) -> object:
    return x
