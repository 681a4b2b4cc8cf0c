"""Memory and step time of the FSDP backend on 1 rank against 2 ranks (CPU, gloo).

The script starts ``torchrun`` twice, with 1 and with 2 processes, on itself in
worker mode. Each worker loads the same Qwen2 model, larger than the tiny
default so that sharding matters (default: hidden 512, 4 layers, 8 heads, MLP
2048: ~13M parameters), wraps it in ``FSDPBackend`` (``lockstep=True``: every
rank calls ``train_step`` itself, as in the tests), runs ``--warmup`` untimed
and ``--steps`` timed train steps (NLL loss) on the same synthetic batch, and
reports per rank:

* ``state_bytes``: bytes of this rank's parameter shards plus its AdamW state
  tensors (``t.to_local().numel() * t.element_size()`` for DTensors). This is
  what FSDP shards; the target is 2 ranks <= 0.6x of 1 rank.
* ``max_rss``: the process's peak resident memory (includes the interpreter,
  torch, the full model loaded before sharding, activations), for context.
* ``step_s``: the median step time.

The rows of a step are split over the ranks (``train.micro_batch_size`` rows per
rank per micro-batch), so both runs do the same work in total. Each run gets
all the machine's cores: ``--threads`` (default ``cpu_count``) divided by the
number of ranks.

Usage::

    python benchmarks/fsdp.py
    python benchmarks/fsdp.py --hidden 256 --layers 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _local_bytes(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def _batch(rows: int, seq_len: int, vocab: int, seed: int):
    from areal_env.testing import make_sample
    from areal_env.types import EpisodeBatch, Trajectory

    gen = torch.Generator().manual_seed(seed)
    group = []
    for _ in range(rows):
        ids = torch.randint(4, vocab, (seq_len,), generator=gen).tolist()
        prompt, answer = ids[: seq_len // 4], ids[seq_len // 4 :]
        group.append(Trajectory(samples=[make_sample(prompt, answer, logprob=-2.0)], reward=1.0))
    return EpisodeBatch(groups=[group], advantages=[[1.0] * rows])


def worker(args: argparse.Namespace) -> None:
    """One rank: shard, train, report (rank 0 writes the JSON)."""
    from areal_env.models.tiny import load_model_and_tokenizer
    from areal_env.trainers import distributed
    from areal_env.trainers.algorithms.losses.nll import nll_loss
    from areal_env.trainers.backends.base import TrainConfig
    from areal_env.trainers.backends.fsdp import FSDPBackend

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, args.threads // world))
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(args.model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = TrainConfig(
        backend="fsdp", lr=1e-4, ppo_minibatches=1, micro_batch_size=args.micro_batch_size
    )
    backend = FSDPBackend(model, cfg, pad_id=tok.pad_token_id, lockstep=True)
    batch = _batch(args.rows, args.seq_len, len(tok), seed=1)
    rows = list(range(args.rows))
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        backend.train_step(batch, nll_loss, rows)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    params = sum(_local_bytes(p) for p in backend.model.parameters())
    optim = sum(
        _local_bytes(v)
        for s in backend.optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    mine = {
        "rank": distributed.rank(),
        "param_bytes": params,
        "optim_bytes": optim,
        "state_bytes": params + optim,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_s": statistics.median(times),
        "threads": torch.get_num_threads(),
    }
    gathered: list[dict | None] = [None] * distributed.world_size()
    torch.distributed.all_gather_object(gathered, mine)
    if distributed.is_main():
        report = {"world": world, "params": n_params, "ranks": gathered}
        Path(args.out).write_text(json.dumps(report))
    distributed.shutdown(notify=False)


def _run(nproc: int, model_dir: Path, out: Path, args: argparse.Namespace) -> dict:
    from areal_env.trainers.distributed import free_port

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        __file__,
        "--worker",
        f"--model-dir={model_dir}",
        f"--out={out}",
        f"--rows={args.rows}",
        f"--seq-len={args.seq_len}",
        f"--micro-batch-size={args.micro_batch_size}",
        f"--warmup={args.warmup}",
        f"--steps={args.steps}",
        f"--threads={args.threads}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // nproc))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(
            f"torchrun with {nproc} ranks failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--rows", type=int, default=8, help="rows per train step")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--micro-batch-size", type=int, default=4, help="rows per rank per pass")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores in all")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    from areal_env.models.tiny import TinyModelConfig, build_tiny_model

    shape = TinyModelConfig(
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        intermediate_size=args.intermediate,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", shape)
        one = _run(1, model_dir, Path(tmp) / "one.json", args)
        two = _run(2, model_dir, Path(tmp) / "two.json", args)

    mib = 1024**2
    print(f"python {platform.python_version()}, torch {torch.__version__}, {args.threads} cores")
    print(
        f"model: hidden {args.hidden}, {args.layers} layers, {one['params'] / 1e6:.1f}M params; "
        f"step: {args.rows} rows x {args.seq_len} tokens, micro-batch {args.micro_batch_size}/rank"
    )
    print(
        f"{'ranks':>5} {'rank':>4} {'params MiB':>10} {'AdamW MiB':>9} {'state MiB':>9} "
        f"{'max RSS MiB':>11} {'step s':>7}"
    )
    for run in (one, two):
        for r in run["ranks"]:
            print(
                f"{run['world']:>5} {r['rank']:>4} {r['param_bytes'] / mib:>10.1f} "
                f"{r['optim_bytes'] / mib:>9.1f} {r['state_bytes'] / mib:>9.1f} "
                f"{r['max_rss'] / mib:>11.0f} {r['step_s']:>7.3f}"
            )
    peak_one = max(r["state_bytes"] for r in one["ranks"])
    peak_two = max(r["state_bytes"] for r in two["ranks"])
    step_one = max(r["step_s"] for r in one["ranks"])
    step_two = max(r["step_s"] for r in two["ranks"])
    ratio = peak_two / peak_one
    print(f"param+AdamW state per rank, 2 ranks / 1 rank: {ratio:.3f} (target <= 0.6)")
    print(f"median step time, 2 ranks / 1 rank: {step_two / step_one:.2f}")
    rss = max(r["max_rss"] for r in two["ranks"]) / max(r["max_rss"] for r in one["ranks"])
    print(f"peak RSS per rank, 2 ranks / 1 rank: {rss:.2f}")
    if ratio > 0.6:
        sys.exit("FAIL: sharding did not cut the per-rank state to <= 0.6x")


if __name__ == "__main__":
    main()
