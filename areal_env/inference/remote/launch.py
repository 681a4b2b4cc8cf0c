"""Start vLLM / SGLang servers as subprocesses and make sure they never outlive us.

With ``inference.launch=true`` the trainer starts its own inference servers. Each
one holds gigabytes of (GPU) memory, so an orphan left behind by Ctrl-C or a crash
blocks the next run. Four layers make sure every server goes away with us:

* **Process groups.** Each server starts in its own session (``start_new_session``),
  so it is the leader of a group holding all its workers (vLLM's engine core,
  SGLang's schedulers). ``stop`` signals the whole group, not just the leader.
  Being in its own session also means a terminal's Ctrl-C does not reach the
  servers directly: we stop them ourselves, in order.
* **PDEATHSIG.** On Linux the child asks the kernel (``prctl(PR_SET_PDEATHSIG)``)
  for SIGTERM when its parent dies, so even a trainer killed with SIGKILL takes
  its servers along. The kernel ties this to the *thread* that spawned the child:
  we spawn from the calling thread, so call ``ServerGroup.start`` from a thread
  that lives as long as the servers (the main thread / event-loop thread), never
  from a short-lived worker thread such as ``asyncio.to_thread``.
* **atexit.** A normal exit or an uncaught exception stops every live group.
* **Signal handlers.** SIGTERM and SIGINT stop every live group, then chain to
  the previous handler (so SIGINT still raises ``KeyboardInterrupt``).
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

import aiohttp

from areal_env.inference.remote.api import ServerStartupError

SERVER_ENV: dict[str, str] = {
    "VLLM_SERVER_DEV_MODE": "1",  # enables vLLM's /pause, /resume, /collective_rpc routes
    "VLLM_NO_USAGE_STATS": "1",
    "PYTHONUNBUFFERED": "1",  # so the log tail in an error message is up to date
}
"""Set for every launched server, on top of the parent's environment."""

_PR_SET_PDEATHSIG = 1
_handed_out_ports: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now and not handed out before by this process.

    The port is only probed, so another process may still take it before the
    server binds it; remembering earlier answers at least keeps two servers of
    one launch from getting the same port.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise OSError(f"no free port on {host} after 100 tries")


def vllm_command(
    python: str, model: str, *, host: str, port: int, max_model_len: int, extra_args: Sequence[str]
) -> list[str]:
    """The vLLM OpenAI server command; logprobs are after temperature, as the trainer's."""
    return [
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--host", host, "--port", str(port), "--max-model-len", str(max_model_len),
        "--logprobs-mode", "processed_logprobs", "--served-model-name", "policy",
        *extra_args,
    ]  # fmt: skip


VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``--max-lora-rank`` (``MaxLoRARanks`` in vllm/config/lora.py)."""

LORA_SERVER_ENV: dict[str, str] = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
"""Environment of vLLM servers that load adapters at run time (adds the load/unload routes)."""


def vllm_lora_args(rank: int) -> list[str]:
    """The vLLM flags for run-time LoRA adapters of ``rank`` (``inference.lora_adapters``).

    ``--max-lora-rank`` is the smallest value vLLM accepts that holds ``rank``;
    ``--max-loras 2`` lets the old and the new adapter coexist while requests of
    the old version finish during a switch.

    Raises:
        ValueError: ``rank`` < 1 or above vLLM's largest supported rank.
    """
    fitting = [r for r in VLLM_MAX_LORA_RANKS if r >= rank]
    if rank < 1 or not fitting:
        raise ValueError(
            f"train.lora.rank={rank} cannot be served by vLLM with inference.lora_adapters "
            f"(supported ranks: 1..{VLLM_MAX_LORA_RANKS[-1]})"
        )
    return ["--enable-lora", "--max-lora-rank", str(fitting[0]), "--max-loras", "2"]


def sglang_command(
    python: str, model: str, *, host: str, port: int, max_model_len: int, extra_args: Sequence[str]
) -> list[str]:
    """The SGLang server command."""
    return [
        python, "-m", "sglang.launch_server", "--model-path", model,
        "--host", host, "--port", str(port), "--context-length", str(max_model_len),
        "--served-model-name", "policy", *extra_args,
    ]  # fmt: skip


def check_server_python(python: str) -> str:
    """Resolve ``inference.server_python`` to an executable path or raise ValueError."""
    path = shutil.which(python) if os.sep not in python else python
    if path is None or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise ValueError(
            f"inference.server_python={python!r} does not exist or is not executable; "
            "point it at the Python interpreter that has vllm / sglang installed"
        )
    return path


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking for SIGTERM when the spawning thread dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: no dlopen in the child
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ServerProcess:
    """One server subprocess in its own process group, logging to ``log_path``."""

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        *,
        host: str,
        port: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.log_path = Path(log_path)
        self.host, self.port = host, port
        self._stopped = False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **SERVER_ENV, **(env or {})}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),
            )

    @property
    def url(self) -> str:
        """Base URL of the server, ``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the server (also its process-group id)."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has exited, else None."""
        return self._proc.poll()

    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self._proc.poll() is None

    def log_tail(self, n_lines: int = 40) -> str:
        """The last ``n_lines`` lines of the server's log ('' if there is none)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
                data = f.read()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-n_lines:])

    def _failure(self, what: str) -> ServerStartupError:
        return ServerStartupError(
            f"inference server {self.url} (pid {self.pid}) {what}\n"
            f"command: {shlex.join(self.command)}\n"
            f"log {self.log_path} (last lines):\n{self.log_tail()}"
        )

    async def wait_healthy(
        self,
        timeout: float,  # noqa: ASYNC109 - a deadline named in the error message
        health_path: str = "/health",
    ) -> None:
        """Poll ``GET url + health_path`` until it answers 200.

        Raises:
            ServerStartupError: the process exited first, or ``timeout`` seconds passed.
        """
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if (code := self._proc.poll()) is not None:
                    raise self._failure(f"exited with code {code} before becoming healthy")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._failure(f"not healthy after {timeout:g} s")
                try:
                    req_timeout = aiohttp.ClientTimeout(total=min(5.0, max(left, 0.1)))
                    async with session.get(self.url + health_path, timeout=req_timeout) as r:
                        if r.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(min(0.2, max(deadline - time.monotonic(), 0)))

    def terminate(self) -> None:
        """Send SIGTERM to the whole process group (no wait)."""
        if not self._stopped:
            _signal_group(self._proc.pid, signal.SIGTERM)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the group, wait up to ``grace`` s, then SIGKILL it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        pgid = self._proc.pid  # leader of its own session: pid == pgid
        _signal_group(pgid, signal.SIGTERM)
        try:  # always with a timeout: the untimed wait takes a lock a signal handler could hold
            self._proc.wait(timeout=max(grace, 0.0))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(pgid, signal.SIGKILL)  # the leader's stragglers, or the leader itself
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass


_live_groups: weakref.WeakSet[ServerGroup] = weakref.WeakSet()
_previous_handlers: dict[int, Any] = {}
_hooks_lock = threading.Lock()
_atexit_installed = False


def _stop_live_groups() -> None:
    for group in list(_live_groups):
        group.stop_all()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _stop_live_groups()
    previous = _previous_handlers.get(signum)
    if callable(previous):  # e.g. default_int_handler -> KeyboardInterrupt
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # SIG_DFL (or unknown): die the default way
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    """Register atexit once; signal handlers once, and only from the main thread."""
    global _atexit_installed
    with _hooks_lock:
        if not _atexit_installed:
            atexit.register(_stop_live_groups)
            _atexit_installed = True
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            if sig not in _previous_handlers:
                _previous_handlers[sig] = signal.signal(sig, _on_signal)


def _stop_servers(servers: list[ServerProcess], grace: float = 10.0) -> None:
    for server in servers:
        server.terminate()  # all get SIGTERM first, so the grace periods overlap
    deadline = time.monotonic() + grace
    for server in servers:
        server.stop(grace=max(0.0, deadline - time.monotonic()))


class ServerGroup:
    """Several servers stopped together: explicitly, on exit, on SIGTERM/SIGINT or on GC.

    Keep a reference while the servers are needed: a group that is garbage
    collected stops its servers.

    Example:
        >>> with ServerGroup() as group:
        ...     group.servers
        []
    """

    def __init__(self) -> None:
        self._servers: list[ServerProcess] = []
        self._finalizer = weakref.finalize(self, _stop_servers, self._servers)
        self._finalizer.atexit = False  # the atexit hook covers live groups
        _live_groups.add(self)
        _install_hooks()

    @property
    def servers(self) -> list[ServerProcess]:
        """The servers started so far."""
        return list(self._servers)

    @property
    def urls(self) -> list[str]:
        """Base URLs of the servers, in start order."""
        return [s.url for s in self._servers]

    def start(
        self,
        command: Sequence[str],
        log_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int,
        env: Mapping[str, str] | None = None,
    ) -> ServerProcess:
        """Start one server (from the calling thread: see the module docstring)."""
        server = ServerProcess(command, log_path, host=host, port=port, env=env)
        self._servers.append(server)
        _live_groups.add(self)  # back in the set if it was stopped before
        return server

    async def wait_all_healthy(
        self,
        timeout: float,  # noqa: ASYNC109 - passed on to wait_healthy
        health_path: str = "/health",
    ) -> None:
        """Wait for every server concurrently; the first failure cancels the rest and raises."""
        tasks = [asyncio.create_task(s.wait_healthy(timeout, health_path)) for s in self._servers]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop every server (SIGTERM all, shared grace, then SIGKILL). Idempotent."""
        _live_groups.discard(self)
        _stop_servers(self._servers, grace)

    def __enter__(self) -> ServerGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    async def __aenter__(self) -> ServerGroup:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop_all)


