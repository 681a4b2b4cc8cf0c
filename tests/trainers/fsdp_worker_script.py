"""Worker for tests/trainers/test_fsdp.py, run under ``torchrun`` (one copy per rank).

``python -m torch.distributed.run --nproc-per-node N fsdp_worker_script.py MODE OUT MODEL``

Modes:
    train: one FSDP step on a batch of 5 trained rows (uneven over ranks), compared on
        rank 0 with TorchBackend on one device (``OUT/parity.json``); then a checkpoint
        (``OUT/ckpt``), the full model/optimizer state at save (``OUT/saved.pt``), and
        the weights after the next step (``OUT/next.pt``).
    resume: a fresh backend loads ``OUT/ckpt`` onto this many ranks, compares with
        ``saved.pt`` and ``next.pt``; rank 0 writes ``OUT/resume_<N>.json``.
    grpo: ``trainers/grpo.py``'s main with the test env registered; argv after MODE.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch


def _batch():
    from areal_env.testing import make_sample
    from areal_env.types import EpisodeBatch, Trajectory

    def traj(prompt, gen, reward):
        return Trajectory(samples=[make_sample(prompt, gen, logprob=-2.0)], reward=reward)

    groups = [
        [traj([2, 10, 11], [20, 21, 3], 1.0), traj([2, 10, 11], [22, 3], 0.0)],
        [traj([2, 13, 14, 15], [23, 3], 1.0), traj([2, 13, 14, 15], [24, 25, 26, 27, 3], 0.0)],
        [traj([2, 16], [28], 1.0), traj([2, 16], [29, 30, 3], 0.0)],
    ]
    adv = [[1.0, -1.0], [0.5, -0.5], [0.7, -0.7]]
    return EpisodeBatch(groups=groups, advantages=adv)


ROWS = [0, 1, 2, 3, 5]
"""5 trained rows: minibatches of 3 and 2 rows, split 2+1 and 1+1 over two ranks."""
NEXT_ROWS = [1, 2, 4, 5]


def _config():
    from areal_env.trainers.backends.base import TrainConfig

    # micro_batch_size=1: the ranks run different numbers of real micro-batches.
    return TrainConfig(
        backend="fsdp", lr=1e-3, warmup_steps=2, ppo_minibatches=2, micro_batch_size=1
    )


def _loss():
    from areal_env.trainers.algorithms.presets import resolve_preset

    return resolve_preset("grpo", kl_coef=0.1).loss_fn(max_len=8)


def _models(model_dir: str):
    from areal_env.models.tiny import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_dir)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():  # a reference that differs from the policy: the KL term matters
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model, ref, tok


def _full_states(backend):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    states = get_state_dict(backend.model, backend.optimizer, options=opts)
    # On CPU these may alias the live tensors: copy before the next step moves them.
    return tuple(_clone(s) for s in states)


def _clone(obj):
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_clone(v) for v in obj)
    return obj.detach().clone() if isinstance(obj, torch.Tensor) else obj


def _max_diff(a, b) -> float:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (sorted(a), sorted(b))
        return max((_max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list | tuple):
        return max((_max_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, torch.Tensor):
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    return 0.0 if a == b else float("inf")


def train(out: Path, model_dir: str) -> None:
    from areal_env.trainers import distributed
    from areal_env.trainers.backends.fsdp import FSDPBackend
    from areal_env.trainers.backends.torch_single import TorchBackend

    distributed.init()
    torch.manual_seed(0)
    model, ref, tok = _models(model_dir)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    single = TorchBackend(
        copy.deepcopy(model), _config(), pad_id=tok.pad_token_id, ref_model=copy.deepcopy(ref)
    )
    backend = FSDPBackend(model, _config(), pad_id=tok.pad_token_id, ref_model=ref, lockstep=True)
    stats = backend.train_step(_batch(), _loss(), ROWS)
    want = single.train_step(_batch(), _loss(), ROWS)
    weights = backend.weights_for_sync()
    if distributed.is_main():
        reference = single.model.state_dict()
        report = {
            "weights_max_diff": _max_diff(weights, {k: reference[k] for k in weights}),
            "stats": stats,
            "want_stats": want,
            "weights_moved": _max_diff(weights, {k: initial[k] for k in weights}),
        }
        (out / "parity.json").write_text(json.dumps(report))
    backend.save(str(out / "ckpt"))
    model_sd, optim_sd = _full_states(backend)
    if distributed.is_main():
        torch.save({"model": model_sd, "optim": optim_sd}, out / "saved.pt")
    backend.train_step(_batch(), _loss(), NEXT_ROWS)
    after = backend.weights_for_sync()
    if distributed.is_main():
        torch.save(after, out / "next.pt")


def resume(out: Path, model_dir: str) -> None:
    from areal_env.trainers import distributed
    from areal_env.trainers.backends.fsdp import FSDPBackend

    distributed.init()
    torch.manual_seed(1)
    model, ref, tok = _models(model_dir)
    backend = FSDPBackend(model, _config(), pad_id=tok.pad_token_id, ref_model=ref, lockstep=True)
    backend.load(str(out / "ckpt"))
    model_sd, optim_sd = _full_states(backend)
    lr_epoch = backend.lr_schedule.last_epoch
    backend.train_step(_batch(), _loss(), NEXT_ROWS)
    after = backend.weights_for_sync()
    if distributed.is_main():
        saved = torch.load(out / "saved.pt", weights_only=False)
        report = {
            "model_max_diff": _max_diff(model_sd, saved["model"]),
            "optim_max_diff": _max_diff(optim_sd, saved["optim"]),
            "optim_steps": sorted({float(s["step"]) for s in optim_sd["state"].values()}),
            "lr_epoch": lr_epoch,
            "next_max_diff": _max_diff(after, torch.load(out / "next.pt", weights_only=False)),
        }
        name = f"resume_{distributed.world_size()}.json"
        (out / name).write_text(json.dumps(report))


def grpo(argv: list[str]) -> int:
    from areal_env.testing import register_test_envs
    from areal_env.trainers import grpo as trainer

    register_test_envs()
    return trainer.main(argv)


if __name__ == "__main__":
    torch.set_num_threads(1)  # two ranks share the test machine's cores
    mode = sys.argv[1]
    if mode == "grpo":
        sys.exit(grpo(sys.argv[2:]))
    from areal_env.trainers import distributed

    {"train": train, "resume": resume}[mode](Path(sys.argv[2]), sys.argv[3])
    distributed.shutdown(notify=False)  # lockstep: nobody waits for STOP
