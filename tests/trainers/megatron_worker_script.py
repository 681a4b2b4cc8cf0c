"""Shared checks for tests/trainers/test_megatron_backend.py, in-process or under ``torchrun``.

``python -m torch.distributed.run --nproc-per-node 2 megatron_worker_script.py OUT MODEL``
runs, on 2 gloo ranks with tensor_parallel_size=2, the vocab-parallel logprob
check (:func:`vocab_report`) and the backend parity check (:func:`parity_report`),
after checking that the backend registry does not import megatron-core; rank 0
writes all three to ``OUT/tp<TP>_pp<PP>.json``. Optional arguments after MODEL,
``TP PP DEVICE``, pick another layout and device (``scripts/gpu_check_megatron.sh``).
The test module calls :func:`parity_report` itself for TP=1 (a 1-rank group in
the pytest process).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

ROWS = [0, 1, 2, 3, 5]
"""5 trained rows of different lengths: minibatches of 3 and 2 rows, micro-batches of 2."""
NEXT_ROWS = [1, 2, 4, 5]


def batch():
    """3 groups of 2, ragged lengths, one row sampled at T=0.7, all with behaviour logprobs."""
    from areal_env.testing import make_sample
    from areal_env.types import EpisodeBatch, Trajectory

    def traj(prompt, gen, reward, temperature=1.0):
        sample = make_sample(prompt, gen, logprob=-2.0, temperature=temperature)
        return Trajectory(samples=[sample], reward=reward)

    groups = [
        [traj([2, 10, 11], [20, 21, 3], 1.0), traj([2, 10, 11], [22, 3], 0.0, 0.7)],
        [traj([2, 13, 14, 15], [23, 3], 1.0), traj([2, 13, 14, 15], [24, 25, 26, 27, 3], 0.0)],
        [traj([2, 16], [28], 1.0), traj([2, 16], [29, 30, 3], 0.0)],
    ]
    return EpisodeBatch(groups=groups, advantages=[[1.0, -1.0], [0.5, -0.5], [0.7, -0.7]])


def config(tp: int, pp: int = 1):
    from areal_env.trainers.backends.base import TrainConfig
    from areal_env.trainers.backends.megatron_config import MegatronConfig

    return TrainConfig(
        backend="megatron",
        lr=1e-3,
        warmup_steps=2,
        ppo_minibatches=2,
        micro_batch_size=2,
        megatron=MegatronConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp),
    )


def loss_fn():
    from areal_env.trainers.algorithms.presets import resolve_preset

    return resolve_preset("grpo", kl_coef=0.1).loss_fn(max_len=8)


def models(model_dir: str, device: str = "cpu"):
    """Policy, a reference that differs from it (so the KL term matters), tokenizer."""
    from areal_env.models.tiny import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_dir, device=device)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen).to(p.device))
    return model, ref, tok


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def megatron_grads(backend) -> dict[str, torch.Tensor]:
    """The backend's gradients, gathered under HF names (a collective; rank 0 gets them)."""
    return backend.gather_hf({n: p.grad for n, p in backend.model.named_parameters()})


def parity_report(tp: int, model_dir: str, out: Path, pp: int = 1, device: str = "cpu") -> dict:
    """MegatronBackend(TP=tp, PP=pp) against TorchBackend on the same batch; checkpoint round trip.

    Every rank runs it (lockstep); the returned numbers are rank 0's.
    """
    from areal_env.trainers import distributed
    from areal_env.trainers.backends.megatron import MegatronBackend
    from areal_env.trainers.backends.torch_single import TorchBackend

    model, ref, tok = models(model_dir, device)
    pad = tok.pad_token_id
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    single = TorchBackend(copy.deepcopy(model), config(tp, pp), pad_id=pad, ref_model=ref)
    mg = MegatronBackend(
        copy.deepcopy(model), config(tp, pp), pad_id=pad, ref_model=ref, lockstep=True
    )
    main = distributed.is_main()
    report: dict = {}
    synced = mg.weights_for_sync()
    if main:
        report["sync_keys_equal"] = synced.keys() == initial.keys()
        report["sync_max_diff"] = max_diff(synced, initial)

    # Gradients of one minibatch (all rows, 3 micro-batches), before any optimizer step.
    padded = batch().padded(pad, rows=ROWS)
    idx = torch.arange(len(ROWS))
    ref_lp = single.token_logprobs(
        padded.input_ids, padded.attention_mask, ref, temperatures=padded.temperatures
    )
    single.model.train()
    single.accumulate_gradients(padded, idx, ref_lp, loss_fn())
    want = {n: p.grad for n, p in single.model.named_parameters()}
    mg.model.train()
    mg._accumulate_gradients(padded, idx, ref_lp, loss_fn())
    got = megatron_grads(mg)
    if main:
        report["grad_max_diff"] = max_diff(got, want)
        report["grad_max"] = max(float(g.abs().max()) for g in want.values())
    single.optimizer.zero_grad(set_to_none=True)
    mg.optimizer.zero_grad(set_to_none=True)

    # One train_step (2 minibatches -> 2 AdamW steps, KL against the reference).
    stats = mg.train_step(batch(), loss_fn(), ROWS)
    want_stats = single.train_step(batch(), loss_fn(), ROWS)
    after = mg.weights_for_sync()
    if main:
        report["stats"], report["want_stats"] = stats, want_stats
        report["weights_max_diff"] = max_diff(after, single.weights_for_sync())
        report["weights_moved"] = max_diff(after, initial)

    # Checkpoint: a fresh backend that loads it takes the same next step.
    ckpt = str(out / f"ckpt_tp{tp}_pp{pp}")
    mg.save(ckpt)
    mg.train_step(batch(), loss_fn(), NEXT_ROWS)
    next_weights = mg.weights_for_sync()
    fresh = MegatronBackend(
        copy.deepcopy(model), config(tp, pp), pad_id=pad, ref_model=ref, lockstep=True
    )
    fresh.load(ckpt)
    loaded = fresh.weights_for_sync()
    lr_epoch = fresh.lr_schedule.last_epoch
    adam_steps = sorted({float(s["step"]) for s in fresh.optimizer.state.values()})
    fresh.train_step(batch(), loss_fn(), NEXT_ROWS)
    resumed = fresh.weights_for_sync()
    if main:
        report["loaded_max_diff"] = max_diff(loaded, after)
        report["lr_epoch"], report["adam_steps"] = lr_epoch, adam_steps
        report["resumed_max_diff"] = max_diff(resumed, next_weights)
        report["next_moved"] = max_diff(next_weights, after)
    return report


