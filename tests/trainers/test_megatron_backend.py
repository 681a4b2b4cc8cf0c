"""train.backend=megatron on CPU: megatron-core's GPTModel, TP=1 in-process, TP=2 on 2 gloo ranks.

Each parity check trains the same batch with ``TorchBackend`` and compares
gradients (tight), loss and metrics, and weights after AdamW (see WEIGHTS_ATOL).
The shared code lives in ``megatron_worker_script.py``, which ``torchrun`` also runs.
PP > 1 cannot run on CPU (megatron-core's pipeline schedules allocate on "cuda"):
``scripts/gpu_check_megatron.sh`` covers it on GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from areal_env.trainers import distributed
from areal_env.trainers.backends.base import TrainConfig, gather_token_logprobs
from areal_env.trainers.backends.megatron import check_supported, vocab_parallel_token_logprobs
from areal_env.trainers.backends.megatron_config import MegatronConfig

WORKER = Path(__file__).with_name("megatron_worker_script.py")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(WORKER.parent))
import megatron_worker_script as worker  # noqa: E402

GRAD_ATOL = 1e-6
"""Gradients of one minibatch vs one device (largest entry ~2e-2; measured diff ~1e-8
for TP=1 and TP=2): a wrong normaliser or a wrong shard order is off by ~1e-3."""
WEIGHTS_ATOL = 5e-5
"""Weights after 2 AdamW steps (lr 1e-3, so moved ~1.5e-3). Adam's first steps are
~lr * sign(grad), so entries whose gradient is ~0 amplify float rounding: measured
~1.5e-5. Adam is blind to a constant loss scale: GRAD_ATOL is the sharp check."""


def _check_parity(report: dict) -> None:
    assert report["sync_keys_equal"] and report["sync_max_diff"] == 0.0
    assert report["grad_max"] > 1e-3, "the batch must have a gradient"
    assert report["grad_max_diff"] <= GRAD_ATOL
    got, want = report["stats"], report["want_stats"]
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert report["weights_moved"] > 10 * WEIGHTS_ATOL, "the step must move the weights"
    assert report["weights_max_diff"] <= WEIGHTS_ATOL
    # Checkpoint: exact weights, LR schedule and AdamW state come back; same next step.
    assert report["loaded_max_diff"] == 0.0
    assert report["lr_epoch"] == 2 and report["adam_steps"] == [2.0]
    assert report["next_moved"] > 10 * WEIGHTS_ATOL
    assert report["resumed_max_diff"] <= 1e-6


@pytest.fixture(scope="module")
def tp2_run(tiny_model_dir, tmp_path_factory):
    """Start the 2-rank torchrun (gloo, 1 thread each) of the worker: TP=2.

    It starts before the in-process TP=1 run (which depends on this fixture) so
    the two overlap; :func:`tp2_report` waits for it.
    """
    out = tmp_path_factory.mktemp("mg2")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={distributed.free_port()}",
        str(WORKER),
        str(out),
        str(tiny_model_dir),
    ]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def tp1_report(tp2_run, tiny_model_dir, tmp_path_factory) -> dict:
    """TP=1 in this process (a 1-rank gloo group the backend makes), torn down after."""
    from megatron.core import parallel_state

    torch.manual_seed(0)
    try:
        yield worker.parity_report(1, str(tiny_model_dir), tmp_path_factory.mktemp("mg1"))
    finally:
        parallel_state.destroy_model_parallel()
        distributed.shutdown(notify=False)


@pytest.fixture(scope="module")
def tp2_report(tp2_run, tp1_report) -> dict:
    """Wait for the torchrun (after the TP=1 run, which overlaps it); rank 0's report."""
    proc, out = tp2_run
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return json.loads((out / "tp2_pp1.json").read_text())


def test_vocab_parallel_logprobs_on_one_rank_equal_the_full_vocab_ones():
    # One rank holds the whole vocabulary (group None); padding columns (here large
    # logits, which would dominate the softmax) are excluded by vocab_size.
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 5, 11, generator=gen)).requires_grad_(True)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    temps = torch.tensor([0.6, 0.0])
    want = gather_token_logprobs(logits, ids, temps)
    (grad_want,) = torch.autograd.grad(want.sum(), logits)
    padded = torch.cat([logits, torch.full((2, 5, 3), 9.0)], -1)
    got = vocab_parallel_token_logprobs(padded, ids, temps, None, vocab_size=11)
    (grad_got,) = torch.autograd.grad(got.sum(), logits)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_got, grad_want, atol=1e-6, rtol=0)


def test_vocab_parallel_logprobs_over_two_ranks_equal_the_full_vocab_ones(tp2_report):
    # vocab 97 split 49 + 49 (one padding column), temperatures 1, 0.7 and 0 (scored at 1).
    report = tp2_report["vocab"]
    assert report["logprob_max_diff"] <= 1e-5
    assert report["grad_max_diff"] <= 1e-6
    assert report["entropy"] == pytest.approx(report["want_entropy"], rel=1e-5)


