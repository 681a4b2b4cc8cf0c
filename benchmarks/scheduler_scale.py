"""Driver CPU per episode at cluster-scale concurrency, on a simulated inference pool.

No model and no cluster: a pool of ``--servers`` simulated inference servers
(``SimPool``), each with ``--slots`` concurrent request slots (a request waits
for a free slot: queueing) and its own time per token, drawn once per server
from a lognormal around the base; a request's service time is its number of
generated tokens (uniform in 8..56) times that. ``SimEngine`` puts the pool
behind the ``InferenceEngine`` protocol (requests of one episode go to one
server, by ``session_id``), so the real ``ChatClient`` drives it. Each episode
is the real path: ``RolloutScheduler`` -> ``make_episode_fn`` ->
``SingleTurnAgent`` -> ``EpisodeClient`` (chat template, tokenization, OpenAI
objects) -> ``SimEngine``, then ``ToolLatencyEnv.astep``, which waits on a tool
with lognormal latency (sigma 1). Half of an episode's mean latency is
generation, half the tool.

The consumer takes each batch as soon as it is ready and bumps the version (no
training), with ``max_head_offpolicyness`` high enough that only
``max_concurrent_rollouts`` (the in-flight level) limits admission.

The baseline is bare asyncio on the same pool: the same number of episodes in
flight, in groups of the same size (``asyncio.gather``), each doing only the
two waits (a pool slot and the generation sleep, then the tool sleep), with the
same latency draws, and no scheduler, client, agent or env.

For each in-flight level and offered load (in-flight / mean latency), both
sides run until ``--measure`` episodes (at least the in-flight level) finished
after a warm-up of one in-flight level's worth; the figures are episodes/s
(wall), the driver's CPU seconds per 1,000 episodes (``time.process_time``:
this is also the fraction of one core needed to sustain 1,000 episodes/s) and
the core share used (CPU / wall). The driver saturates when it needs a whole
core: at ``1000 / cpu_per_1000`` episodes/s, where throughput stops following
the offered load.

Usage::

    python benchmarks/scheduler_scale.py             # 100, 1,000, 10,000 in flight, ~6 min
    python benchmarks/scheduler_scale.py --quick     # smoke run, < 60 s
    python benchmarks/scheduler_scale.py --profile   # cProfile one candidate point
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import logging
import math
import platform
import pstats
import random
import time
import zlib
from collections.abc import Collection
from dataclasses import dataclass

from areal_env.agents.single_turn import SingleTurnAgent
from areal_env.inference.chat_client import ChatClient, SamplingConfig
from areal_env.rollout.activity import phase
from areal_env.rollout.episode import make_episode_fn
from areal_env.rollout.scheduler import RolloutConfig, RolloutScheduler
from areal_env.testing import ParityEnv, char_tokenizer
from areal_env.types import GenerationRequest, GenerationResult, WeightUpdate

MIN_TOKENS, MAX_TOKENS = 8, 56
"""Generated tokens per request, uniform (mean 32)."""
TOOL_SIGMA = 1.0
"""Tool latency: lognormal, ``median * exp(TOOL_SIGMA * N(0, 1))``."""
SERVER_SIGMA = 0.3
"""Spread of the per-server time per token (lognormal around the base)."""


@dataclass(kw_only=True)
class Latency:
    """Latency model scaled to a mean episode latency: half generation, half tool."""

    mean_s: float

    @property
    def time_per_token(self) -> float:
        # E[tokens] = 32; E[server factor] = exp(sigma^2 / 2).
        mean_tokens = (MIN_TOKENS + MAX_TOKENS) / 2
        return 0.5 * self.mean_s / mean_tokens / math.exp(SERVER_SIGMA**2 / 2)

    @property
    def tool_median(self) -> float:
        return 0.5 * self.mean_s / math.exp(TOOL_SIGMA**2 / 2)


class SimPool:
    """Simulated inference servers: slots per server, a time per token per server."""

    def __init__(self, servers: int, slots: int, latency: Latency, seed: int) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        tpt = latency.time_per_token
        self.time_per_token = [
            tpt * math.exp(SERVER_SIGMA * self.rng.gauss()) for _ in range(servers)
        ]
        self.slots = [asyncio.Semaphore(slots) for _ in range(servers)]
        self._next = 0

    def pick(self, session_id: str | None) -> int:
        """The server of a session (affinity), or the next one round-robin."""
        if session_id is not None:
            return zlib.crc32(session_id.encode()) % len(self.slots)
        self._next = (self._next + 1) % len(self.slots)
        return self._next

    def draw_tokens(self) -> int:
        return self.rng.randint(MIN_TOKENS, MAX_TOKENS)

    def draw_tool_s(self) -> float:
        return self.latency.tool_median * math.exp(TOOL_SIGMA * self.rng.gauss())

    async def serve(self, server: int, tokens: int) -> None:
        """Wait for a slot of ``server``, then for ``tokens`` tokens' worth of time."""
        async with self.slots[server]:
            await asyncio.sleep(tokens * self.time_per_token[server])


