"""Sandboxed Python calls per second, cold and from the warm pool, against a bare subprocess.

One small program (``print(sum(range(1000)))``) run ``--calls`` times, one call at
a time, five ways, each after a few untimed warm-up calls:

1. ``python -c CODE`` as a plain asyncio subprocess (the baseline: what an
   unsandboxed tool executor does), and ``python -I -S -c CODE`` (the leanest
   interpreter start, which the sandbox itself uses);
2. a cold sandbox: ``Sandbox(pool_size=0)``, every call starts bubblewrap and
   the interpreter;
3. the warm pool, latency: the pool is refilled (untimed) before each call,
   as when a model's turn gives it time; the timed call only sends the code,
   waits for the exit and cleans up;
4. the warm pool, back to back: no pause between calls, so the refill races the
   calls (on 2 cores this is bounded by the cold start).

Every call's output is checked. Ratios are against (1); the target is a warm-pool
call costing at most 2x a bare ``python -c``.

Usage::

    python benchmarks/sandbox.py
    python benchmarks/sandbox.py --calls 200 --pool-size 8 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from areal_env.sandbox import Sandbox, SandboxConfig

CODE = "print(sum(range(1000)))"
EXPECTED = "499500\n"


async def bare_python(flags: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *flags, "-c", CODE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return out.decode()


async def timed(
    calls: int, warmup: int, call: Callable[[], Awaitable[str]], before=None
) -> list[float]:
    """Seconds per call (``before`` runs untimed ahead of each one)."""
    times = []
    for i in range(warmup + calls):
        if before is not None:
            await before()
        start = time.perf_counter()
        out = await call()
        elapsed = time.perf_counter() - start
        assert out == EXPECTED, out
        if i >= warmup:
            times.append(elapsed)
    return times


def line(name: str, times: list[float], base: float | None) -> str:
    mean, median = statistics.fmean(times), statistics.median(times)
    ratio = f"  {mean / base:5.2f}x" if base else ""
    return (
        f"  {name:<34} {1000 * mean:7.2f} ms/call (median {1000 * median:6.2f})"
        f"  {1 / mean:7.1f} calls/s{ratio}"
    )


async def concurrent(sandbox: Sandbox, n: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            result = await sandbox.run(CODE)
            assert result.stdout == EXPECTED, result

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start


async def main(args: argparse.Namespace) -> None:
    n, warm = args.calls, args.warmup
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"program: {CODE!r}; {n} calls each, one at a time; load average {os.getloadavg()}")

    base_times = await timed(n, warm, lambda: bare_python([]))
    lean_times = await timed(n, warm, lambda: bare_python(["-I", "-S"]))
    base = statistics.fmean(base_times)

    async def run_text(sandbox: Sandbox) -> str:
        return (await sandbox.run(CODE)).stdout

    cold = Sandbox(SandboxConfig(pool_size=0))
    print(f"sandbox: {cold.enforcement['isolation']}")
    print(f"         processes: {cold.enforcement['processes']}")
    cold_times = await timed(n, warm, lambda: run_text(cold))
    await cold.aclose()

    pool = Sandbox(SandboxConfig(pool_size=args.pool_size))
    warm_times = await timed(n, warm, lambda: run_text(pool), before=pool.wait_filled)
    await pool.wait_filled()
    burst_times = await timed(n, 0, lambda: run_text(pool))

    print("\none call at a time:")
    print(line("python -c (baseline)", base_times, base))
    print(line("python -I -S -c", lean_times, base))
    print(line("cold sandbox (pool_size=0)", cold_times, base))
    print(line(f"warm pool (pool_size={args.pool_size}), refilled", warm_times, base))
    print(line(f"warm pool (pool_size={args.pool_size}), back to back", burst_times, base))
    ratio = statistics.fmean(warm_times) / base
    verdict = "meets" if ratio <= 2 else "MISSES"
    print(f"\nwarm-pool call / bare python -c: {ratio:.2f}x ({verdict} the 2x target)")

    if args.concurrency > 1:
        m = 4 * n
        print(f"\n{args.concurrency} calls in flight, {m} calls:")
        t_cold = await concurrent(
            cold_again := Sandbox(SandboxConfig(pool_size=0)), m, args.concurrency
        )
        await cold_again.aclose()
        await pool.wait_filled()
        t_pool = await concurrent(pool, m, args.concurrency)
        print(f"  cold sandbox: {m / t_cold:7.1f} calls/s")
        print(f"  warm pool:    {m / t_pool:7.1f} calls/s  ({t_cold / t_pool:.2f}x cold)")
    await pool.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
