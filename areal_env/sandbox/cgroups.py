"""Per-sandbox cgroups: the process limit that root cannot escape, and the whole-sandbox memory.

``RLIMIT_NPROC`` does not bind uid 0, and the sandbox runs as root mapped to the
host's uid (often root), so a fork bomb is stopped by a cgroup's ``pids.max``
instead. Each sandbox gets its own group under the group this process is in
(never above it: that would leave the limits the host itself runs under). A
memory group, where writable, bounds the memory of all the sandbox's processes
together (RLIMIT_AS bounds each one). cgroup v1 (a hierarchy per controller)
and v2 (one unified hierarchy) are both handled; anything that fails while
probing counts as "not available", so the caller can fail closed.

A sandbox joins its groups before bubblewrap starts: it is launched through
``/bin/sh -c 'echo $$ > .../cgroup.procs; exec bwrap ...'`` (``JOIN_AND_EXEC``),
so every process it ever forks is born inside.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

PREFIX = "areal-sandbox"
"""Group names are ``{PREFIX}-{host pid}-{n}``; stale ones of dead hosts are removed."""

JOIN_AND_EXEC = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
"""``sh -c JOIN_AND_EXEC sh PROCS_FILE... -- COMMAND...``: join the groups, then run."""

JOIN_FAILED = 125
"""Exit status of ``JOIN_AND_EXEC`` when it could not join a group."""

_counter = itertools.count()


@dataclass(kw_only=True, slots=True, eq=False)  # compared (and hashed) by identity
class Cgroup:
    """The groups of one sandbox: join them, kill what is in them, remove them."""

    dirs: list[str]
    """One folder per hierarchy (v1: pids and maybe memory; v2: one)."""
    memory_dir: str | None
    """The folder holding the memory controller's files, if any."""
    version: int
    """1 or 2."""

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a new process writes its pid to, to join."""
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        """Processes now in the groups."""
        found: set[int] = set()
        for path in self.procs_files:
            try:
                with open(path) as f:
                    found.update(int(line) for line in f if line.strip())
            except OSError:
                pass
        return found

    def kill_all(self) -> None:
        """SIGKILL every process in the groups, again while new ones appear (forks race)."""
        killed: set[int] = set()
        for _ in range(100):
            new = self.pids() - killed
            if not new:
                return
            for pid in new:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed |= new

    async def wait_empty(self, timeout_s: float = 2.0) -> bool:
        """Kill and wait until no process is left in the groups; False if some stay."""
        for attempt in range(int(timeout_s / 0.002)):
            if not self.pids():
                return True
            self.kill_all()
            await asyncio.sleep(0.0005 if attempt < 10 else 0.002)
        return not self.pids()

    def oom_killed(self) -> bool:
        """True if the kernel's OOM killer killed a process of this group's memory limit."""
        if self.memory_dir is None:
            return False
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            with open(os.path.join(self.memory_dir, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value) > 0
        except OSError:
            pass
        return False

    async def remove(self) -> None:
        """Kill what is left, then remove the folders (retrying while the kernel reaps).

        ``rmdir`` runs in a worker thread: it can wait milliseconds for the
        cgroup lock, which a sandbox joining its group holds through an RCU
        grace period.
        """
        for d in self.dirs:
            for attempt in range(200):
                try:
                    await asyncio.to_thread(os.rmdir, d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY: processes still exiting
                    self.kill_all()
                    await asyncio.sleep(0.001 if attempt < 20 else 0.01)
            else:
                logger.warning("sandbox: could not remove cgroup %s; left for later cleanup", d)

    def remove_now(self) -> None:
        """Synchronous :meth:`remove`, for finalizers (waits up to ~0.2 s for exits)."""
        for d in self.dirs:
            for _ in range(200):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    self.kill_all()
                    time.sleep(0.001)


class CgroupFactory:
    """Makes a :class:`Cgroup` per sandbox where this process's cgroups are writable.

    Build it with :meth:`probe`, which returns None (and the reason) when the pids
    controller is not usable here.
    """

    def __init__(self, pids_parent: str, memory_parent: str | None, version: int) -> None:
        self.pids_parent = pids_parent
        self.memory_parent = memory_parent
        self.version = version

    @property
    def description(self) -> str:
        """What is enforced where, for the start-up log."""
        memory = "and memory " if self.memory_parent else ""
        return f"cgroup v{self.version} pids {memory}under {self.pids_parent}"

    @classmethod
    def probe(cls) -> tuple[CgroupFactory | None, str]:
        """A factory and a description, or None and why cgroups cannot be used."""
        try:
            factory = cls._find()
        except (OSError, ValueError) as e:
            return None, f"cannot find this process's cgroups: {e}"
        if isinstance(factory, str):
            return None, factory
        try:
            factory.create(pids_max=8, memory_bytes=64 << 20).remove_now()
        except OSError as e:
            return None, f"cannot create a cgroup under {factory.pids_parent}: {e}"
        factory.remove_stale()
        return factory, factory.description

    @classmethod
    def _find(cls) -> CgroupFactory | str:
        own: dict[str, str] = {}  # controller ("" for v2) -> path of this process's group
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(","):
                    own[c] = path
        mounts: dict[str, tuple[str, str]] = {}  # controller ("" for v2) -> (mount point, root)
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                fstype, options = fields[sep + 1], fields[sep + 3].split(",")
                if fstype == "cgroup2":
                    mounts.setdefault("", (fields[4], fields[3]))
                elif fstype == "cgroup":
                    for c in ("pids", "memory"):
                        if c in options:
                            mounts.setdefault(c, (fields[4], fields[3]))

        def folder(controller: str) -> str | None:
            if controller not in own or controller not in mounts:
                return None
            point, root = mounts[controller]
            rel = os.path.relpath(own[controller], root)
            if rel.startswith(".."):
                return None
            return os.path.normpath(os.path.join(point, rel))

        pids_v1 = folder("pids")
        if pids_v1 is not None:
            return cls(pids_v1, folder("memory"), 1)
        unified = folder("")
        if unified is None:
            return "no pids cgroup controller is mounted (cgroup v1 pids or v2)"
        with open(os.path.join(unified, "cgroup.controllers")) as f:
            available = f.read().split()
        if "pids" not in available:
            return f"the cgroup v2 group {unified} does not offer the pids controller"
        with open(os.path.join(unified, "cgroup.subtree_control")) as f:
            enabled = f.read().split()
        wanted = [c for c in ("pids", "memory") if c in available and c not in enabled]
        for c in wanted:  # fails (EBUSY) in a non-root group that holds processes
            with open(os.path.join(unified, "cgroup.subtree_control"), "w") as f:
                f.write(f"+{c}")
        memory = unified if "memory" in available else None
        return cls(unified, memory, 2)

    def create(self, *, pids_max: int, memory_bytes: int | None) -> Cgroup:
        """New empty groups with the limits written.

        Raises:
            OSError: when a folder or limit file cannot be written (the caller
                treats it as a failed sandbox start).
        """
        name = f"{PREFIX}-{os.getpid()}-{next(_counter)}"
        pids_dir = os.path.join(self.pids_parent, name)
        os.mkdir(pids_dir)
        group = Cgroup(dirs=[pids_dir], memory_dir=None, version=self.version)
        try:
            _write(pids_dir, "pids.max", pids_max)
            if self.memory_parent is not None and memory_bytes is not None:
                if self.version == 1:
                    mem_dir = os.path.join(self.memory_parent, name)
                    os.mkdir(mem_dir)
                    group.dirs.append(mem_dir)
                    _write(mem_dir, "memory.limit_in_bytes", memory_bytes)
                    if os.path.exists(os.path.join(mem_dir, "memory.memsw.limit_in_bytes")):
                        _write(mem_dir, "memory.memsw.limit_in_bytes", memory_bytes)
                else:
                    mem_dir = pids_dir
                    _write(mem_dir, "memory.max", memory_bytes)
                    if os.path.exists(os.path.join(mem_dir, "memory.swap.max")):
                        _write(mem_dir, "memory.swap.max", 0)
                group.memory_dir = mem_dir
        except OSError:
            group.remove_now()
            raise
        return group

    def remove_stale(self) -> None:
        """Remove empty groups left by sandbox hosts that died without cleaning up."""
        for parent in {self.pids_parent, self.memory_parent} - {None}:
            assert parent is not None
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                parts = name.split("-")
                if not name.startswith(PREFIX + "-") or len(parts) != 4:
                    continue
                if parts[2].isdigit() and not os.path.exists(f"/proc/{parts[2]}"):
                    try:
                        os.rmdir(os.path.join(parent, name))
                    except OSError:
                        pass


def _write(folder: str, name: str, value: int) -> None:
    with open(os.path.join(folder, name), "w") as f:
        f.write(str(value))


__all__ = ["JOIN_AND_EXEC", "JOIN_FAILED", "PREFIX", "Cgroup", "CgroupFactory"]