class SimEngine:
    """``InferenceEngine`` over a ``SimPool``: replies "b" * n (+ stop), no model."""

    def __init__(self, pool: SimPool, tokenizer) -> None:
        self.pool = pool
        self._version = 0
        self._resumed = asyncio.Event()
        self._resumed.set()
        b = tokenizer.encode("b", add_special_tokens=False)[0]
        self._reply = [b] * MAX_TOKENS

    @property
    def weight_transports(self) -> tuple[str, ...]:
        return ("state_dict",)

    @property
    def version(self) -> int:
        return self._version

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        await self._resumed.wait()
        n = min(self.pool.draw_tokens(), request.sampling.max_new_tokens)
        await self.pool.serve(self.pool.pick(request.session_id), n)
        ids = self._reply[: n - 1]
        stops = request.sampling.stop_token_ids
        ids.append(stops[0] if stops else self._reply[0])
        return GenerationResult(
            request_id=request.request_id,
            input_ids=request.input_ids,
            output_ids=ids,
            output_logprobs=[-1.0] * n,
            output_versions=[self._version] * n,
            finish_reason="stop" if stops else "length",
        )

    async def update_weights(self, update: WeightUpdate) -> None:
        self._version = update.version

    def set_version(self, version: int) -> None:
        self._version = version

    async def abort(self, request_ids: Collection[str] | None = None) -> int:
        return 0

    async def pause(self) -> None:
        self._resumed.clear()

    async def resume(self) -> None:
        self._resumed.set()

    async def close(self) -> None:
        self._resumed.set()


class ToolLatencyEnv(ParityEnv):
    """ParityEnv whose step waits on a tool, latency drawn from the pool's model."""

    pool: SimPool  # set by the benchmark before episodes run

    async def _astep(self, message: dict) -> tuple[list[dict], float, bool, bool, dict]:
        with phase("tool", "sim"):
            await asyncio.sleep(self.pool.draw_tool_s())
        return await super()._astep(message)


@dataclass(kw_only=True)
class Point:
    episodes: int
    wall_s: float
    cpu_s: float
    gc_s: float

    @property
    def rate(self) -> float:
        return self.episodes / self.wall_s

    @property
    def cpu_per_1000(self) -> float:
        return 1000 * self.cpu_s / self.episodes

    @property
    def core_share(self) -> float:
        return self.cpu_s / self.wall_s


class Window:
    """Counts finished episodes; times CPU and wall between warm-up and the target."""

    def __init__(self, warmup: int, measure: int) -> None:
        self.warmup, self.target = warmup, warmup + measure
        self.done = 0
        self.start: tuple[float, float] | None = None
        self.point: Point | None = None
        self.finished = asyncio.Event()

    def add(self, n: int) -> None:
        self.done += n
        if self.start is None and self.done >= self.warmup:
            self.start = (time.perf_counter(), time.process_time(), GC.total)
            if PROFILER is not None:
                PROFILER.enable()
            self.start_done = self.done
        elif self.start is not None and self.point is None and self.done >= self.target:
            wall, cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]
            if PROFILER is not None:
                PROFILER.disable()
            gc_s = GC.total - self.start[2]
            self.point = Point(
                episodes=self.done - self.start_done, wall_s=wall, cpu_s=cpu, gc_s=gc_s
            )
            self.finished.set()


