"""``Sandbox``: run untrusted, model-written Python on this machine, with a warm pool.

Why a sandbox of our own: a tool-integrated RL run executes thousands of
programs written by a model that is being optimised, on the user's machine,
next to their keys and data. Each program is treated as hostile. It runs in a
fresh bubblewrap sandbox (own user, pid, network, ipc, uts, cgroup and mount
namespaces; a read-only view of only the interpreter; a private scratch folder;
no host environment variables) under limits on wall time, CPU time, memory,
process count and output size. What it does, crash, hang, flood or attack,
comes back as a ``SandboxResult``; it never raises into the host.

Starting a sandbox costs more than running a small program, so a pool keeps
``pool_size`` sandboxes started (the interpreter up and limited, waiting on
stdin for its program). A call takes one, sends the code, and destroys it
afterwards; a background task starts a replacement. Nothing is shared between
two programs.

Fail closed: where bubblewrap is missing or cannot create namespaces, or the
process limit cannot be enforced (no writable pids cgroup), construction raises
``SandboxUnavailableError`` saying what to install or allow. Two explicit,
logged flags relax that: ``allow_weaker_limits`` and ``allow_unsandboxed``.

Example:
    >>> import asyncio
    >>> async def main():
    ...     async with Sandbox(SandboxConfig(pool_size=2, timeout_s=5)) as sandbox:
    ...         result = await sandbox.run("print(sum(range(10)))")
    ...         return result.stdout.strip(), result.exit_code
    >>> asyncio.run(main())  # doctest: +SKIP
    ('45', 0)

A ``Sandbox`` belongs to the event loop that first uses it (its processes are
that loop's); see ``areal_env/resources.py`` for sharing one across envs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
import tempfile
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from areal_env.sandbox.cgroups import Cgroup, CgroupFactory
from areal_env.sandbox.config import SandboxConfig, SandboxResult
from areal_env.sandbox.isolation import (
    Layout,
    build_layout,
    bwrap_argv,
    bwrap_version,
    find_bwrap,
    probe_bwrap,
    python_argv,
    python_info,
)
from areal_env.sandbox.process import SandboxError, SandboxProcess, remove_stale_scratch

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "Install bubblewrap: `apt-get install bubblewrap` (Debian/Ubuntu), "
    "`dnf install bubblewrap` (Fedora/RHEL), `pacman -S bubblewrap` (Arch). In a container, "
    "user namespaces must be allowed (e.g. `docker run --security-opt seccomp=unconfined "
    "--security-opt apparmor=unconfined`, or `--privileged`)."
)

_BWRAP_PROCESSES = 2
"""bubblewrap's own processes in a sandbox's pids cgroup: the monitor and pid 1."""


class SandboxUnavailableError(RuntimeError):
    """This machine cannot run model code safely with the given config.

    Raised at construction of a :class:`Sandbox`, never per call; the message says
    what is missing and what to install or which flag to set.
    """


@dataclass(frozen=True, slots=True)
class _Host:
    bwrap: str | None
    """Path of a bubblewrap that works here, or None."""
    bwrap_problem: str
    """Why bubblewrap cannot be used (empty when it can)."""
    layout: Layout
    cgroups: CgroupFactory | None
    cgroup_note: str
    """What the cgroups enforce, or why they cannot be used."""


_HOSTS: dict[tuple[str, str, bool, tuple[str, ...]], _Host] = {}
"""Successful host checks, per setting; a failed one is probed again next time."""


def _check_host(bwrap: str, python: str, site_packages: bool, ro_paths: tuple[str, ...]) -> _Host:
    """Probe once per process and setting: bubblewrap, the interpreter's view, the cgroups."""
    key = (bwrap, python, site_packages, ro_paths)
    host = _HOSTS.get(key)
    if host is None:
        host = _probe_host(*key)
        if host.bwrap is not None and host.cgroups is not None:
            _HOSTS[key] = host
    return host


