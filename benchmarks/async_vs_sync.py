"""Asynchronous against synchronous GRPO on an env whose tool calls take real time.

The env (``LatencyParityEnv``, registered here under a benchmark-only id) is
``ParityEnv`` with a tool in the loop: after the model's reply, the episode waits
on a "tool" (think sandbox run, search, verifier) whose latency is drawn from a
lognormal distribution, ``median * exp(sigma * N(0, 1))``, capped at ``cap``
seconds, with ``await asyncio.sleep``. The reward is ParityEnv's (1.0 when the
reply's first character has an even code point), which the embedded tiny model
earns about half the time from scratch, so groups are mixed from step 1 and no
warm start is needed.

Each latency setting runs ``trainers/grpo.py``'s ``main`` twice, same seed,
steps, batch and concurrency: ``rollout.max_head_offpolicyness=0`` (synchronous:
a step waits for the slowest episode of its batch) and ``=4`` (asynchronous:
episodes of the next four batches run while the trainer trains). Samples per
second are episodes trained / wall time of the RL loop (the sum of
``time/step_s``: from asking for a batch to the new weights being in the
engine; model building is left out); the reward is the mean of the last ``k``
steps' ``rollout/reward_mean``, after the same number of samples on both sides.

Usage::

    python benchmarks/async_vs_sync.py            # two latency settings, ~4 min
    python benchmarks/async_vs_sync.py --quick    # smoke run, < 60 s
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium
import torch

from areal_env.metrics import read_metrics
from areal_env.rollout.activity import phase
from areal_env.testing import ParityEnv
from areal_env.trainers import grpo

ENV_ID = "areal-bench/LatencyParity-v0"
"""Benchmark-only gymnasium id; re-registered for each latency setting."""

_LATENCY_RNG = random.Random(0)
"""Shared by every env of a run (reseeded per run): draws are independent across the
members of a group, and the sequence of draws is fixed by the seed."""


class LatencyParityEnv(ParityEnv):
    """ParityEnv whose step first waits on a tool with lognormal latency (seconds)."""

    def __init__(
        self, *, median_s: float = 0.5, sigma: float = 1.0, cap_s: float = 30.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.median_s, self.sigma, self.cap_s = median_s, sigma, cap_s

    async def _astep(self, message: dict) -> tuple[list[dict], float, bool, bool, dict]:
        latency = min(self.cap_s, self.median_s * math.exp(self.sigma * _LATENCY_RNG.gauss()))
        with phase("tool", "latency"):
            await asyncio.sleep(latency)
        obs, reward, terminated, truncated, info = await super()._astep(message)
        return obs, reward, terminated, truncated, {**info, "tool_latency_s": latency}


def register(median_s: float, sigma: float, cap_s: float, seed: int) -> None:
    """(Re-)register ``ENV_ID`` with this latency setting and reseed the latency draws."""
    gymnasium.registry.pop(ENV_ID, None)
    gymnasium.register(
        id=ENV_ID,
        entry_point=LatencyParityEnv,
        kwargs={"median_s": median_s, "sigma": sigma, "cap_s": cap_s},
    )
    _LATENCY_RNG.seed(seed)


def run_once(eta: int, setting: dict, args: argparse.Namespace, out: Path) -> dict:
    """One GRPO run; returns its samples/s, reward and timings from metrics.jsonl."""
    register(setting["median_s"], setting["sigma"], setting["cap_s"], seed=args.seed)
    argv = [
        *args.model_overrides,
        f"seed={args.seed}",
        f"env.id={ENV_ID}",
        "warm_start.enabled=false",
        f"rollout.batch_size={args.groups}",
        f"rollout.n_samples={args.samples}",
        f"rollout.max_concurrent_rollouts={args.concurrency}",
        f"rollout.max_head_offpolicyness={eta}",
        "inference.sampling.max_new_tokens=2",
        f"train.steps={args.steps}",
        "train.lr=3e-3",
        "train.warmup_steps=0",
        f"torch_threads={args.torch_threads}",
        "checkpoint.every_steps=0",
        "metrics.wandb_mode=disabled",
        "metrics.tensorboard=false",
        "metrics.progress=false",
        "metrics.plot=false",
        f"output_dir={out}",
    ]
    start = time.perf_counter()
    assert grpo.main(argv) == 0, f"run failed: {argv}"
    whole = time.perf_counter() - start
    rows = read_metrics(out / "metrics.jsonl")
    loop_s = sum(r["time/step_s"] for r in rows)
    episodes = len(rows) * args.groups * args.samples
    rewards = [r["rollout/reward_mean"] for r in rows]
    return {
        "eta": eta,
        "loop_s": loop_s,
        "whole_s": whole,
        "samples_per_s": episodes / loop_s,
        "episodes": episodes,
        "wait_s": sum(r["time/wait_rollout_s"] for r in rows),
        "reward_first": statistics.fmean(rewards[: args.k]),
        "reward_last": statistics.fmean(rewards[-args.k :]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 60 s)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--groups", type=int, default=4, help="groups per batch")
    parser.add_argument("--samples", type=int, default=8, help="episodes per group")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--eta", type=int, default=4, help="max_head_offpolicyness, async side")
    parser.add_argument("--k", type=int, default=5, help="reward: mean of the last k steps")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument(
        "--settings",
        default="0.1:1.0,0.5:1.0",
        help="latency settings, median_s:sigma pairs separated by commas",
    )
    parser.add_argument("--cap", type=float, default=30.0, help="latency cap, seconds")
    parser.add_argument(
        "--tiny", action="store_true", help="the even smaller TINY_MODEL_OVERRIDES model"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.settings, args.k = 6, "0.05:1.0", 2
    args.model_overrides = []
    if args.tiny:
        from areal_env.testing import TINY_MODEL_OVERRIDES

        args.model_overrides = list(TINY_MODEL_OVERRIDES)
    # grpo.main calls logging.basicConfig(INFO); a root handler first keeps it quiet.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    settings = []
    for pair in args.settings.split(","):
        median, sigma = (float(x) for x in pair.split(":"))
        mean = median * math.exp(sigma**2 / 2)
        p99 = median * math.exp(sigma * 2.326)
        settings.append(
            {"median_s": median, "sigma": sigma, "cap_s": args.cap, "mean": mean, "p99": p99}
        )
    batch = args.groups * args.samples
    print(
        f"machine: {platform.machine()}, python {platform.python_version()}, torch "
        f"{torch.__version__}, torch_threads={args.torch_threads}"
    )
    print(
        f"{args.steps} steps of {args.groups} groups x {args.samples} = {batch} episodes, "
        f"seed {args.seed}, max_concurrent_rollouts {args.concurrency}"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(settings):
            label = f"median {s['median_s']}s, sigma {s['sigma']}"
            print(
                f"\n== tool latency {label} (mean {s['mean']:.2f}s, p99 {s['p99']:.2f}s, "
                f"cap {s['cap_s']}s)",
                flush=True,
            )
            pair = {}
            for eta in (0, args.eta):
                r = run_once(eta, s, args, Path(tmp) / f"s{i}_eta{eta}")
                pair[eta] = r
                print(
                    f"eta={eta}: {r['episodes']} episodes in {r['loop_s']:.1f} s "
                    f"= {r['samples_per_s']:.1f} samples/s (waiting for rollouts "
                    f"{r['wait_s']:.1f} s; whole run {r['whole_s']:.1f} s); reward first "
                    f"{args.k} steps {r['reward_first']:.3f}, last {args.k} "
                    f"{r['reward_last']:.3f}",
                    flush=True,
                )
            results.append((label, pair))
    print()
    header = (
        f"| tool latency | sync (eta=0) samples/s | async (eta={args.eta}) samples/s "
        f"| speed-up | reward, last {args.k} steps: sync / async |"
    )
    print(header)
    print("| --- | --- | --- | --- | --- |")
    for label, pair in results:
        sync, asyn = pair[0], pair[args.eta]
        print(
            f"| {label} | {sync['samples_per_s']:.1f} ({sync['loop_s']:.1f} s) "
            f"| {asyn['samples_per_s']:.1f} ({asyn['loop_s']:.1f} s) "
            f"| {asyn['samples_per_s'] / sync['samples_per_s']:.2f}x "
            f"| {sync['reward_last']:.3f} / {asyn['reward_last']:.3f} |"
        )


if __name__ == "__main__":
    main()
