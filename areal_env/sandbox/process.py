"""One started sandbox: a process waiting for one program, run once, then destroyed.

Lifecycle of a ``SandboxProcess``::

    start()    scratch folder + cgroups, spawn (sh joins the groups, execs bwrap ->
               python bootstrap), wait for the ready byte
    run()      send <length><code><stdin>, capture stdout/stderr up to the limit,
               wait for the exit, or kill at the wall-clock or output limit
    destroy()  SIGKILL the process group and everything in the cgroups, remove
               the cgroups and the scratch folder

With bubblewrap the program is pid 2 of its own pid namespace (bwrap is pid 1);
when the program exits, pid 1 exits and the kernel kills everything else in the
namespace, so a detached child cannot outlive the call. The cgroup kill is the
second line, and the only one for the unsandboxed executor.

The process is a plain ``subprocess.Popen`` whose exit is watched through a
pidfd on the event loop, and its pipes are our own (``os.pipe`` read through
``connect_read_pipe``). asyncio's subprocess layer is avoided on purpose: its
``Process.wait()`` also waits for the pipes to close, which a process that
escaped the kill could delay forever, and a task cancelled while it creates a
process (as ``asyncio.run`` cancels every task at shutdown) can hang forever on
CPython 3.11.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

from areal_env.sandbox.cgroups import JOIN_AND_EXEC, JOIN_FAILED, Cgroup, CgroupFactory
from areal_env.sandbox.config import SandboxResult
from areal_env.sandbox.isolation import HEADER_DIGITS, READY

logger = logging.getLogger(__name__)

_DRAIN_S = 2.0
"""How long to wait for the output pipes to close once the program was killed or ended."""

SCRATCH_PREFIX = "areal-sandbox-"
"""Scratch folders are ``{SCRATCH_PREFIX}{host pid}-{random}``."""


class SandboxError(RuntimeError):
    """The host could not start or run a sandbox (not the program's fault).

    Raised for a sandbox that dies before it is ready, or an OS error on the
    host's side (out of file descriptors, no memory to fork). What the model's
    program does is never raised: it is described by a ``SandboxResult``.
    """


class _Capture(asyncio.Protocol):
    """Keeps at most ``limit`` bytes of a pipe; past them sets ``overflow`` and drops the rest.

    It keeps reading (and dropping) so that the writer never blocks on a full
    pipe; the overflow makes ``run`` kill the program at once.
    """

    def __init__(self, limit: int, overflow: asyncio.Event, *, expect_ready: bool) -> None:
        self.buf = bytearray()
        self.truncated = False
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not expect_ready:
            self.ready.set_result(True)
        self.closed = asyncio.Event()
        self.limit = limit
        self._overflow = overflow

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.ready.set_result(data[:1] == READY)
            data = data[1:]
        if self.truncated or not data:
            return
        self.buf += data
        if len(self.buf) > self.limit:
            del self.buf[self.limit :]
            self.truncated = True
            self._overflow.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        self.closed.set()

    def text(self) -> str:
        return self.buf.decode("utf-8", "replace")


class SandboxProcess:
    """A sandbox started ahead of its program. Use each exactly once.

    Build it with :meth:`start`; then ``run`` and, always, ``destroy``.
    """

    def __init__(self, proc: subprocess.Popen, scratch: str, sandboxed: bool) -> None:
        self.proc = proc
        self._exit = _ExitWatch(proc)
        self.scratch = scratch
        """The host folder the program sees as its working folder."""
        self.sandboxed = sandboxed
        self.cgroup: Cgroup | None = None
        self.used = False
        self._stdin: asyncio.WriteTransport | None = None
        self._readers: list[tuple[asyncio.ReadTransport, _Capture]] = []
        self._overflow = asyncio.Event()

    @classmethod
    async def start(
        cls,
        make_argv: Callable[[str], list[str]],
        *,
        scratch_root: str | None,
        cgroups: CgroupFactory | None,
        cgroup_limits: tuple[int, int | None],
        sandboxed: bool,
        max_output_bytes: int,
        ready_timeout_s: float = 60.0,
    ) -> SandboxProcess:
        """Spawn a sandbox and wait until its interpreter is up and limited.

        Args:
            make_argv: scratch folder -> the command (bwrap or bare python).
            scratch_root: parent of the scratch folder (None: the system's).
            cgroups: hands out the groups to join, or None (weaker limits).
            cgroup_limits: (pids.max, memory bytes) of the groups.
            sandboxed: whether ``make_argv`` isolates (reported in results).
            max_output_bytes: bytes kept of stdout and of stderr each.
            ready_timeout_s: limit for the interpreter to come up.

        Raises:
            SandboxError: when it cannot be started.
        """
        scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=scratch_root)
        cgroup, fds, box = None, [], None
        try:
            if cgroups is not None:
                cgroup = cgroups.create(pids_max=cgroup_limits[0], memory_bytes=cgroup_limits[1])
            argv = make_argv(scratch)
            if cgroup is not None:
                argv = ["/bin/sh", "-c", JOIN_AND_EXEC, "sh", *cgroup.procs_files, "--", *argv]
            (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
            fds = [in_r, in_w, out_r, out_w, err_r, err_w]
            proc = _spawn(argv, (in_r, out_w, err_w), scratch, sandboxed)
            for fd in (in_r, out_w, err_w):  # the child's ends; EOF needs ours closed
                os.close(fd)
                fds.remove(fd)
            box = cls(proc, scratch, sandboxed)
            box.cgroup, cgroup = cgroup, None
            fds = []  # from here the pipe transports own our ends
            await box._connect(in_w, out_r, err_r, max_output_bytes)
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation
            # that arrives together with the result, and the pool would never stop.
            async with asyncio.timeout(ready_timeout_s):
                ready = await box._readers[0][1].ready
            if not ready:
                await box._fail_to_start()
        except BaseException as e:
            for fd in fds:
                os.close(fd)
            if box is not None:
                group = await box.destroy()
                if group is not None:
                    await group.remove()
            else:
                if cgroup is not None:
                    cgroup.remove_now()
                _rmtree(scratch)
            if isinstance(e, OSError):
                raise SandboxError(f"could not start a sandbox: {e}") from e
            if isinstance(e, asyncio.TimeoutError):
                raise SandboxError(f"sandbox not ready after {ready_timeout_s} s") from e
            raise
        return box

    async def _connect(self, in_w: int, out_r: int, err_r: int, limit: int) -> None:
        loop = asyncio.get_running_loop()
        for fd, expect_ready in ((out_r, True), (err_r, False)):
            transport, capture = await loop.connect_read_pipe(
                functools.partial(_Capture, limit, self._overflow, expect_ready=expect_ready),
                os.fdopen(fd, "rb", buffering=0),
            )
            self._readers.append((transport, capture))
        self._stdin, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(in_w, "wb", buffering=0)
        )

    async def _fail_to_start(self) -> None:
        self.kill_now()
        await self._exit.wait()
        err = self._readers[1][1]
        closed = asyncio.create_task(err.closed.wait())
        await asyncio.wait([closed], timeout=_DRAIN_S)
        closed.cancel()
        why = err.text().strip()[-2000:]
        if self.proc.returncode == JOIN_FAILED:
            why = f"could not join its cgroup. {why}"
        raise SandboxError(f"sandbox exited before it was ready ({self.proc.returncode}): {why}")

    @property
    def alive(self) -> bool:
        """Still waiting for its program (not killed or exited meanwhile)."""
        return self.proc.poll() is None

    async def run(self, code: str, stdin: str | None, *, timeout_s: float) -> SandboxResult:
        """Run ``code`` with ``stdin`` and describe what happened; never raises for the program."""
        assert not self.used, "a sandbox runs one program"
        assert self._stdin is not None
        self.used = True
        body = code.encode("utf-8", "surrogatepass")
        header = f"{len(body):0{HEADER_DIGITS}d}".encode()
        start = time.perf_counter()
        # Buffered by the transport and written as the program reads; close()
        # sends EOF after the last byte, and a program that exits unread is fine.
        self._stdin.write(header + body + (stdin or "").encode("utf-8", "surrogatepass"))
        self._stdin.close()
        exited = asyncio.create_task(self._exit.wait(), name="sandbox_wait")
        overflowed = asyncio.create_task(self._overflow.wait(), name="sandbox_overflow")
        killed_reason = None
        try:
            done, _ = await asyncio.wait(
                {exited, overflowed}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if exited not in done:
                killed_reason = "output" if overflowed in done else "timeout"
            # Done or being stopped: no process of it may stay, neither to hold
            # the pipes open nor to outlive the call.
            self.kill_now()
            await exited
            duration = time.perf_counter() - start
            closed = [asyncio.create_task(c.closed.wait()) for _, c in self._readers]
            await asyncio.wait(closed, timeout=_DRAIN_S)
            for task in closed:
                task.cancel()
        finally:
            overflowed.cancel()
            exited.cancel()
        (_, out), (_, err) = self._readers
        exit_code = _exit_code(self.proc.returncode) if killed_reason is None else None
        return SandboxResult(
            stdout=out.text(),
            stderr=err.text(),
            exit_code=exit_code,
            timed_out=killed_reason == "timeout",
            truncated=out.truncated or err.truncated,
            killed_reason=killed_reason or self._killed_reason(exit_code),
            duration_s=duration,
            sandboxed=self.sandboxed,
            max_output_bytes=out.limit,
        )

    def _killed_reason(self, exit_code: int | None) -> str | None:
        if self.cgroup is not None and self.cgroup.oom_killed():
            return "memory"
        if exit_code == 128 + signal.SIGXCPU:
            return "cpu"
        if exit_code is not None and 128 < exit_code < 128 + 65:
            return "signal"
        return None

    def kill_now(self) -> None:
        """SIGKILL the sandbox's process group and everything in its cgroups (sync, idempotent)."""
        # Unsandboxed, children may outlive the leader in its group; a reaped
        # sandboxed bwrap's group is empty (its child made its own session).
        if self.proc.returncode is None or not self.sandboxed:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def _close_pipes(self) -> None:
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.abort()
        for transport, _ in self._readers:
            transport.close()

    async def destroy(self) -> Cgroup | None:
        """Kill everything, reap it, close the pipes, remove the scratch folder.

        Returns:
            The sandbox's (now empty) cgroup, for the caller to ``remove()``, off
            the call's path; None without one.
        """
        self.kill_now()
        await self._exit.wait()
        self._close_pipes()
        # SIGKILLed processes take a moment to exit: when this returns, none is left.
        if self.cgroup is not None and not await self.cgroup.wait_empty():
            logger.warning("sandbox: processes of %s survive SIGKILL", self.cgroup.dirs[0])
        try:
            os.rmdir(self.scratch)  # the common case: the program left no files
        except OSError:
            await asyncio.to_thread(_rmtree, self.scratch)
        group, self.cgroup = self.cgroup, None
        return group

    def destroy_now(self) -> None:
        """Best-effort synchronous :meth:`destroy` (finalizers; the loop may be gone)."""
        self.kill_now()
        self._exit.close()
        if self.cgroup is not None:
            self.cgroup.remove_now()
        _rmtree(self.scratch)


class _ExitWatch:
    """The exit status of a ``Popen`` child as an awaitable, reaped on the event loop.

    A pidfd (Linux 5.3+) becomes readable when the process exits; without one a
    daemon thread waits for it.
    """

    def __init__(self, proc: subprocess.Popen) -> None:
        self._proc = proc
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[int] = self._loop.create_future()
        self._fd: int | None = None
        try:
            self._fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            threading.Thread(target=self._wait_in_thread, daemon=True).start()
        else:
            self._loop.add_reader(self._fd, self._reap)

    def _reap(self) -> None:
        self.close()
        if not self._done.done():
            self._done.set_result(self._proc.wait())  # exited: returns at once

    def _wait_in_thread(self) -> None:
        code = self._proc.wait()
        try:
            self._loop.call_soon_threadsafe(self._set, code)
        except RuntimeError:  # the loop is closed
            pass

    def _set(self, code: int) -> None:
        if not self._done.done():
            self._done.set_result(code)

    async def wait(self) -> int:
        """The exit status (negative: killed by that signal), once it exited."""
        return await asyncio.shield(self._done)

    def close(self) -> None:
        """Stop watching (the process is reaped by whoever waits for it next)."""
        if self._fd is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None


def _spawn(argv: list[str], fds: tuple[int, int, int], scratch: str, sandboxed: bool):
    # Popen blocks the loop for the fork and exec (~1 ms), as asyncio's own
    # create_subprocess_exec does.
    return subprocess.Popen(
        argv,
        stdin=fds[0],
        stdout=fds[1],
        stderr=fds[2],
        cwd=scratch,
        env={} if sandboxed else _bare_env(scratch),
        start_new_session=True,  # its own process group, killed as one
    )


def remove_stale_scratch(scratch_root: str, min_age_s: float = 3600.0) -> None:
    """Remove scratch folders left in ``scratch_root`` by hosts that died without cleaning up.

    Only folders whose host pid is gone and that are older than ``min_age_s``: a
    folder shared with another pid namespace (a container) may look orphaned here.
    """
    try:
        names = os.listdir(scratch_root)
    except OSError:
        return
    now = time.time()
    for name in names:
        pid = name[len(SCRATCH_PREFIX) :].split("-")[0]
        if not name.startswith(SCRATCH_PREFIX) or not pid.isdigit():
            continue
        path = os.path.join(scratch_root, name)
        try:
            old = now - os.stat(path).st_mtime > min_age_s
        except OSError:
            continue
        if old and not os.path.exists(f"/proc/{pid}"):
            _rmtree(path)


def _exit_code(returncode: int | None) -> int | None:
    # Popen reports death by signal N as -N; bwrap (and a shell) as 128+N.
    if returncode is not None and returncode < 0:
        return 128 - returncode
    return returncode


def _bare_env(scratch: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"}


def _rmtree(path: str) -> None:
    def make_writable(func: Callable, p: str, _exc: object) -> None:
        # The program may have left folders without write or search permission.
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=make_writable)


__all__ = ["SCRATCH_PREFIX", "SandboxError", "SandboxProcess", "remove_stale_scratch"]
