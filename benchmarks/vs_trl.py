"""TRL's ``GRPOTrainer`` against our ``trainers/grpo.py``, same model, task and batch.

Both trainers start from one model: the embedded tiny Qwen2 after our SFT warm start on
``areal/Math-v0`` (1-2 digit + and -), built once here and saved as a Hugging Face
folder. Both then run GRPO on the same task with the same recipe: 32 tasks x 8 samples
per step, at most 6 new tokens, temperature 1.0, lr 2.5e-4 after 20 warm-up optimizer
steps, two optimizer steps per batch, PPO clip 0.2, token-mean loss, k3 KL 0.1 to the
starting model, grad clip 1.0, and the same reward (our env's, ``envs/math/reward.py``).

Ours: ``trainers/grpo.py``'s ``main`` with ``model.path=<folder>``, warm start off, all
else default (so asynchronous rollouts, ``max_head_offpolicyness=1``). TRL: installed in
its own venv (``.venv-trl`` at the repo root, made on first use), run as
``benchmarks/trl_side.py`` on the same prompts rendered with the same chat template;
HF ``generate`` on CPU, no vLLM.

Reported per side: seconds per step (mean after ``--skip`` warm-up steps; from asking for
a batch to the new weights being in use, model building left out), and the training
time until the reward's moving average (``--window`` steps) first reaches the starting
reward + ``--margin`` (the starting reward: the mean of both sides' first ``--window``
steps, so the target is one number).

Usage::

    python benchmarks/vs_trl.py            # ~15 min on 2 CPU cores (plus the install)
    python benchmarks/vs_trl.py --quick    # smoke run, < 2 min (plus the install)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from areal_env.config import load_config
from areal_env.envs.math.env import MathEnv
from areal_env.inference.registry import start_engine
from areal_env.metrics import read_metrics
from areal_env.trainers import grpo
from areal_env.trainers.build import build_components, seed_everything
from areal_env.trainers.config import GRPOConfig
from areal_env.trainers.warm_start import warm_start

REPO = Path(__file__).resolve().parent.parent
TRL_SIDE = Path(__file__).resolve().parent / "trl_side.py"
TORCH_PIN = "torch==2.13.0"
"""The CPU wheel on this machine; pinned in the same pip command so TRL cannot pull a
CUDA build."""
TRL_PACKAGES = (TORCH_PIN, "trl", "gymnasium", "math-verify>=0.7", "pebble>=5.0")
"""TRL, plus what importing our reward needs (``areal_env`` needs gymnasium; the
reward needs math-verify and pebble)."""


def ensure_trl_venv(venv: Path) -> Path:
    """The venv's python, after making the venv and installing TRL if it lacks them."""
    python = venv / "bin" / "python"
    probe = "import trl, gymnasium, math_verify, pebble"
    if python.exists() and subprocess.run([python, "-c", probe]).returncode == 0:
        return python
    print(f"installing TRL into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *TRL_PACKAGES], check=True)
    return python


def trl_versions(python: Path) -> str:
    code = (
        "import trl, transformers, torch;"
        "print(f'trl {trl.__version__}, transformers {transformers.__version__}, "
        "torch {torch.__version__}')"
    )
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


def build_start_model(folder: Path, args: argparse.Namespace) -> float:
    """Warm-start the embedded tiny model with our SFT and save it; seconds taken."""
    argv = [
        f"seed={args.seed}",
        f"torch_threads={args.torch_threads}",
        f"warm_start.max_steps={args.warm_start_steps}",
        "metrics.progress=false",
        f"output_dir={folder.parent / 'warm_start_run'}",
    ]
    cfg = load_config(GRPOConfig, argv)
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.torch_threads)
    start = time.perf_counter()
    parts = build_components(cfg)

    async def go():
        await start_engine(parts.engine)
        try:
            return await warm_start(
                cfg.warm_start,
                parts.policy,
                engine=parts.engine,
                client=parts.client,
                env_factory=parts.env_factory,
                agent=parts.agent,
                episode_fn=parts.episode_fn,
                seed=cfg.seed,
                progress=False,
                weights_dir=Path(cfg.output_dir) / "weights",
            )
        finally:
            await parts.engine.close()
            await parts.resources.aclose()

    result = asyncio.run(go())
    print(f"warm start: {result}", flush=True)
    parts.policy.save_pretrained(folder)
    parts.tokenizer.save_pretrained(folder)
    # AutoTokenizer would pick Qwen2Tokenizer from config.json (it drops spaces).
    tok_cfg = folder / "tokenizer_config.json"
    data = json.loads(tok_cfg.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg.write_text(json.dumps(data, indent=2))
    return time.perf_counter() - start


def write_tasks(path: Path, tokenizer, count: int) -> None:
    """``count`` Math-v0 tasks (default kwargs), prompts rendered as our chat client does."""
    env = MathEnv()
    with path.open("w") as f:
        for seed in range(count):
            obs, info = env.reset(seed=seed)
            prompt = tokenizer.apply_chat_template(obs, add_generation_prompt=True, tokenize=False)
            f.write(json.dumps({"prompt": prompt, "answer": info["answer"]}) + "\n")


def run_ours(model: Path, out: Path, args: argparse.Namespace) -> dict:
    argv = [
        f"seed={args.seed}",
        f"model.path={model}",
        "warm_start.enabled=false",
        f"rollout.batch_size={args.groups}",
        f"rollout.n_samples={args.samples}",
        f"train.steps={args.our_steps}",
        f"torch_threads={args.torch_threads}",
        "checkpoint.every_steps=0",
        "metrics.wandb_mode=disabled",
        "metrics.tensorboard=false",
        "metrics.progress=false",
        "metrics.plot=false",
        "metrics.dump_episodes_every=0",
        f"output_dir={out}",
    ]
    start = time.perf_counter()
    assert grpo.main(argv) == 0, f"run failed: {argv}"
    whole = time.perf_counter() - start
    rows = read_metrics(out / "metrics.jsonl")
    times, t = [], 0.0
    for r in rows:
        t += r["time/step_s"]
        times.append(t)
    return {
        "rewards": [r["rollout/reward_mean"] for r in rows],
        "t": times,
        "step_s": [r["time/step_s"] for r in rows],
        "whole_s": whole,
    }


def run_trl(python: Path, model: Path, tasks: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [
        str(python),
        str(TRL_SIDE),
        f"--model={model}",
        f"--tasks={tasks}",
        f"--out={out}",
        f"--steps={args.trl_steps}",
        f"--time-limit={args.trl_time_limit}",
        f"--groups={args.groups}",
        f"--samples={args.samples}",
        f"--seed={args.seed}",
        f"--torch-threads={args.torch_threads}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("VIRTUAL_ENV", None)
    start = time.perf_counter()
    log = out / "trl_stdout.log"
    out.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    whole = time.perf_counter() - start
    if proc.returncode != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"TRL side failed (exit {proc.returncode}); log: {log}")
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    times = [r["t"] for r in rows]
    return {
        "rewards": [r["reward"] for r in rows],
        "t": times,
        "step_s": [b - a for a, b in zip([0.0, *times], times, strict=False)],
        "whole_s": whole,
    }


def moving_average(xs: list[float], window: int) -> list[float]:
    return [statistics.fmean(xs[max(0, i + 1 - window) : i + 1]) for i in range(len(xs))]


def time_to_target(side: dict, target: float, window: int) -> tuple[int, float] | None:
    """(step, training seconds) where the trailing ``window``-step mean first reaches it."""
    ma = moving_average(side["rewards"], window)
    for i, value in enumerate(ma):
        if i + 1 >= window and value >= target:
            return i + 1, side["t"][i]
    return None


def summarize(name: str, side: dict, args: argparse.Namespace) -> None:
    timed = side["step_s"][args.skip :] or side["step_s"]
    side["mean_step_s"] = statistics.fmean(timed)
    r = side["rewards"]
    print(
        f"{name}: {len(r)} steps in {side['t'][-1]:.1f} s of training "
        f"({side['whole_s']:.1f} s with start-up), {side['mean_step_s']:.3f} s/step after "
        f"{args.skip}; reward first {args.window} {statistics.fmean(r[: args.window]):.3f}, "
        f"last {args.window} {statistics.fmean(r[-args.window :]):.3f}",
        flush=True,
    )


def fmt_reach(hit: tuple[int, float] | None, steps: int) -> str:
    return f"not reached in {steps} steps" if hit is None else f"{hit[1]:.1f} s (step {hit[0]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 min)")
    parser.add_argument("--our-steps", type=int, default=400)
    parser.add_argument("--trl-steps", type=int, default=400)
    parser.add_argument(
        "--trl-time-limit", type=float, default=420.0, help="stop TRL after this many seconds"
    )
    parser.add_argument("--groups", type=int, default=32, help="tasks per step")
    parser.add_argument("--samples", type=int, default=8, help="samples per task (group)")
    parser.add_argument("--warm-start-steps", type=int, default=1500, help="SFT step cap")
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps left out of s/step")
    parser.add_argument("--window", type=int, default=10, help="moving-average window, steps")
    parser.add_argument("--margin", type=float, default=0.2, help="reward gain to reach")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-trl")
    parser.add_argument("--work-dir", type=Path, help="keep models and logs here")
    args = parser.parse_args()
    if args.quick:
        args.our_steps = args.trl_steps = 8
        args.warm_start_steps, args.skip, args.window = 30, 2, 3
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    python = ensure_trl_venv(args.venv)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python "
        f"{platform.python_version()}, torch {torch.__version__}, torch_threads="
        f"{args.torch_threads}; TRL venv: {trl_versions(python)}"
    )
    print(
        f"{args.groups} tasks x {args.samples} samples per step; ours {args.our_steps} steps, "
        f"TRL {args.trl_steps} steps or {args.trl_time_limit:.0f} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = work / "start_model"
        took = build_start_model(model, args)
        print(f"start model: {model} ({took:.1f} s)", flush=True)
        from areal_env.models.tiny import load_chat_tokenizer

        tasks = work / "tasks.jsonl"
        write_tasks(tasks, load_chat_tokenizer(model), args.trl_steps * args.groups)

        ours = run_ours(model, work / "ours", args)
        summarize("ours", ours, args)
        trl = run_trl(python, model, tasks, work / "trl", args)
        summarize("TRL", trl, args)

    w = args.window
    start = statistics.fmean(
        [statistics.fmean(ours["rewards"][:w]), statistics.fmean(trl["rewards"][:w])]
    )
    target = start + args.margin
    hit_ours = time_to_target(ours, target, w)
    hit_trl = time_to_target(trl, target, w)
    print(
        f"\nstarting reward (mean of both sides' first {w} steps) {start:.3f}; "
        f"target {target:.3f} ({w}-step moving average)\n"
    )
    print("| measure | TRL GRPOTrainer | ours (trainers/grpo.py) | TRL / ours |")
    print("| --- | --- | --- | --- |")
    print(
        f"| s/step (after {args.skip}) | {trl['mean_step_s']:.3f} | {ours['mean_step_s']:.3f} "
        f"| {trl['mean_step_s'] / ours['mean_step_s']:.2f}x |"
    )
    if hit_ours and hit_trl:
        ratio = f"{hit_trl[1] / hit_ours[1]:.2f}x"
    elif hit_ours:
        ratio = f"> {trl['t'][-1] / hit_ours[1]:.2f}x"
    else:
        ratio = "n/a"
    print(
        f"| time to +{args.margin} reward | {fmt_reach(hit_trl, len(trl['rewards']))} "
        f"| {fmt_reach(hit_ours, len(ours['rewards']))} | {ratio} |"
    )
    n = min(len(trl["rewards"]), len(ours["rewards"]))
    ma_trl = moving_average(trl["rewards"], w)[n - 1]
    ma_ours = moving_average(ours["rewards"], w)[n - 1]
    print(
        f"| at step {n}: {w}-step mean reward (training time) | {ma_trl:.3f} "
        f"({trl['t'][n - 1]:.1f} s) | {ma_ours:.3f} ({ours['t'][n - 1]:.1f} s) "
        f"| {trl['t'][n - 1] / ours['t'][n - 1]:.2f}x |"
    )
    print(
        f"| reward, last {w} steps | {statistics.fmean(trl['rewards'][-w:]):.3f} "
        f"({len(trl['rewards'])} steps) | {statistics.fmean(ours['rewards'][-w:]):.3f} "
        f"({len(ours['rewards'])} steps) | |"
    )


if __name__ == "__main__":
    main()