def _probe_host(bwrap: str, python: str, site_packages: bool, ro_paths: tuple[str, ...]) -> _Host:
    try:
        python_info(python)
    except (OSError, ValueError) as e:
        raise SandboxUnavailableError(f"sandbox.python={python!r} cannot be used: {e}") from e
    cgroups, cgroup_note = CgroupFactory.probe()
    bare = _bare_layout(python, site_packages)
    path = find_bwrap(bwrap)
    if path is None:
        return _Host(None, f"bubblewrap ({bwrap!r}) was not found", bare, cgroups, cgroup_note)
    try:
        layout = build_layout(python, site_packages=site_packages, ro_paths=ro_paths)
    except OSError as e:
        return _Host(None, f"cannot build the sandbox's view: {e}", bare, cgroups, cgroup_note)
    problem = probe_bwrap(path, layout)
    if problem is not None:
        return _Host(None, problem, bare, cgroups, cgroup_note)
    return _Host(path, "", layout, cgroups, cgroup_note)


def _bare_layout(python: str, site_packages: bool) -> Layout:
    executable = str(python_info(python)["executable"])
    flags = ["-I", "-B", "-u", "-X", "utf8"] + ([] if site_packages else ["-S"])
    return Layout(python=executable, python_flags=flags)


class Sandbox:
    """Runs one program per call in a fresh sandbox, from a warm pool; see the module docstring.

    Construction checks the host once per process and setting (it runs the
    interpreter, ``ldd`` and one sandbox: ~0.5 s, blocking, the first time).

    Args:
        config: limits and isolation; the defaults when None.

    Raises:
        SandboxUnavailableError: at construction, when code could not be run safely
            here and the config does not allow weaker isolation or limits.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config = config or SandboxConfig()
        python = config.python or sys.executable
        if not python:
            raise SandboxUnavailableError("sandbox.python is empty and sys.executable is unknown")
        host = _check_host(config.bwrap, python, config.site_packages, tuple(config.ro_paths))
        self.sandboxed = host.bwrap is not None
        """False only when running unsandboxed by the ``allow_unsandboxed`` opt-in."""
        if not self.sandboxed:
            if not config.allow_unsandboxed:
                raise SandboxUnavailableError(
                    f"cannot sandbox model code: {host.bwrap_problem}. {INSTALL_HINT} "
                    "To run model code WITHOUT isolation anyway (it could read your files, "
                    "use the network and signal your processes), set "
                    "sandbox.allow_unsandboxed=true."
                )
            logger.warning(
                "UNSANDBOXED EXECUTION of model code: bubblewrap cannot be used (%s) and "
                "sandbox.allow_unsandboxed=true. Model-written programs run as plain "
                "subprocesses with uid %d's full rights: they can read and write your files, "
                "reach the network and signal your processes; only resource limits apply. %s",
                host.bwrap_problem,
                os.getuid(),
                INSTALL_HINT,
            )
        if host.cgroups is None:
            if not config.allow_weaker_limits:
                raise SandboxUnavailableError(
                    f"cannot enforce sandbox.max_processes: {host.cgroup_note}. A fork bomb "
                    "would be bounded only by the wall-clock limit. Run where a pids cgroup "
                    "is writable (cgroup v1 /sys/fs/cgroup/pids, or cgroup v2 with the pids "
                    "controller delegated), or set sandbox.allow_weaker_limits=true."
                )
            logger.warning(
                "sandbox: the process limit is NOT enforced (%s); sandbox.allow_weaker_limits=true",
                host.cgroup_note,
            )
        self._host = host
        self.enforcement = self._describe(host)
        """What enforces each limit here (isolation, processes, memory, cpu, wall, output)."""
        logger.info("sandbox: %s", "; ".join(f"{k}: {v}" for k, v in self.enforcement.items()))
        self._scratch_root = config.scratch_root or tempfile.gettempdir()
        remove_stale_scratch(self._scratch_root)
        self._ready: collections.deque[SandboxProcess] = collections.deque()
        self._live: set[SandboxProcess] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._filled: asyncio.Event | None = None
        self._refill_task: asyncio.Task[None] | None = None
        self._keeper: AsyncGenerator[None, None] | None = None
        self._cleanups: set[asyncio.Task[None]] = set()
        self._groups: set[Cgroup] = set()  # emptied cgroups not removed yet
        self._closed = False
        # A Sandbox dropped without aclose() still kills its processes and cleans up.
        self._finalizer = weakref.finalize(self, _destroy_all_now, self._live, self._groups)

    def _describe(self, host: _Host) -> dict[str, str]:
        c = self.config
        memory = f"RLIMIT_AS {c.memory_mb} MB per process"
        if host.cgroups is not None and host.cgroups.memory_parent is not None:
            memory += f", cgroup {c.memory_mb} MB for the whole sandbox"
        if self.sandboxed:
            isolation = (
                f"{bwrap_version(str(host.bwrap))}: user, pid, net, ipc, uts, cgroup and mount "
                f"namespaces; read-only: {len(host.layout.dirs)} folders and "
                f"{len(host.layout.files)} files; writable: the scratch folder"
            )
        else:
            isolation = "NONE (sandbox.allow_unsandboxed)"
        return {
            "isolation": isolation,
            "processes": (
                f"{host.cgroup_note}, at most {c.max_processes}"
                if host.cgroups is not None
                else f"NOT ENFORCED ({host.cgroup_note})"
            ),
            "memory": memory,
            "cpu": f"RLIMIT_CPU {c.cpu_s} s per process",
            "wall": f"{c.timeout_s} s per call",
            "output": f"{c.max_output_bytes} bytes of stdout and of stderr",
        }

    @property
    def warm(self) -> int:
        """Sandboxes started and waiting for a program."""
        return len(self._ready)

    async def start(self) -> None:
        """Bind to the running loop and start filling the pool (``run`` does it when needed)."""
        await self._bind_loop()

    async def wait_filled(self) -> None:
        """Wait until the pool holds ``pool_size`` started sandboxes."""
        await self._bind_loop()
        assert self._filled is not None
        await self._filled.wait()

    async def run(
        self, code: str, stdin: str | None = None, *, timeout_s: float | None = None
    ) -> SandboxResult:
        """Run ``code`` as a program's ``__main__`` in a fresh sandbox.

        Args:
            code: Python source, run as a script (``print`` goes to ``stdout``).
            stdin: the program's standard input (empty when None).
            timeout_s: wall-clock limit of this call; ``config.timeout_s`` when None.

        Returns:
            What the program did; errors of the program are described, not raised.

        Raises:
            SandboxError: when the host could not start a sandbox.
            RuntimeError: after ``aclose``, or from another event loop.
        """
        await self._bind_loop()
        assert self._wake is not None
        box = await self._take()
        if box is None:
            box = await self._start_one()
        if not self._ready:
            self._wake.set()  # the pool ran dry: refill now, calls are queueing
        try:
            return await box.run(code, stdin, timeout_s=timeout_s or self.config.timeout_s)
        finally:
            box.kill_now()
            try:
                await self._destroy(box)
            finally:
                # Refill after the call, not during it: a sandbox starting competes
                # with the program for CPU (3 ms of a 10 ms call on 2 busy cores).
                self._wake.set()

    async def aclose(self) -> None:
        """Stop the pool and kill every sandbox, running programs included. Safe to call twice."""
        self._closed = True
        loop = self._loop
        if loop is not None and loop is not asyncio.get_running_loop():
            # Its processes belong to the other loop: kill them without that loop.
            self._ready.clear()
            _destroy_all_now(self._live, self._groups)
            return
        await self._release_loop()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _bind_loop(self) -> None:
        if self._closed:
            raise RuntimeError("this Sandbox is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            if not self._loop.is_closed():
                raise RuntimeError(
                    "this Sandbox is in use on another event loop, which owns its processes; "
                    "make one Sandbox per loop (e.g. with ResourceRegistry.aget on that loop)"
                )
            # That loop ended without shutting down its async generators: clean up here.
            self._ready.clear()
            _destroy_all_now(self._live, self._groups)
            self._loop = None
        if self._loop is None:
            self._loop = loop
            self._wake, self._filled = asyncio.Event(), asyncio.Event()
            if self.config.pool_size > 0:
                self._refill_task = loop.create_task(self._refill(), name="sandbox_pool_refill")
            else:
                self._filled.set()
            # Finalised by the loop's shutdown (asyncio.run, asyncio.Runner): the pool's
            # processes are released there, on their own loop, and a later loop may
            # use this Sandbox afresh.
            self._keeper = self._release_at_loop_shutdown()
            await self._keeper.__anext__()
        task = self._refill_task
        if task is not None and task.done() and not task.cancelled():
            raise RuntimeError("the sandbox pool's refill task exited unexpectedly") from (
                task.exception()
            )

    async def _release_at_loop_shutdown(self) -> AsyncGenerator[None, None]:
        loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            if self._loop is loop:  # not released yet, nor bound to a later loop
                await self._release_loop()

    async def _release_loop(self) -> None:
        # Shutdown order: forget the loop and stop the producer first, so that it
        # starts nothing new; then destroy what exists (idle and running); then
        # remove the cgroups whose removal a loop shutdown may have cancelled.
        refill, self._refill_task, self._loop = self._refill_task, None, None
        if refill is not None:
            refill.cancel()
            assert self._wake is not None
            self._wake.set()  # it also stops on its own once woken with no loop
            await asyncio.gather(refill, return_exceptions=True)
        self._ready.clear()
        await asyncio.gather(*(self._destroy(b) for b in list(self._live)))
        # Removal tasks are cancelled by a loop's shutdown before this runs: finish here.
        await asyncio.gather(*self._cleanups, return_exceptions=True)
        for group in list(self._groups):
            await group.remove()
            self._groups.discard(group)

    async def _take(self) -> SandboxProcess | None:
        assert self._filled is not None
        while self._ready:
            box = self._ready.popleft()
            if self.config.pool_size:
                self._filled.clear()
            if box.alive:
                return box
            await self._destroy(box)  # died while waiting (killed from outside)
        return None

    async def _start_one(self) -> SandboxProcess:
        box = await SandboxProcess.start(
            self._argv,
            scratch_root=self._scratch_root,
            cgroups=self._host.cgroups,
            cgroup_limits=(
                self.config.max_processes + (_BWRAP_PROCESSES if self.sandboxed else 0),
                self.config.memory_mb << 20,
            ),
            sandboxed=self.sandboxed,
            max_output_bytes=self.config.max_output_bytes,
        )
        self._live.add(box)
        return box

    async def _destroy(self, box: SandboxProcess) -> None:
        try:
            group = await box.destroy()
        finally:
            self._live.discard(box)
        if group is not None:
            # Its processes are dead and reaped; removing the folder can wait
            # (milliseconds of kernel locking) and is not on the call's path.
            self._groups.add(group)
            task = asyncio.create_task(self._remove_group(group), name="sandbox_cgroup_remove")
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)

    async def _remove_group(self, group: Cgroup) -> None:
        await group.remove()
        self._groups.discard(group)

    def _argv(self, scratch: str) -> list[str]:
        c, host = self.config, self._host
        limits = (c.cpu_s, c.memory_mb << 20, c.max_file_mb << 20)
        command = python_argv(host.layout, limits)
        if host.bwrap is None:
            return command
        return bwrap_argv(host.bwrap, host.layout, scratch, command, c.memory_mb << 20)

    async def _refill(self) -> None:
        """Keep ``pool_size`` sandboxes started; woken by ``run`` after each take."""
        assert self._wake is not None and self._filled is not None
        failures = 0
        while self._loop is not None:  # None: released (even if a cancellation was lost)
            if len(self._ready) >= self.config.pool_size:
                self._filled.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                box = await self._start_one()
            except SandboxError as e:
                failures += 1
                logger.warning("sandbox pool: start failed (%d in a row): %s", failures, e)
                await asyncio.sleep(min(0.05 * 2**failures, 5.0))
                continue
            failures = 0
            if self._loop is None:
                await self._destroy(box)
                return
            self._ready.append(box)


def _destroy_all_now(live: set[SandboxProcess], groups: set[Cgroup]) -> None:
    for box in list(live):
        box.destroy_now()
    live.clear()
    for group in list(groups):
        group.remove_now()
    groups.clear()


__all__ = ["INSTALL_HINT", "Sandbox", "SandboxError", "SandboxUnavailableError"]
