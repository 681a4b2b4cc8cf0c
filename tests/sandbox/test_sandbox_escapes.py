"""Model code written to escape must fail, and each test checks the HOST side.

Every test runs the attack, asserts what the host sees (its file untouched, its
server never contacted, its secret not printed, its processes alive, no process
of the call left), then that the scratch folder is gone, no cgroup of the call
holds a process, and the next call works (``host_clean``).

Mutations these tests were seen to catch (each made by hand in
``areal_env/sandbox``, the tests run with ``CI=1``, the change reverted):

- ``--ro-bind / /`` instead of the narrow view (``isolation.bwrap_argv``; the
  scratch moved to ``/mnt``): the secret file is printed ->
  ``test_host_files_unreadable`` and ``test_only_the_interpreter_is_visible`` fail.
- ``--share-net`` added: the sandbox connects to the test's server ->
  ``test_no_network`` fails.
- no pid namespace (``--unshare-all`` replaced by the other five ``--unshare-*``)
  and no cgroup kill (``Cgroup.kill_all`` a no-op): the host's processes show in
  ``/proc`` and the daemon survives the call ->
  ``test_host_environment_and_processes_invisible`` and
  ``test_detached_child_does_not_outlive_the_call`` fail. (Not run against
  ``test_killing_the_parent_and_everyone``: without a pid namespace it would
  SIGKILL pytest; its ``kill(-1)`` is guarded for the same reason.)
- the host environment passed on (``env=None`` in ``process._spawn``, no
  ``--clearenv``): the secret variable is printed -> the environment test fails.
- ``--remount-ro /`` removed: writing ``/probe`` inside succeeds (in the
  sandbox's own root, not the host's) -> ``test_cannot_write_outside_scratch`` fails.
- ``pids.max`` not written (``CgroupFactory.create``): 12 children start ->
  ``test_process_limit_holds`` fails (the fork bomb itself is never run unbounded).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from areal_env.sandbox.isolation import SCRATCH

REPO = Path(__file__).resolve().parents[2]


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def test_host_files_unreadable(make_sandbox, host_clean, tmp_path):
    secret = f"SECRET-{uuid.uuid4()}"
    secret_file = tmp_path / "secret.txt"  # outside the scratch folder
    secret_file.write_text(secret)
    targets = [
        str(secret_file),
        str(REPO / "README.md"),
        str(REPO / "pyproject.toml"),
        "/etc/shadow",
        "/etc/passwd",
        "/root/.bashrc",
        "/proc/1/root/etc/shadow",  # the sandbox's pid 1 is bwrap, rooted inside
        f"/proc/{os.getpid()}/environ",
    ]
    code = f"""
import os
for path in {targets!r}:
    try:
        with open(path) as f:
            print("OPENED", path, f.read()[:200])
    except OSError as e:
        print("DENIED", path, type(e).__name__)
import json
print("ROOT", json.dumps(os.listdir("/root") if os.path.exists("/root") else []))
print("WORK", os.path.exists({str(REPO)!r}), os.path.exists({str(tmp_path)!r}))
"""
    sandbox = make_sandbox()
    result = await sandbox.run(code)
    assert result.ok, result
    assert secret not in result.stdout
    assert "OPENED" not in result.stdout, result.stdout
    assert result.stdout.count("DENIED") == len(targets)
    # /root holds at most the way to the interpreter (e.g. pyenv's .pyenv), no home files.
    layout = sandbox._host.layout
    way_in = {
        Path(p).parts[2]
        for p in [*layout.dirs, *layout.files, *layout.symlinks]
        if p.startswith("/root/")
    }
    root_entries = json.loads(result.stdout.split("ROOT ")[1].splitlines()[0])
    assert set(root_entries) <= way_in, root_entries
    assert "WORK False False" in result.stdout
    assert secret_file.read_text() == secret
    await host_clean(sandbox)


async def test_only_the_interpreter_is_visible(make_sandbox, host_clean):
    """Walk the sandbox's whole filesystem: every file is the interpreter's or the scratch's."""
    sandbox = make_sandbox(max_output_bytes=1 << 20)
    layout = sandbox._host.layout
    allowed = [*layout.dirs, *layout.files, *layout.symlinks, *layout.hidden, SCRATCH, "/tmp"]
    code = """
import json, os, sys
allowed = json.loads(sys.stdin.read())
def ok(p):
    return any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed)
seen = bad = 0
for root, dirs, files in os.walk("/"):
    if root in ("/proc", "/dev") or root.startswith(("/proc/", "/dev/")):
        dirs[:] = []
        continue
    for name in files:
        seen += 1
        path = os.path.join(root, name)
        if not ok(path):
            bad += 1
            print("VISIBLE", path)
print("seen", seen, "bad", bad)
"""
    result = await sandbox.run(code, stdin=json.dumps(allowed))
    assert result.ok, result
    assert "VISIBLE" not in result.stdout, result.stdout[:2000]
    seen = int(result.stdout.split("seen ")[1].split()[0])
    assert seen > 100  # the standard library is there: the walk did look
    await host_clean(sandbox)


