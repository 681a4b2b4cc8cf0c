"""Fixtures of the sandbox tests: a sandbox factory, and host-side checks for leftovers.

Where bubblewrap or a writable pids cgroup is missing, tests that need a real
sandbox are skipped, unless ``CI`` is set: CI must run them, so there they fail
(the same rule as ``shared_data`` in ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from areal_env.sandbox import Sandbox, SandboxConfig


def our_cgroups(busy_only: bool = False) -> list[str]:
    """Sandbox cgroups of this test process that exist (or that hold processes)."""
    found = []
    prefix = f"areal-sandbox-{os.getpid()}-"
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(root, d) for d in dirs if d.startswith(prefix)]
        dirs[:] = [d for d in dirs if not d.startswith(prefix)]
    if busy_only:
        found = [d for d in found if _read(os.path.join(d, "cgroup.procs")).strip()]
    return found


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def leftover_processes(marker: str | None = None) -> list[int]:
    """Host pids still in one of our sandbox cgroups, or whose command line holds ``marker``."""
    prefix = f"areal-sandbox-{os.getpid()}-"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                in_group = prefix in f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                has_marker = marker is not None and marker.encode() in f.read()
        except OSError:
            continue
        if in_group or has_marker:
            found.append(int(entry))
    return found


def kill_leftovers(marker: str | None = None) -> None:
    for pid in leftover_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """Where the sandboxes of one test put their scratch folders (empty between calls)."""
    root = tmp_path / "scratch"
    root.mkdir()
    return root


@pytest.fixture
async def make_sandbox(
    sandbox_available: None, scratch_root: Path
) -> AsyncIterator[Callable[..., Sandbox]]:
    """``make_sandbox(**config)``: a Sandbox (pool_size=0 unless given), closed after the test."""
    made: list[Sandbox] = []

    def make(**overrides: Any) -> Sandbox:
        settings: dict[str, Any] = {"pool_size": 0, "scratch_root": str(scratch_root)}
        settings.update(overrides)
        sandbox = Sandbox(SandboxConfig(**settings))
        made.append(sandbox)
        return sandbox

    try:
        yield make
    finally:
        for sandbox in made:
            await sandbox.aclose()
        kill_leftovers()


@pytest.fixture
def leftovers() -> Callable[..., list[int]]:
    """``leftovers(marker=None)``: see ``leftover_processes``."""
    return leftover_processes


@pytest.fixture
def cgroups_left() -> Callable[[], list[str]]:
    """``cgroups_left()``: see ``our_cgroups``."""
    return our_cgroups


@pytest.fixture
def host_clean(scratch_root: Path) -> Callable[[Sandbox], Awaitable[None]]:
    """``await host_clean(sandbox)`` after an attack: nothing of it runs, its scratch
    folder is gone (checked with pool_size=0), its cgroups are empty (kept for
    reuse), and a new program works."""

    async def check(sandbox: Sandbox) -> None:
        assert leftover_processes() == [], "a process of the finished call is still running"
        if sandbox.config.pool_size == 0:
            assert os.listdir(scratch_root) == [], "the scratch folder was not removed"
            assert our_cgroups(busy_only=True) == [], "a cgroup of the call holds processes"
        result = await sandbox.run("print('next call works')")
        assert result.ok and result.stdout == "next call works\n", result

    return check
