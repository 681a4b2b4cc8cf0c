"""Fail closed: no bubblewrap or no process limit means no model code, unless opted out loudly.

These tests need no working sandbox: they simulate a missing or broken
bubblewrap with ``SandboxConfig(bwrap=...)`` and missing cgroups by patching the
probe, so they run on every machine.
"""

from __future__ import annotations

import logging
import stat

import pytest

from areal_env.sandbox import Sandbox, SandboxConfig, SandboxUnavailableError
from areal_env.sandbox import sandbox as sandbox_module
from areal_env.sandbox.cgroups import CgroupFactory


@pytest.fixture(autouse=True)
def fresh_host_checks():
    """The host checks are cached per process; these tests change what they find."""
    sandbox_module._HOSTS.clear()
    yield
    sandbox_module._HOSTS.clear()


def test_missing_bwrap_is_one_clear_error(tmp_path):
    with pytest.raises(SandboxUnavailableError) as info:
        Sandbox(SandboxConfig(bwrap=str(tmp_path / "no-such-bwrap")))
    message = str(info.value)
    assert "no-such-bwrap" in message and "was not found" in message
    assert "apt-get install bubblewrap" in message
    assert "allow_unsandboxed" in message


def test_bwrap_that_cannot_make_namespaces_is_refused(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(SandboxUnavailableError, match="No permissions to create new namespace"):
        Sandbox(SandboxConfig(bwrap=str(fake)))


def test_a_bad_config_value_names_its_key():
    with pytest.raises(ValueError, match="sandbox.timeout_s"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ValueError, match="sandbox.ro_paths"):
        SandboxConfig(ro_paths=["relative/path"])


async def test_unsandboxed_opt_in_runs_and_warns(tmp_path, caplog):
    config = SandboxConfig(
        bwrap=str(tmp_path / "no-such-bwrap"),
        allow_unsandboxed=True,
        allow_weaker_limits=True,  # so that it runs on machines without cgroups too
        pool_size=1,
        timeout_s=1.0,
        max_output_bytes=100,
        scratch_root=str(tmp_path),
    )
    with caplog.at_level(logging.WARNING, logger="areal_env.sandbox"):
        sandbox = Sandbox(config)
    assert any("UNSANDBOXED" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert not sandbox.sandboxed and sandbox.enforcement["isolation"].startswith("NONE")
    try:
        result = await sandbox.run("import sys; print(sys.stdin.read() * 2)", stdin="ab")
        assert result.ok and result.stdout == "abab\n" and not result.sandboxed, result
        # The limits still hold without the isolation.
        result = await sandbox.run("while True:\n    print('x' * 50)")
        assert result.truncated and result.killed_reason == "output", result
        result = await sandbox.run("import time; time.sleep(10)")
        assert result.timed_out, result
    finally:
        await sandbox.aclose()
    assert [p for p in tmp_path.iterdir() if p.name.startswith("areal-sandbox-")] == []


def test_without_a_pids_cgroup_it_refuses_unless_allowed(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(
        CgroupFactory, "probe", classmethod(lambda cls: (None, "no pids controller (simulated)"))
    )
    # The bwrap check is irrelevant here: unsandboxed keeps the test machine-independent.
    base = {"bwrap": str(tmp_path / "none"), "allow_unsandboxed": True}
    with pytest.raises(SandboxUnavailableError, match="allow_weaker_limits"):
        Sandbox(SandboxConfig(**base))
    with caplog.at_level(logging.WARNING, logger="areal_env.sandbox"):
        sandbox = Sandbox(SandboxConfig(**base, allow_weaker_limits=True))
    assert "NOT ENFORCED" in sandbox.enforcement["processes"]
    assert any("process limit is NOT enforced" in r.getMessage() for r in caplog.records)
