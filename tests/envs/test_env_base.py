"""AsyncEnv's sync API: one persistent loop per env, closed by close(); env resources."""

from __future__ import annotations

import asyncio
import gc
import http.server
import sys
import threading
import warnings
from collections.abc import Iterator

import aiohttp
import pytest

from areal_env.envs.base import AsyncEnv
from areal_env.resources import ResourceRegistry, default_registry


class LoopRecordingEnv(AsyncEnv):
    """Records the loop each call ran on; subclasses open loop-bound things in reset."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.loops: dict[str, asyncio.AbstractEventLoop] = {}
        self.aclose_calls = 0

    async def _areset(self, options):
        self.loops["reset"] = asyncio.get_running_loop()
        return [{"role": "user", "content": "go"}], {}

    async def _astep(self, message):
        self.loops["step"] = asyncio.get_running_loop()
        return [], 0.0, False, False, {}

    async def aclose(self) -> None:
        self.loops["aclose"] = asyncio.get_running_loop()
        self.aclose_calls += 1


class TaskEnv(LoopRecordingEnv):
    """Reset starts a task and two queues; each step asks the task through them."""

    async def _areset(self, options):
        obs = await super()._areset(options)
        self.requests: asyncio.Queue[str] = asyncio.Queue()
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        self.worker = asyncio.ensure_future(self._serve())
        return obs

    async def _serve(self) -> None:
        while True:
            text = await self.requests.get()
            await self.replies.put(text.upper())

    async def _astep(self, message):
        await super()._astep(message)
        if self.worker.done():  # fail fast instead of waiting forever for a reply
            raise RuntimeError("the worker task started in reset is gone")
        await self.requests.put(message["content"])
        reply = await self.replies.get()
        return [{"role": "user", "content": reply}], 0.0, False, False, {}

    async def aclose(self) -> None:
        await super().aclose()
        self.worker.cancel()
        await asyncio.gather(self.worker, return_exceptions=True)


def test_a_task_and_queues_opened_in_reset_serve_later_sync_steps() -> None:
    env = TaskEnv()
    env.reset(seed=0)
    assert env.step("hi")[0] == [{"role": "user", "content": "HI"}]
    assert env.step("again")[0] == [{"role": "user", "content": "AGAIN"}]
    env.close()
    assert env.worker.cancelled()
    assert env.loops["reset"] is env.loops["step"] is env.loops["aclose"]
    assert env.loops["reset"].is_closed()


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[str]]]:
    """A threaded HTTP server on 127.0.0.1 that echoes the request path; yields (url, paths)."""
    paths: list[str] = []

    class Echo(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the session's pooled connection is reused

        def do_GET(self) -> None:
            paths.append(self.path)
            body = self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class SessionEnv(LoopRecordingEnv):
    """Opens an aiohttp ClientSession in reset and calls the server in every step."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.session: aiohttp.ClientSession | None = None

    async def _areset(self, options):
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"{self.url}/reset") as response:
            return [{"role": "user", "content": await response.text()}], {}

    async def _astep(self, message):
        assert self.session is not None
        async with self.session.get(f"{self.url}/{message['content']}") as response:
            reply = await response.text()
        return [{"role": "user", "content": reply}], 1.0, False, False, {}

    async def aclose(self) -> None:
        await super().aclose()
        if self.session is not None:
            self.loops["session"] = self.session._loop
            await self.session.close()


