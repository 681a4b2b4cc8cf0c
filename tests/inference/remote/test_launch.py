"""Launching inference servers: health waits, failures, and no orphans, ever.

A small aiohttp script (``fake_server_process.py``) stands in for vLLM / SGLang;
a shell wrapper stands in for ``inference.server_python`` so ``launch_servers``
runs its real command lines.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from areal_env.inference.remote.api import ServerStartupError
from areal_env.inference.remote.launch import (
    SERVER_ENV,
    ServerGroup,
    check_server_python,
    free_port,
    launch_servers,
    sglang_command,
    vllm_command,
)

FAKE = Path(__file__).resolve().with_name("fake_server_process.py")
REPO = Path(__file__).resolve().parents[3]


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return _gone(pid)


def _wait_log(path: Path, pattern: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (m := re.search(pattern, path.read_text())):
            return int(m.group(1))
        time.sleep(0.02)
    raise AssertionError(f"{pattern!r} not in {path}")


def _fake_cmd(port: int, *extra: str) -> list[str]:
    return [sys.executable, str(FAKE), "--port", str(port), *extra]


def _fake_python(tmp_path: Path) -> Path:
    """An executable that runs the fake server with whatever vLLM/SGLang argv it gets."""
    wrapper = tmp_path / "fake-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


Reap = list[int | subprocess.Popen[str]]


@pytest.fixture
def reap() -> Iterator[Reap]:
    """Servers (pid = process group) and child processes to SIGKILL after the test.

    Only matters when the code under test fails to stop them.
    """
    items: Reap = []
    yield items
    for item in items:
        if isinstance(item, subprocess.Popen):
            if item.poll() is None:
                item.kill()
                item.wait()
            continue
        for kill in (os.killpg, os.kill):
            try:
                kill(item, signal.SIGKILL)
            except OSError:
                pass


# -- 1. healthy servers, stop kills the whole group ---------------------------------------


async def test_group_starts_healthy_servers_and_stop_kills_whole_group(
    tmp_path: Path, reap: Reap
) -> None:
    group = ServerGroup()
    servers = []
    for i in range(2):
        port = free_port()
        server = group.start(_fake_cmd(port, "--spawn-child"), tmp_path / f"s{i}.log", port=port)
        reap.append(server.pid)
        servers.append(server)
    await group.wait_all_healthy(timeout=15)
    assert len({s.port for s in servers}) == 2
    assert group.urls == [f"http://127.0.0.1:{s.port}" for s in servers]
    async with aiohttp.ClientSession() as session:
        for s in servers:
            async with session.get(s.url + "/health") as r:
                assert r.status == 200
    grandchildren = [_wait_log(s.log_path, r"child pid=(\d+)") for s in servers]
    assert not any(_gone(pid) for pid in grandchildren)

    group.stop_all(grace=5)
    for pid in [s.pid for s in servers] + grandchildren:
        assert _wait_gone(pid), f"pid {pid} survived stop_all"
    assert not any(s.alive() for s in servers)
    group.stop_all()  # idempotent
    servers[0].stop()


# -- 2. a server that exits early ---------------------------------------------------------


async def test_server_exiting_early_raises_with_url_code_and_stderr(tmp_path: Path) -> None:
    async with ServerGroup() as group:
        port = free_port()
        server = group.start(_fake_cmd(port, "--exit-code", "3"), tmp_path / "s.log", port=port)
        with pytest.raises(ServerStartupError) as info:
            await server.wait_healthy(timeout=15)
    message = str(info.value)
    assert server.url in message
    assert "exited with code 3" in message
    assert "failing on purpose (code 3)" in message  # the server's stderr, via the log tail
    assert str(FAKE) in message  # the command
    assert not server.alive()
    server.stop()  # safe when already dead


# -- 3. a server that never gets healthy --------------------------------------------------


async def test_launch_servers_times_out_and_stops_the_server(tmp_path: Path, reap: Reap) -> None:
    log_dir = tmp_path / "logs"
    with pytest.raises(ServerStartupError) as info:
        await launch_servers(
            "vllm",
            python=str(_fake_python(tmp_path)),
            model="tiny",
            count=1,
            log_dir=log_dir,
            max_model_len=128,
            extra_args=["--delay-ready", "1000"],
            startup_timeout=2,
        )
    message = str(info.value)
    assert "not healthy after 2 s" in message
    assert re.search(r"inference server http://127\.0\.0\.1:\d+ \(pid \d+\)", message)
    pid = _wait_log(log_dir / "vllm-0.log", r"fake server pid=(\d+)")
    reap.append(pid)
    assert _wait_gone(pid), "launch_servers left the unhealthy server running"


async def test_launch_servers_returns_group_and_urls(tmp_path: Path, reap: Reap) -> None:
    group, urls = await launch_servers(
        "sglang",
        python=str(_fake_python(tmp_path)),
        model="tiny",
        count=2,
        log_dir=tmp_path / "logs",
        max_model_len=256,
        extra_args=["--delay-ready", "0.3"],
        startup_timeout=15,
    )
    with group:
        reap.extend(s.pid for s in group.servers)
        assert len(set(urls)) == 2 and urls == group.urls
        log = (tmp_path / "logs" / "sglang-1.log").read_text()
        assert "'--context-length', '256'" in log and "'--served-model-name', 'policy'" in log
    assert all(_wait_gone(s.pid) for s in group.servers)


# -- 4. no orphans when the trainer process dies ------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, atexit, os, signal, sys, time
    from pathlib import Path
    from areal_env.inference.remote.launch import ServerGroup, free_port

    mode, fake, log = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    server = None
    def report(what):
        print(what, "server alive:", server.alive(), flush=True)
    if mode == "exit":  # registered first, so it runs after launch.py's atexit hook
        atexit.register(report, "at exit")
    if mode == "term-chained":  # the trainer's own handler, installed before ours
        signal.signal(signal.SIGTERM, lambda *a: (report("chained"), os._exit(7)))
    group = ServerGroup()
    port = free_port()
    server = group.start([sys.executable, fake, "--port", str(port)], log, port=port)
    asyncio.run(server.wait_healthy(20))
    try:  # the test signals as soon as it reads the pid
        print(server.pid, flush=True)
        if mode == "exit":
            sys.exit(0)
        time.sleep(300)
    except KeyboardInterrupt:
        report("KeyboardInterrupt")
        raise
    """
)