async def run_candidate(inflight: int, mean_s: float, args: argparse.Namespace) -> Point:
    """The real stack: scheduler + episode_fn + agent + ChatClient + SimEngine + env."""
    pool = SimPool(args.servers, args.slots, Latency(mean_s=mean_s), seed=args.seed)
    tokenizer = char_tokenizer()
    engine = SimEngine(pool, tokenizer)
    client = ChatClient(engine, tokenizer, sampling=SamplingConfig(max_new_tokens=MAX_TOKENS))
    ToolLatencyEnv.pool = pool
    n = args.n_samples
    groups = max(1, inflight // n)
    batch_groups = max(1, groups // 4)
    config = RolloutConfig(
        batch_size=batch_groups,
        n_samples=n,
        max_concurrent_rollouts=groups * n,
        max_head_offpolicyness=8,  # only the in-flight level limits admission
        watchdog_s=None,
        seed=args.seed,
    )
    episode_fn = make_episode_fn(ToolLatencyEnv, SingleTurnAgent(), client.episode)
    scheduler = RolloutScheduler(config, episode_fn)
    window = Window(warmup=groups * n, measure=max(args.measure, groups * n))
    version = 0
    async with scheduler.running():
        while window.point is None:
            batch = await scheduler.next_batch()
            window.add(len(batch))
            version += 1
            engine.set_version(version)
            scheduler.set_version(version)
    return window.point


async def run_baseline(inflight: int, mean_s: float, args: argparse.Namespace) -> Point:
    """Bare asyncio: the same groups in flight doing only the pool wait and the tool sleep."""
    pool = SimPool(args.servers, args.slots, Latency(mean_s=mean_s), seed=args.seed)
    n = args.n_samples
    groups = max(1, inflight // n)
    window = Window(warmup=groups * n, measure=max(args.measure, groups * n))
    session = 0

    async def episode(server: int) -> None:
        await pool.serve(server, pool.draw_tokens())
        await asyncio.sleep(pool.draw_tool_s())

    async def worker() -> None:
        nonlocal session
        while window.point is None:
            servers = []
            for _ in range(n):
                session += 1
                servers.append(pool.pick(f"episode-{session}"))
            await asyncio.gather(*(episode(s) for s in servers))
            window.add(n)

    workers = [asyncio.create_task(worker()) for _ in range(groups)]
    await window.finished.wait()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return window.point


class GCClock:
    """CPU time spent in the cyclic garbage collector (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._t0 = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, when: str, info: dict) -> None:
        if when == "start":
            self._t0 = time.process_time()
        else:
            self.total += time.process_time() - self._t0


GC = GCClock()


def run_point(side: str, inflight: int, mean_s: float, args: argparse.Namespace) -> Point:
    gc.collect()
    fn = run_candidate if side == "scheduler" else run_baseline
    return asyncio.run(fn(inflight, mean_s, args))


PROFILER: cProfile.Profile | None = None
"""When set, profiles the timed window of a point (warm-up and setup left out)."""


def profile(args: argparse.Namespace) -> None:
    global PROFILER
    inflight, rate = args.profile_inflight, args.profile_rate
    mean_s = inflight / rate
    print(f"cProfile: scheduler side, {inflight} in flight, mean latency {mean_s:.3f} s")
    prof = PROFILER = cProfile.Profile(time.process_time)  # CPU, not wall: shared cores
    point = run_point("scheduler", inflight, mean_s, args)
    PROFILER = None
    print(
        f"{point.episodes} episodes, {point.rate:.0f}/s, {point.cpu_per_1000:.3f} CPU s per 1k "
        f"episodes, of which GC {point.gc_s / point.cpu_s:.0%} (profiler overhead included; "
        "cProfile charges a collection to whatever function allocated when it started)"
    )
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(args.profile_lines)
        print(s.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 60 s)")
    parser.add_argument("--servers", type=int, default=64)
    parser.add_argument("--slots", type=int, default=128, help="concurrent requests per server")
    parser.add_argument("--n-samples", type=int, default=4, help="episodes per group")
    parser.add_argument("--inflight", default="100,1000,10000")
    parser.add_argument(
        "--rates",
        default="500,2000,8000",
        help="offered loads, episodes/s (= in flight / mean latency)",
    )
    parser.add_argument("--max-latency", type=float, default=5.0, help="skip slower points (s)")
    parser.add_argument("--measure", type=int, default=3000, help="episodes timed per point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        help="gc.set_threshold(N, 50, 100) on both sides (default: Python's 700, 10, 10)",
    )
    parser.add_argument("--profile", action="store_true", help="only cProfile one point")
    parser.add_argument("--profile-inflight", type=int, default=1000)
    parser.add_argument("--profile-rate", type=float, default=4000)
    parser.add_argument("--profile-lines", type=int, default=25)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.gc_threshold is not None:
        gc.set_threshold(args.gc_threshold, 50, 100)
    if args.quick:
        args.inflight, args.rates, args.measure = "100,1000", "500,4000", 1000
    if args.profile:
        profile(args)
        return
    print(
        f"machine: {platform.machine()}, python {platform.python_version()}; "
        f"{args.servers} servers x {args.slots} slots, groups of {args.n_samples}; "
        f"gc thresholds {gc.get_threshold()}"
    )
    rows = []
    for inflight in (int(x) for x in args.inflight.split(",")):
        for rate in (float(x) for x in args.rates.split(",")):
            mean_s = inflight / rate
            if mean_s > args.max_latency:
                continue
            # Interleaved: baseline then scheduler at each point.
            base = run_point("bare", inflight, mean_s, args)
            ours = run_point("scheduler", inflight, mean_s, args)
            rows.append((inflight, rate, mean_s, base, ours))
            print(
                f"in flight {inflight:>6}, offered {rate:>6.0f}/s (latency {mean_s:.3f} s): "
                f"bare {base.rate:7.0f} eps/s, {base.cpu_per_1000:6.3f} cpu-s/1k, "
                f"core {base.core_share:4.0%} | scheduler {ours.rate:7.0f} eps/s, "
                f"{ours.cpu_per_1000:6.3f} cpu-s/1k, core {ours.core_share:4.0%}, "
                f"gc {ours.gc_s / ours.cpu_s:4.0%} of cpu | "
                f"cpu ratio {ours.cpu_per_1000 / base.cpu_per_1000:.1f}x",
                flush=True,
            )
    print()
    print(
        "| in flight | offered eps/s (mean latency) | bare asyncio: eps/s, CPU s per 1k eps, "
        "core | scheduler+client: eps/s, CPU s per 1k eps, core | GC share of "
        "scheduler CPU | CPU ratio | driver saturates at (1000 / CPU s per 1k) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for inflight, rate, mean_s, base, ours in rows:
        print(
            f"| {inflight:,} | {rate:,.0f} ({mean_s:.3g} s) "
            f"| {base.rate:,.0f}, {base.cpu_per_1000:.3f}, {base.core_share:.0%} "
            f"| {ours.rate:,.0f}, {ours.cpu_per_1000:.3f}, {ours.core_share:.0%} "
            f"| {ours.gc_s / ours.cpu_s:.0%} "
            f"| {ours.cpu_per_1000 / base.cpu_per_1000:.1f}x "
            f"| {1000 / ours.cpu_per_1000:,.0f} eps/s |"
        )


if __name__ == "__main__":
    main()
