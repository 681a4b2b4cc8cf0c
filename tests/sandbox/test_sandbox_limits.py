"""Limits: wall time, CPU, memory, output; and programs that fail are described, not raised.

Mutations seen caught (made by hand in ``areal_env/sandbox``, tests run, reverted):

- no RLIMIT_AS in the bootstrap (``isolation.BOOTSTRAP``): the 1 GiB allocation
  is killed by the memory cgroup instead of raising MemoryError ->
  ``test_allocation_past_the_limit_is_a_memory_error`` fails.
- no limit written to the memory cgroup (``CgroupFactory.create``): the children
  allocate 320 MB unharmed -> ``test_memory_of_all_processes_is_bounded`` fails.
- the overflow not waited on (``SandboxProcess.run`` waiting for the exit only):
  the flood runs to the wall-clock limit -> ``test_output_flood_is_truncated_and_stopped``
  fails (killed_reason "timeout", not "output").
- the scratch folder not removed (``SandboxProcess.destroy``): ``host_clean`` fails.
"""

from __future__ import annotations

import asyncio
import resource

import pytest


async def test_infinite_loop_times_out_and_is_killed(make_sandbox, host_clean):
    sandbox = make_sandbox(timeout_s=1.0)
    result = await sandbox.run("print('started')\nwhile True:\n    pass")
    assert result.timed_out and result.killed_reason == "timeout", result
    assert result.exit_code is None
    assert result.stdout == "started\n"  # unbuffered: what it printed before is kept
    assert "[timed out after" in result.to_text()
    await host_clean(sandbox)


async def test_per_call_timeout(make_sandbox, host_clean):
    sandbox = make_sandbox(timeout_s=30.0)
    result = await sandbox.run("import time; time.sleep(30)", timeout_s=0.5)
    assert result.timed_out, result
    await host_clean(sandbox)


async def test_cpu_limit_kills_a_busy_program(make_sandbox, host_clean):
    sandbox = make_sandbox(cpu_s=1, timeout_s=30.0)
    result = await sandbox.run("while True:\n    pass")
    assert not result.timed_out
    assert result.killed_reason == "cpu" and result.exit_code == 152, result  # 128 + SIGXCPU
    await host_clean(sandbox)


async def test_allocation_past_the_limit_is_a_memory_error(make_sandbox, host_clean):
    sandbox = make_sandbox(memory_mb=128)
    result = await sandbox.run("x = bytearray(1 << 30)\nprint('allocated')")
    assert result.exit_code == 1, result
    assert "MemoryError" in result.stderr and "allocated" not in result.stdout
    await host_clean(sandbox)


async def test_memory_of_all_processes_is_bounded(make_sandbox, host_clean):
    """RLIMIT_AS bounds each process; the memory cgroup bounds them together."""
    sandbox = make_sandbox(memory_mb=128, max_processes=8)
    if "cgroup" not in sandbox.enforcement["memory"]:
        pytest.skip(f"no writable memory cgroup here: {sandbox.enforcement['memory']}")
    code = """
import os
children = []
for _ in range(4):  # each 80 MB (under RLIMIT_AS), 320 MB together (over the cgroup's 128)
    pid = os.fork()
    if pid == 0:
        block = bytearray(80 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        os._exit(0)
    children.append(pid)
statuses = [os.waitpid(pid, 0)[1] for pid in children]
print("killed", sum(os.WIFSIGNALED(s) for s in statuses))
"""
    result = await sandbox.run(code)
    assert result.killed_reason == "memory", result
    assert "killed 0" not in result.stdout
    await host_clean(sandbox)


async def test_output_flood_is_truncated_and_stopped(make_sandbox, host_clean):
    sandbox = make_sandbox(max_output_bytes=1000, timeout_s=20.0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = await sandbox.run("import sys\nwhile True:\n    sys.stdout.write('x' * 4096)")
    assert result.truncated and result.killed_reason == "output", result
    assert result.stdout == "x" * 1000
    assert "[output truncated at 1000 bytes" in result.to_text()
    # One huge write, to stderr this time: still cut at the limit.
    result = await sandbox.run("import sys; sys.stderr.write('y' * (50 << 20))")
    assert result.truncated and result.stderr == "y" * 1000, result.stderr[:100]
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert rss_after - rss_before < 40 << 10  # KB: the host never held the 50 MB
    await host_clean(sandbox)


async def test_large_file_is_refused(make_sandbox, host_clean):
    sandbox = make_sandbox(max_file_mb=1)
    code = """
try:
    with open("big.bin", "wb") as f:
        f.write(b"x" * (2 << 20))
except OSError as e:
    print("refused", e.errno)
"""
    result = await sandbox.run(code)
    assert result.stdout == "refused 27\n", result  # EFBIG
    await host_clean(sandbox)


@pytest.mark.parametrize(
    ("code", "exit_code", "reason", "in_stderr"),
    [
        ("raise ValueError('boom')", 1, None, "ValueError: boom"),
        ("def f(:\n    pass", 1, None, "SyntaxError"),
        ("import sys; sys.exit(3)", 3, None, ""),
        ("import ctypes; ctypes.string_at(0)", 139, "signal", ""),  # SIGSEGV
        ("import os; os.abort()", 134, "signal", ""),
        ("import os; os.close(1); os.close(2); print('gone')", 1, None, ""),
    ],
)
async def test_crashes_are_results(make_sandbox, code, exit_code, reason, in_stderr):
    sandbox = make_sandbox()
    result = await sandbox.run(code)
    assert result.exit_code == exit_code, result
    assert result.killed_reason == reason
    assert in_stderr in result.stderr
    assert '"<code>", line 1' in result.stderr or not in_stderr  # the bootstrap's frame is hidden
    assert "_areal_boot" not in result.stderr


async def test_stdin_and_unicode(make_sandbox):
    sandbox = make_sandbox()
    result = await sandbox.run(
        "import sys\nfor line in sys.stdin:\n    print(line.strip()[::-1])", stdin="héllo\nwörld\n"
    )
    assert result.ok and result.stdout == "olléh\ndlröw\n", result


async def test_cancelled_call_leaves_nothing(make_sandbox, host_clean):
    sandbox = make_sandbox()
    task = asyncio.create_task(sandbox.run("import time; time.sleep(60)"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await host_clean(sandbox)