def _run_child(tmp_path: Path, mode: str, reap: Reap) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(FAKE), str(tmp_path / "server.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    reap.append(child)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.strip().isdigit():
        child.kill()
        raise AssertionError(f"child printed {line!r}; stderr: {child.communicate()[1]}")
    server_pid = int(line)
    reap.append(server_pid)
    if mode != "exit":  # an "exit" child may already have stopped it
        assert not _gone(server_pid)
    return child, server_pid


def _finish(child: subprocess.Popen[str], timeout: float = 15.0) -> tuple[str, str]:
    """Wait for the child, then read the rest of its output (readline may have buffered it)."""
    child.wait(timeout=timeout)
    assert child.stdout is not None and child.stderr is not None
    return child.stdout.read(), child.stderr.read()


def test_sigkilled_parent_takes_server_along(tmp_path: Path, reap: Reap) -> None:
    child, server_pid = _run_child(tmp_path, "sleep", reap)
    child.kill()
    _finish(child)
    assert _wait_gone(server_pid, timeout=5), "server orphaned after SIGKILL (PDEATHSIG)"


def test_sigterm_stops_servers_then_chains_to_previous_handler(tmp_path: Path, reap: Reap) -> None:
    child, server_pid = _run_child(tmp_path, "term-chained", reap)
    child.send_signal(signal.SIGTERM)
    out, err = _finish(child)
    assert "chained server alive: False" in out, err
    assert child.returncode == 7
    assert _wait_gone(server_pid)


def test_sigterm_with_default_handler_still_terminates(tmp_path: Path, reap: Reap) -> None:
    child, server_pid = _run_child(tmp_path, "term", reap)
    child.send_signal(signal.SIGTERM)
    _finish(child)
    assert child.returncode == -signal.SIGTERM
    assert _wait_gone(server_pid)


def test_sigint_stops_servers_and_keeps_keyboard_interrupt(tmp_path: Path, reap: Reap) -> None:
    child, server_pid = _run_child(tmp_path, "sleep", reap)
    child.send_signal(signal.SIGINT)
    out, err = _finish(child)
    assert "KeyboardInterrupt server alive: False" in out, err
    assert "KeyboardInterrupt" in err
    assert _wait_gone(server_pid)


def test_atexit_stops_servers_on_normal_exit(tmp_path: Path, reap: Reap) -> None:
    child, server_pid = _run_child(tmp_path, "exit", reap)
    out, err = _finish(child)
    assert "at exit server alive: False" in out, err
    assert child.returncode == 0
    assert _wait_gone(server_pid)


# -- 5. command lines, ports, bad input ---------------------------------------------------


def test_vllm_command() -> None:
    cmd = vllm_command(
        "/py", "Qwen/Q", host="0.0.0.0", port=8001, max_model_len=4096, extra_args=["--x", "1"]
    )
    assert cmd[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for flags in (
        "--model Qwen/Q",
        "--host 0.0.0.0",
        "--port 8001",
        "--max-model-len 4096",
        "--logprobs-mode processed_logprobs",
        "--served-model-name policy",
    ):
        assert flags in joined
    assert cmd[-2:] == ["--x", "1"]


def test_sglang_command() -> None:
    cmd = sglang_command("/py", "m", host="h", port=9, max_model_len=512, extra_args=["--tp", "2"])
    assert cmd[:3] == ["/py", "-m", "sglang.launch_server"]
    joined = " ".join(cmd)
    for flags in ("--model-path m", "--host h", "--port 9", "--context-length 512"):
        assert flags in joined
    assert "--served-model-name policy" in joined
    assert cmd[-2:] == ["--tp", "2"]


def test_server_env_enables_vllm_dev_routes() -> None:
    assert SERVER_ENV["VLLM_SERVER_DEV_MODE"] == "1"
    assert SERVER_ENV["VLLM_NO_USAGE_STATS"] == "1"


def test_free_port_distinct_and_bindable() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


async def test_bad_server_python(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-python")
    with pytest.raises(ValueError, match=r"inference\.server_python=.*no-such-python"):
        check_server_python(missing)
    not_exec = tmp_path / "python"
    not_exec.write_text("")
    with pytest.raises(ValueError, match="inference.server_python"):
        await launch_servers(
            "vllm",
            python=str(not_exec),
            model="m",
            count=1,
            log_dir=tmp_path,
            max_model_len=16,
            startup_timeout=1,
        )
    assert check_server_python(sys.executable) == sys.executable


async def test_count_below_one_is_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="count"):
        await launch_servers(
            "vllm",
            python=sys.executable,
            model="m",
            count=0,
            log_dir=tmp_path,
            max_model_len=16,
            startup_timeout=1,
        )
