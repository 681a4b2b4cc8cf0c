"""train.backend=fsdp: FSDP2 over torchrun ranks (gloo on CPU) matches one device.

Each test launches ``python -m torch.distributed.run`` on ``fsdp_worker_script.py``
(2 ranks, 1 thread each) or runs the trainer in-process as a 1-rank group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from areal_env.metrics import read_metrics
from areal_env.testing import (
    PARITY_ENV_ID,
    SMALL_RUN_OVERRIDES,
    TINY_MODEL_OVERRIDES,
    register_test_envs,
)
from areal_env.trainers import distributed
from areal_env.trainers.backends.base import TrainConfig

WORKER = Path(__file__).with_name("fsdp_worker_script.py")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300
STATE_ATOL = 1e-5
"""Updated weights of 2 ranks vs one device: gloo sums the two halves of each
gradient in another order than one device does, so float32 rounding differs;
Adam turns that into < 1e-6 here (lr 1e-3); a wrong normalisation moves weights
by ~1e-3 (the step's own size)."""

SMALL_GRPO = [
    *TINY_MODEL_OVERRIDES,
    *SMALL_RUN_OVERRIDES,
    "checkpoint.every_steps=2",
    f"env.id={PARITY_ENV_ID}",
    "warm_start.enabled=false",
    "train.backend=fsdp",
    "torch_threads=1",
]


def _torchrun(nproc: int, *args: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={distributed.free_port()}",
        str(WORKER),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One 2-rank run of the worker's ``train`` mode: parity report, checkpoint, states."""
    out = tmp_path_factory.mktemp("fsdp_train")
    _torchrun(2, "train", str(out), str(tiny_model_dir))
    return out


def test_two_ranks_give_the_loss_and_weights_of_one_device(two_rank_run):
    # 5 trained rows, rows of different lengths, 2 minibatches (3 + 2 rows) split 2+1 and
    # 1+1 over the ranks, micro-batches of 1 (rank 1 runs an idle pass), GRPO loss with a
    # KL term against a reference model.
    report = json.loads((two_rank_run / "parity.json").read_text())
    got, want = report["stats"], report["want_stats"]
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert report["weights_moved"] > 100 * STATE_ATOL, "the step must move the weights"
    assert report["weights_max_diff"] <= STATE_ATOL


@pytest.mark.parametrize("nproc", [1, 2])
def test_resume_a_two_rank_checkpoint_on_any_number_of_ranks(two_rank_run, tiny_model_dir, nproc):
    _torchrun(nproc, "resume", str(two_rank_run), str(tiny_model_dir))
    report = json.loads((two_rank_run / f"resume_{nproc}.json").read_text())
    assert report["model_max_diff"] == 0.0
    assert report["optim_max_diff"] == 0.0
    assert report["optim_steps"] == [2.0]  # AdamW's step count came back too
    assert report["lr_epoch"] == 2
    # Same next step as the run that saved it (weights, Adam moments, LR, reference).
    assert report["next_max_diff"] <= STATE_ATOL


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


def _check_run(out: Path, steps: int) -> None:
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["train/version"] for r in rows] == [float(v) for v in range(1, steps + 1)]
    assert all(r["train/rows"] > 0 for r in rows), "every step must have trained rows"
    initial, final = _weights(out / "tiny_model"), _weights(out / "final_model")
    assert initial.keys() == final.keys()
    assert any(not torch.equal(initial[k], final[k]) for k in initial), "weights unchanged"


def test_grpo_under_torchrun_on_two_ranks(tmp_path):
    out = tmp_path / "run"
    _torchrun(2, "grpo", *SMALL_GRPO, "train.steps=2", f"output_dir={out}")
    _check_run(out, 2)
    backend_dir = out / "checkpoints" / "step_000002" / "backend"
    assert sorted(p.name for p in backend_dir.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (out / "metrics.jsonl.1").exists()  # only rank 0 writes outputs


def test_fsdp_backend_without_torchrun_runs_as_one_rank(tmp_path, monkeypatch):
    from areal_env.trainers import grpo

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    register_test_envs()
    out = tmp_path / "run"
    assert grpo.main([*SMALL_GRPO, "train.steps=2", f"output_dir={out}"]) == 0
    assert not torch.distributed.is_initialized(), "the 1-rank group must be torn down"
    _check_run(out, 2)


def test_fsdp_config_is_validated():
    assert TrainConfig(backend="fsdp").fsdp.mixed_precision == "fp32"
    with pytest.raises(ValueError, match="mixed_precision"):
        from areal_env.trainers.backends.fsdp_config import FSDPConfig

        FSDPConfig(mixed_precision="fp16")


def test_bf16_and_activation_checkpointing_train_on_one_rank(tiny_model_and_tokenizer):
    # In-process 1-rank group: bf16 compute with fp32 master weights, layers recomputed in
    # backward; the loss stays that of fp32 to bf16 precision and the weights move.
    import copy

    from areal_env.trainers.algorithms.losses.nll import nll_loss
    from areal_env.trainers.backends.fsdp import FSDPBackend
    from areal_env.trainers.backends.fsdp_config import FSDPConfig
    from areal_env.trainers.backends.torch_single import TorchBackend

    sys.path.insert(0, str(WORKER.parent))
    from fsdp_worker_script import ROWS, _batch

    model, tok = tiny_model_and_tokenizer
    opts = FSDPConfig(mixed_precision="bf16", activation_checkpointing=True)
    cfg = TrainConfig(backend="fsdp", lr=1e-3, ppo_minibatches=1, micro_batch_size=2, fsdp=opts)
    policy = copy.deepcopy(model)
    try:
        backend = FSDPBackend(policy, cfg, pad_id=tok.pad_token_id)
        got = backend.train_step(_batch(), nll_loss, ROWS)
        weights = backend.weights_for_sync()
    finally:
        distributed.shutdown(notify=False)
    single = TorchBackend(copy.deepcopy(model), TrainConfig(), pad_id=tok.pad_token_id)
    want = single.train_step(_batch(), nll_loss, ROWS)
    assert got["sft/nll"] == pytest.approx(want["sft/nll"], rel=2e-2)
    assert all(v.dtype == torch.float32 for v in weights.values())  # master weights stay fp32
    before = model.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in weights.items())