async def launch_servers(
    kind: Literal["vllm", "sglang"],
    *,
    python: str,
    model: str,
    count: int,
    log_dir: Path,
    max_model_len: int,
    extra_args: Sequence[str] = (),
    host: str = "127.0.0.1",
    startup_timeout: float = 900.0,
    env: Mapping[str, str] | None = None,
) -> tuple[ServerGroup, list[str]]:
    """Start ``count`` servers on free ports, wait until all are healthy.

    Logs go to ``log_dir/<kind>-<i>.log``; ``env`` is added to every server's
    environment (on top of :data:`SERVER_ENV`). On any failure (or cancellation) every
    server started here is stopped before the error propagates.

    Returns:
        The group (keep it: dropping it stops the servers) and the server URLs.

    Raises:
        ValueError: ``count < 1``, an unknown ``kind`` or a bad ``inference.server_python``.
        ServerStartupError: a server that exited or did not get healthy within
            ``startup_timeout`` seconds (its URL, exit code and log tail in the message).
    """
    if count < 1:
        raise ValueError(f"inference server count must be >= 1, got {count}")
    builders = {"vllm": vllm_command, "sglang": sglang_command}
    if kind not in builders:
        raise ValueError(f"unknown inference server kind {kind!r}; expected 'vllm' or 'sglang'")
    python = check_server_python(python)
    group = ServerGroup()
    try:
        for i in range(count):
            port = free_port(host)
            cmd = builders[kind](
                python, model, host=host, port=port, max_model_len=max_model_len,
                extra_args=extra_args,
            )  # fmt: skip
            group.start(cmd, Path(log_dir) / f"{kind}-{i}.log", host=host, port=port, env=env)
        await group.wait_all_healthy(startup_timeout)
    except BaseException:
        group.stop_all()
        raise
    return group, group.urls


__all__ = [
    "LORA_SERVER_ENV",
    "SERVER_ENV",
    "VLLM_MAX_LORA_RANKS",
    "ServerGroup",
    "ServerProcess",
    "check_server_python",
    "free_port",
    "launch_servers",
    "sglang_command",
    "vllm_command",
    "vllm_lora_args",
]