def test_an_aiohttp_session_opened_in_reset_serves_later_steps_and_is_closed(
    http_server: tuple[str, list[str]],
) -> None:
    url, paths = http_server
    env = SessionEnv(url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert env.reset(seed=0)[0] == [{"role": "user", "content": "/reset"}]
        assert env.step("a")[:2] == ([{"role": "user", "content": "/a"}], 1.0)
        assert env.step("b")[:2] == ([{"role": "user", "content": "/b"}], 1.0)
        env.close()
        gc.collect()
    assert env.session is not None and env.session.closed
    assert paths == ["/reset", "/a", "/b"]
    assert env.loops["session"] is env.loops["aclose"]
    assert env.loops["aclose"].is_closed()
    assert [str(w.message) for w in caught] == []


class SubprocessEnv(LoopRecordingEnv):
    """Starts a line-echo child process in reset and talks to it in every step."""

    async def _areset(self, options):
        obs = await super()._areset(options)
        code = "import sys\nfor line in sys.stdin:\n    print(line.strip()[::-1], flush=True)"
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return obs

    async def _astep(self, message):
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(message["content"].encode() + b"\n")
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        return [{"role": "user", "content": line.decode().strip()}], 0.0, False, False, {}

    async def aclose(self) -> None:
        await super().aclose()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


def test_a_subprocess_started_in_reset_answers_later_steps_and_is_reaped() -> None:
    env = SubprocessEnv()
    env.reset(seed=0)
    assert env.step("abc")[0] == [{"role": "user", "content": "cba"}]
    assert env.step("xy")[0] == [{"role": "user", "content": "yx"}]
    env.close()
    assert env.proc.returncode == 0


def test_close_inside_a_running_loop_runs_aclose_on_the_envs_own_loop() -> None:
    env = TaskEnv()
    env.reset(seed=0)
    env.step("hi")

    async def close_from_async_code() -> asyncio.AbstractEventLoop:
        env.close()
        return asyncio.get_running_loop()

    caller_loop = asyncio.run(close_from_async_code())
    assert env.worker.cancelled()
    assert env.loops["aclose"] is env.loops["reset"]
    assert env.loops["aclose"] is not caller_loop
    assert env.loops["aclose"].is_closed()


async def test_close_inside_a_running_loop_without_sync_calls_runs_aclose() -> None:
    env = LoopRecordingEnv()
    await env.areset(seed=0)
    env.close()
    assert env.aclose_calls == 1
    # No loop of the env's own existed: aclose ran on a fresh one, now closed.
    assert env.loops["aclose"] is not asyncio.get_running_loop()
    assert env.loops["aclose"].is_closed()


def test_close_is_idempotent_and_a_later_sync_call_gets_a_new_loop() -> None:
    env = LoopRecordingEnv()
    env.close()  # before any sync call
    env.reset(seed=0)
    first = env.loops["reset"]
    env.close()
    env.close()
    assert env.aclose_calls == 3
    assert first.is_closed()
    env.reset(seed=0)
    assert env.loops["reset"] is not first and not env.loops["reset"].is_closed()
    env.close()
    assert env.loops["reset"].is_closed()


def test_the_loop_is_closed_even_when_aclose_raises() -> None:
    class Failing(LoopRecordingEnv):
        async def aclose(self) -> None:
            await super().aclose()
            raise OSError("sandbox already gone")

    env = Failing()
    env.reset(seed=0)
    with pytest.raises(OSError, match="sandbox already gone"):
        env.close()
    assert env.loops["aclose"] is env.loops["reset"]
    assert env.loops["reset"].is_closed()


def test_an_env_dropped_without_close_gives_its_loop_back() -> None:
    env = LoopRecordingEnv()
    env.reset(seed=0)
    loop = env.loops["reset"]
    del env
    gc.collect()
    assert loop.is_closed()


async def test_sync_reset_and_step_inside_a_running_loop_raise_and_leave_no_loop() -> None:
    env = LoopRecordingEnv()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match=r"await env\.areset"):
            env.reset(seed=0)
        await env.areset(seed=0)
        with pytest.raises(RuntimeError, match=r"await env\.astep"):
            env.step("x")
        gc.collect()
    assert [str(w.message) for w in caught] == []  # no "coroutine was never awaited"
    assert env._runner is None
    env.close()


def test_the_threads_current_event_loop_is_left_alone() -> None:
    mine = asyncio.new_event_loop()
    asyncio.set_event_loop(mine)
    try:
        env = LoopRecordingEnv()
        env.reset(seed=0)
        env.close()
        assert asyncio.get_event_loop_policy().get_event_loop() is mine
    finally:
        asyncio.set_event_loop(None)
        mine.close()


# ---- resources ---------------------------------------------------------------------------


def test_an_env_uses_the_registry_it_was_given_or_the_default() -> None:
    registry = ResourceRegistry("run")
    assert LoopRecordingEnv(resources=registry).resources is registry
    assert LoopRecordingEnv().resources is default_registry()


def test_envs_of_one_run_share_a_resource_across_episodes() -> None:
    registry = ResourceRegistry("run")
    built = []

    class IndexEnv(LoopRecordingEnv):
        async def _areset(self, options):
            self.index = self.resources.get("index", lambda: built.append(1) or {"k": "v"})
            return await super()._areset(options)

    envs = [IndexEnv(resources=registry) for _ in range(3)]
    for env in envs:
        env.reset(seed=0)
        env.reset(seed=1)
        env.close()
    assert built == [1]
    assert envs[0].index is envs[1].index is envs[2].index
    registry.close()


async def test_async_envs_on_one_loop_share_a_loop_bound_resource() -> None:
    registry = ResourceRegistry("run")
    sessions: list[aiohttp.ClientSession] = []

    async def make_session() -> aiohttp.ClientSession:
        sessions.append(aiohttp.ClientSession())
        return sessions[-1]

    class ClientEnv(LoopRecordingEnv):
        async def _areset(self, options):
            self.client = await self.resources.aget("client", make_session)
            return await super()._areset(options)

    envs = [ClientEnv(resources=registry) for _ in range(4)]
    await asyncio.gather(*(env.areset(seed=i) for i, env in enumerate(envs)))
    assert len(sessions) == 1 and all(env.client is sessions[0] for env in envs)
    for env in envs:
        await env.aclose()
    assert not sessions[0].closed  # the registry owns it, not the env
    await registry.aclose()
    assert sessions[0].closed