def test_tp1_train_step_matches_torch_backend_and_checkpoints_round_trip(tp1_report):
    _check_parity(tp1_report)


def test_tp2_over_gloo_matches_torch_backend_and_checkpoints_round_trip(tp2_report, tp1_report):
    # TorchBackend is the one-device reference of both, so this is also TP=2 == TP=1.
    _check_parity(tp2_report["parity"])
    tp1, tp2 = tp1_report["stats"], tp2_report["parity"]["stats"]
    for key, value in tp1.items():
        assert tp2[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_grpo_trains_checkpoints_and_resumes_with_megatron_on_one_rank(tmp_path, monkeypatch):
    # The real trainer, no wiring needed for 1 rank: make_backend builds MegatronBackend
    # (TP=1) and its 1-rank gloo group; grpo tears the group down at the end.
    from areal_env.metrics import read_metrics
    from areal_env.testing import (
        PARITY_ENV_ID,
        SMALL_RUN_OVERRIDES,
        TINY_MODEL_OVERRIDES,
        register_test_envs,
    )
    from areal_env.trainers import grpo

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    register_test_envs()
    out = tmp_path / "run"
    args = [
        *TINY_MODEL_OVERRIDES,
        *SMALL_RUN_OVERRIDES,
        "checkpoint.every_steps=2",
        f"env.id={PARITY_ENV_ID}",
        "warm_start.enabled=false",
        "train.backend=megatron",
        "torch_threads=1",
        f"output_dir={out}",
    ]
    assert grpo.main([*args, "train.steps=2"]) == 0
    assert not torch.distributed.is_initialized(), "the 1-rank group must be torn down"
    backend_dir = out / "checkpoints" / "step_000002" / "backend"
    assert (backend_dir / "optim_tp0_pp0.pt").exists()
    assert grpo.main(["--resume", *args, "train.steps=3"]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["train/version"] for r in rows] == [1.0, 2.0, 3.0]
    assert all(r["train/rows"] > 0 and r["train/grad_norm"] > 0 for r in rows)


def _hf_config(**overrides):
    from transformers import Qwen2Config

    kw = {
        "vocab_size": 106,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    }
    return Qwen2Config(**{**kw, **overrides})


@pytest.mark.parametrize(
    ("megatron", "overrides", "world", "device", "match"),
    [
        ({"tensor_parallel_size": 2}, {}, 1, "cpu", "exactly .* = 2 ranks, got 1"),
        (
            {"tensor_parallel_size": 4},
            {},
            4,
            "cuda",
            r"must divide the model's key/value heads \(2\)",
        ),
        ({"pipeline_parallel_size": 2}, {"num_hidden_layers": 3}, 2, "cuda", "3 layers"),
        ({"pipeline_parallel_size": 2}, {}, 2, "cpu", "needs CUDA devices"),
        ({"pipeline_parallel_size": 2}, {"tie_word_embeddings": True}, 2, "cuda", "untied"),
    ],
)
def test_unsupported_layouts_are_refused_by_name(megatron, overrides, world, device, match):
    cfg = TrainConfig(backend="megatron", megatron=MegatronConfig(**megatron))
    with pytest.raises(ValueError, match=match):
        check_supported(cfg, _hf_config(**overrides), world, device)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"train\.megatron\.tensor_parallel_size"):
        MegatronConfig(tensor_parallel_size=0)
    with pytest.raises(ValueError, match=r"train\.megatron\.timeout_s"):
        MegatronConfig(timeout_s=0)


def test_registry_imports_megatron_core_only_when_asked(tp2_report):
    # Checked first thing in the worker process, before anything imported megatron-core.
    assert tp2_report["lazy_registry"]


def test_grpo_under_torchrun_with_tensor_parallel_2(tmp_path):
    # The trainer's own entry point on 2 ranks: rank 0 drives rollouts and its TP shard,
    # rank 1 follows (trainers/backends/ranks.py); the pushed weights move each step.
    from areal_env.metrics import read_metrics
    from areal_env.testing import PARITY_ENV_ID, SMALL_RUN_OVERRIDES, TINY_MODEL_OVERRIDES

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={distributed.free_port()}",
        str(WORKER.with_name("fsdp_worker_script.py")),  # its "grpo" mode: grpo.main
        "grpo",
        *TINY_MODEL_OVERRIDES,
        *SMALL_RUN_OVERRIDES,
        f"env.id={PARITY_ENV_ID}",  # mixed groups from step 1: every step has a gradient
        "warm_start.enabled=false",
        "train.backend=megatron",
        "train.megatron.tensor_parallel_size=2",
        "train.steps=2",
        "torch_threads=1",
        f"output_dir={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stderr[-6000:]}"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["train/version"] for r in rows] == [1.0, 2.0]
    from safetensors.torch import load_file

    initial = load_file(str(next((out / "tiny_model").glob("*.safetensors"))))
    final = load_file(str(next((out / "final_model").glob("*.safetensors"))))
    assert initial.keys() == final.keys()
    assert any(not torch.equal(initial[k], final[k]) for k in initial), "weights unchanged"