async def test_cannot_write_outside_scratch(make_sandbox, host_clean, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    new_file = tmp_path / "created-by-sandbox.txt"
    stdlib_probe = Path(os.__file__).parent / f"areal-probe-{uuid.uuid4().hex}.txt"
    targets = [str(victim), str(new_file), str(stdlib_probe), "/etc/areal-probe", "/probe"]
    code = f"""
import os
for path in {targets!r}:
    try:
        with open(path, "a") as f:
            f.write("pwned")
        print("WROTE", path)
    except OSError as e:
        print("DENIED", path, type(e).__name__)
with open("inside.txt", "w") as f:  # the scratch folder is writable
    f.write("mine")
print("SCRATCH", os.getcwd(), open("inside.txt").read(), open("/tmp/inside.txt").read())
"""
    sandbox = make_sandbox()
    try:
        result = await sandbox.run(code)
        assert result.ok, result
        assert "WROTE" not in result.stdout, result.stdout
        assert result.stdout.count("DENIED") == len(targets)
        assert f"SCRATCH {SCRATCH} mine mine" in result.stdout
        assert victim.read_text() == "original"
        assert not any(map(os.path.exists, [new_file, stdlib_probe, "/etc/areal-probe", "/probe"]))
    finally:
        stdlib_probe.unlink(missing_ok=True)  # only exists if the view was writable
    await host_clean(sandbox)


async def test_no_network(make_sandbox, host_clean):
    connections = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    code = f"""
import socket
for host in ("127.0.0.1", "1.1.1.1"):
    try:
        socket.create_connection((host, {port} if host == "127.0.0.1" else 80), timeout=3)
        print("CONNECTED", host)
    except OSError as e:
        print("FAILED", host, type(e).__name__)
print("interfaces", [name for _, name in socket.if_nameindex()])
"""
    sandbox = make_sandbox()
    try:
        result = await sandbox.run(code)
    finally:
        server.close()
        await server.wait_closed()
    assert result.ok, result
    assert "CONNECTED" not in result.stdout, result.stdout
    assert "FAILED 127.0.0.1 ConnectionRefusedError" in result.stdout
    assert connections == 0  # the host's server never saw the sandbox
    assert "interfaces ['lo']" in result.stdout  # a private loopback, nothing else
    await host_clean(sandbox)


async def test_host_environment_and_processes_invisible(make_sandbox, host_clean, monkeypatch):
    secret = f"SECRET-{uuid.uuid4()}"
    monkeypatch.setenv("AREAL_SANDBOX_TEST_SECRET", secret)
    host_cmdline = _read_bytes("/proc/self/cmdline")
    code = """
import os
print("ENV", dict(os.environ))
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("PIDS", pids)
for pid in pids:
    for name in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                print(name.upper(), pid, f.read().hex())
        except OSError as e:
            print(name.upper(), pid, type(e).__name__)
"""
    sandbox = make_sandbox()
    result = await sandbox.run(code)
    assert result.ok, result
    assert secret not in result.stdout and secret.encode().hex() not in result.stdout
    assert "AREAL_SANDBOX_TEST_SECRET" not in result.stdout
    assert host_cmdline.hex() not in result.stdout  # this test process is not visible
    pids = json.loads(result.stdout.split("PIDS ")[1].splitlines()[0])
    assert pids == [1, 2], pids  # bwrap's init and the program: nothing of the host
    await host_clean(sandbox)


async def test_detached_child_does_not_outlive_the_call(make_sandbox, host_clean, leftovers):
    marker = f"areal-detached-{uuid.uuid4().hex}"
    code = f"""
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:  # a daemon: new session, parent gone, renamed by exec
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(0.3)  # the daemon is running when the program ends
print("daemon started")
"""
    sandbox = make_sandbox()
    try:
        result = await sandbox.run(code)
        assert result.ok and result.stdout == "daemon started\n", result
        assert leftovers(marker) == []  # gone by the time run() returned
    finally:
        for pid in leftovers(marker):  # only if the sandbox failed: do not leak it
            os.kill(pid, 9)
    await host_clean(sandbox)


@pytest.fixture
def bystander():
    """A host process the program will try to kill."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


async def test_killing_the_parent_and_everyone(make_sandbox, host_clean, bystander):
    code = f"""
import os, signal
for pid in (os.getppid(), 1, {os.getpid()}, {bystander.pid}):
    try:
        os.kill(pid, signal.SIGKILL)
        print("sent", pid)
    except OSError as e:
        print("failed", pid, type(e).__name__)
# kill(-1) signals every process it may: harmless only inside a pid namespace.
if os.getpid() > 10:
    print("REFUSING kill(-1): not in a pid namespace")
else:
    os.kill(-1, signal.SIGKILL)
"""
    sandbox = make_sandbox()
    result = await sandbox.run(code)
    assert "REFUSING" not in result.stdout
    assert f"failed {bystander.pid} ProcessLookupError" in result.stdout  # no such pid inside
    assert result.exit_code is not None  # it ended (killed itself), described as data
    assert bystander.poll() is None  # the host's processes live on
    await host_clean(sandbox)


async def test_fork_bomb_is_contained(make_sandbox, host_clean):
    sandbox = make_sandbox(max_processes=8, timeout_s=2.0)
    assert "pids" in sandbox.enforcement["processes"]  # never run a bomb unbounded
    code = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    result = await sandbox.run(code)
    assert result.timed_out and result.killed_reason == "timeout", result
    await host_clean(sandbox)


async def test_process_limit_holds(make_sandbox, host_clean):
    """Bounded, so it is safe to run even where the limit is broken (the mutation test)."""
    sandbox = make_sandbox(max_processes=4)
    code = """
import os, time
children = []
for _ in range(12):
    try:
        pid = os.fork()
    except OSError as e:
        print("fork refused:", type(e).__name__)
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
print("children", len(children))
"""
    result = await sandbox.run(code)
    assert result.ok, result
    assert "children 3" in result.stdout  # 4 processes: the program and 3 children
    assert "fork refused: BlockingIOError" in result.stdout
    await host_clean(sandbox)
