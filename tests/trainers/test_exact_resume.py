"""Exact resume: a run SIGKILLed mid-way and resumed equals a run never interrupted.

With ``rollout.deterministic=true`` (a seed per episode attempt, synchronous
rollouts) and a fixed ``seed``, the resumed run must train on the same batches
(every episode's task and tokens, step by step: none lost, none used twice), log
the same metrics and end with the same weights as the uninterrupted run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from areal_env.episode_dump import read_episodes
from areal_env.metrics import read_metrics
from areal_env.testing import PARITY_ENV_ID, TINY_MODEL_OVERRIDES

WORKER = Path(__file__).with_name("exact_resume_worker.py")
REPO = Path(__file__).resolve().parents[2]
STEPS, KILL_AT = 6, 5
TIMING = ("time/", "throughput/", "eval/time_s")
"""Metrics that measure the machine, not the run."""
RTOL = 1e-5
"""Logprobs of one token differ by float rounding when the engine batches it with
other rows (measured ~5e-7 relative); tokens, rewards and counts must be equal."""


def _run(out: Path, kill_at: int, *extra: str) -> int:
    argv = [
        *TINY_MODEL_OVERRIDES,
        f"env.id={PARITY_ENV_ID}",
        "warm_start.enabled=false",
        "rollout.batch_size=2",
        "rollout.n_samples=4",
        "rollout.max_head_offpolicyness=0",
        "rollout.deterministic=true",
        "inference.sampling.max_new_tokens=3",
        "train.lr=3e-3",
        "train.warmup_steps=0",
        f"train.steps={STEPS}",
        "checkpoint.every_steps=2",
        "metrics.wandb_mode=disabled",
        "metrics.progress=false",
        "metrics.plot=false",
        "metrics.dump_episodes_every=1",
        "metrics.dump_episodes=8",  # every episode of every batch
        "torch_threads=1",
        f"output_dir={out}",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(kill_at), *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode not in (0, -9):
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.returncode


def _batches(out: Path) -> list[list[tuple]]:
    rows = read_episodes(out / "episodes.jsonl")
    by_step: dict[int, list[tuple]] = {}
    for r in rows:
        tokens = tuple(tuple(s["input_ids"]) for s in r["samples"])
        by_step.setdefault(r["step"], []).append((r["task_id"], r["reward"], tokens))
    return [sorted(by_step[s]) for s in sorted(by_step)]


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(TIMING)}


@pytest.mark.slow
def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert _run(whole, 0) == 0
    assert _run(broken, KILL_AT) == -9  # SIGKILL after logging step 5; checkpoint at 4
    assert len(read_metrics(broken / "metrics.jsonl")) == KILL_AT
    assert _run(broken, 0, "--resume") == 0

    want, got = _batches(whole), _batches(broken)
    assert len(want) == len(got) == STEPS
    assert got == want  # same tasks, tokens and rewards at every step: no sample lost or reused

    want_rows = [_comparable(r) for r in read_metrics(whole / "metrics.jsonl")]
    got_rows = [_comparable(r) for r in read_metrics(broken / "metrics.jsonl")]
    assert [r["step"] for r in got_rows] == list(range(1, STEPS + 1))
    for w, g in zip(want_rows, got_rows, strict=True):
        assert w.keys() == g.keys()
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=RTOL, abs=1e-7), (w["step"], key)

    final = [
        load_file(str(next((d / "final_model").glob("*.safetensors")))) for d in (whole, broken)
    ]
    for name, tensor in final[0].items():
        assert torch.allclose(final[1][name], tensor, rtol=1e-4, atol=1e-6), name
