"""The warm pool: refilled after each call, each sandbox used once, concurrent calls, closing."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from areal_env.sandbox import SandboxConfig


async def test_pool_fills_and_refills(make_sandbox, scratch_root):
    sandbox = make_sandbox(pool_size=2)
    await sandbox.wait_filled()
    assert sandbox.warm == 2
    before = {p.name for p in scratch_root.iterdir()}
    assert len(before) == 2  # one scratch folder per started sandbox
    result = await sandbox.run("print('from the pool')")
    assert result.ok and result.stdout == "from the pool\n"
    await sandbox.wait_filled()
    after = {p.name for p in scratch_root.iterdir()}
    assert sandbox.warm == 2 and len(after) == 2
    assert len(before - after) == 1  # the used one was removed, a new one took its place


async def test_each_program_gets_a_fresh_sandbox(make_sandbox):
    sandbox = make_sandbox(pool_size=2)
    first = await sandbox.run(
        "import os\nopen('state.txt', 'w').write('left behind')\nos.environ['X'] = '1'\n"
        "import builtins; builtins.leak = 1\nprint(os.getpid())"
    )
    second = await sandbox.run(
        "import os, builtins\n"
        "print(os.path.exists('state.txt'), 'X' in os.environ, hasattr(builtins, 'leak'))"
    )
    assert first.ok and second.ok, (first, second)
    assert second.stdout == "False False False\n"


async def test_concurrent_calls(make_sandbox):
    sandbox = make_sandbox(pool_size=2)
    code = "import sys\nn = int(sys.stdin.read())\nprint(n * n)"
    results = await asyncio.gather(*(sandbox.run(code, stdin=str(i)) for i in range(6)))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(6)]
    assert all(r.ok for r in results)


async def test_a_pooled_sandbox_killed_while_waiting_is_replaced(make_sandbox):
    sandbox = make_sandbox(pool_size=1)
    await sandbox.wait_filled()
    sandbox._ready[0].kill_now()  # as if the OOM killer or an admin killed it
    await asyncio.sleep(0.1)
    result = await sandbox.run("print('ok')")
    assert result.ok, result


async def test_aclose_kills_the_pool_and_cleans_up(
    make_sandbox, scratch_root, leftovers, cgroups_left
):
    sandbox = make_sandbox(pool_size=3)
    await sandbox.wait_filled()
    running = asyncio.create_task(sandbox.run("import time; time.sleep(60)"))
    await asyncio.sleep(0.2)
    await sandbox.aclose()
    result = await running
    assert not result.ok  # killed by the close, reported as data
    assert leftovers() == []
    assert list(scratch_root.iterdir()) == []
    assert cgroups_left() == []
    with pytest.raises(RuntimeError, match="closed"):
        await sandbox.run("print(1)")


def test_event_loops(sandbox_available, scratch_root, leftovers):
    """A loop's shutdown releases the pool; a later loop starts afresh; two at once fail."""
    from areal_env.sandbox import Sandbox

    sandbox = Sandbox(SandboxConfig(pool_size=2, scratch_root=str(scratch_root)))

    async def use() -> bool:
        await sandbox.wait_filled()
        return (await sandbox.run("print(1)")).ok

    assert asyncio.run(use())
    assert leftovers() == [] and list(scratch_root.iterdir()) == []  # released at shutdown
    assert asyncio.run(use())  # a new loop, a new pool

    async def from_two_loops() -> None:
        await sandbox.start()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            error = pool.submit(asyncio.run, use()).exception()
        assert isinstance(error, RuntimeError) and "another event loop" in str(error)
        await sandbox.aclose()

    asyncio.run(from_two_loops())
    assert leftovers() == [] and list(scratch_root.iterdir()) == []


async def test_site_packages_only_when_asked(make_sandbox):
    pytest.importorskip("numpy")
    code = "import numpy; print(numpy.arange(4).sum())"
    without = await make_sandbox().run(code)
    assert without.exit_code == 1 and "ModuleNotFoundError" in without.stderr, without
    with_packages = await make_sandbox(site_packages=True, timeout_s=60).run(code)
    assert with_packages.ok and with_packages.stdout == "6\n", with_packages