def vocab_report(vocab: int = 97, device: str = "cpu") -> dict:
    """This rank's shard of random logits (vocab padded to a multiple of the ranks) vs full."""
    import torch.distributed as dist

    from areal_env.trainers.backends.base import gather_token_logprobs, masked_entropy_sum
    from areal_env.trainers.backends.megatron import (
        vocab_parallel_entropy_sum,
        vocab_parallel_token_logprobs,
    )

    size, rank = dist.get_world_size(), dist.get_rank()
    gen = torch.Generator().manual_seed(0)
    full = (3 * torch.randn(3, 6, vocab, generator=gen)).to(device).requires_grad_(True)
    ids = torch.randint(0, vocab, (3, 6), generator=gen)
    ids[0, 3] = vocab - 1  # the last real id, next to the padding
    ids = ids.to(device)
    temps = torch.tensor([1.0, 0.7, 0.0], device=device)
    weights = torch.randn(3, 6, generator=gen).to(device)
    mask = torch.ones(3, 6, device=device)
    want = gather_token_logprobs(full, ids, temps)
    (want * weights).sum().backward()
    width = -(-vocab // size)
    filler = torch.full((3, 6, width * size - vocab), 5.0, device=device)
    padded = torch.cat([full.detach(), filler], -1)
    shard = padded[..., rank * width : (rank + 1) * width].clone().requires_grad_(True)
    got = vocab_parallel_token_logprobs(shard, ids, temps, None, vocab_size=vocab)
    (got * weights).sum().backward()
    grads = [torch.empty_like(shard.grad) for _ in range(size)]
    dist.all_gather(grads, shard.grad)
    entropy = vocab_parallel_entropy_sum(shard, mask, temps, None, vocab_size=vocab)
    return {
        "logprob_max_diff": float((got - want).abs().max()),
        "grad_max_diff": float((torch.cat(grads, -1)[..., :vocab] - full.grad).abs().max()),
        "entropy": entropy,
        "want_entropy": masked_entropy_sum(full.detach(), mask, temps),
    }


def main(out: Path, model_dir: str, tp: int = 2, pp: int = 1, device: str = "cpu") -> None:
    # First, while nothing has imported megatron-core: the registry must not either.
    from areal_env.trainers.backends.registry import BACKEND_CLASSES

    lazy = "megatron" in BACKEND_CLASSES and not any(m.startswith("megatron") for m in sys.modules)
    from areal_env.trainers import distributed

    distributed.init(device=device)
    torch.manual_seed(0)
    report = {
        "lazy_registry": lazy,
        "vocab": vocab_report(device=device),
        "parity": parity_report(tp, model_dir, out, pp=pp, device=device),
    }
    if distributed.is_main():
        (out / f"tp{tp}_pp{pp}.json").write_text(json.dumps(report))
    distributed.shutdown(notify=False)


if __name__ == "__main__":
    # OUT MODEL [TP PP DEVICE]: the test runs the CPU default (TP=2, PP=1, cpu)
    args = sys.argv[1:]
    tp, pp = (int(args[2]), int(args[3])) if len(args) > 3 else (2, 1)
    main(Path(args[0]), args[1], tp, pp, args[4] if len(args) > 4 else "cpu")
