"""Weight pushes: the engine serves exactly the trainer's weights, over either transport."""

from __future__ import annotations

import copy

import pytest
import torch

from areal_env.inference.local import LocalEngine
from areal_env.metrics import read_metrics
from areal_env.trainers import grpo
from areal_env.trainers.algorithms.losses.nll import nll_loss
from areal_env.trainers.backends.base import TrainConfig
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.trainers.weight_sync import make_update, push_weights
from areal_env.types import EpisodeBatch, Sample, Trajectory


def _assert_same_weights(engine_model, policy) -> None:
    served = engine_model.state_dict()
    for name, value in policy.state_dict().items():
        assert torch.equal(served[name], value), f"engine serves stale {name}"


def _stepped_backend(model, tok) -> TorchBackend:
    backend = TorchBackend(copy.deepcopy(model), TrainConfig(lr=1e-2, warmup_steps=0), pad_id=0)
    demo = Sample(
        input_ids=[2, 10, 11, 3],
        loss_mask=[0, 0, 1, 1],
        logprobs=[0.0] * 4,
        versions=[-1, -1, 0, 0],
    )
    backend.train_step(EpisodeBatch(groups=[[Trajectory(samples=[demo])]]), nll_loss, rows=[0])
    return backend


class DiskOnlyEngine(LocalEngine):
    """A local engine that, like a server in another process, loads weights from disk."""

    @property
    def weight_transports(self):
        return ("disk",)


@pytest.mark.parametrize("engine_class", [LocalEngine, DiskOnlyEngine])
async def test_push_makes_the_engine_serve_the_trainers_weights(
    tiny_model_and_tokenizer, tmp_path, engine_class
):
    model, tok = tiny_model_and_tokenizer
    backend = _stepped_backend(model, tok)
    engine = engine_class(copy.deepcopy(model), tok)
    try:
        with pytest.raises(AssertionError):
            _assert_same_weights(engine.model, backend.model)  # the step changed something
        await push_weights(backend, engine, None, version=1, weights_dir=tmp_path)
        _assert_same_weights(engine.model, backend.model)
        assert engine.version == 1
    finally:
        await engine.close()
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == (["v000001"] if engine_class is DiskOnlyEngine else [])


async def test_disk_pushes_keep_the_last_two_versions(tiny_model_and_tokenizer, tmp_path):
    model, tok = tiny_model_and_tokenizer
    backend = _stepped_backend(model, tok)
    engine = DiskOnlyEngine(copy.deepcopy(model), tok)
    try:
        for version in (1, 2, 3):
            await push_weights(backend, engine, None, version=version, weights_dir=tmp_path)
    finally:
        await engine.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000002", "v000003"]


def test_disk_only_engine_needs_a_folder(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match="weights_dir"):
        make_update(
            _stepped_backend(model, tok), DiskOnlyEngine(model, tok), version=1, weights_dir=None
        )


def test_every_grpo_weight_push_leaves_engine_equal_to_trainer(tmp_path, monkeypatch):
    from areal_env.testing import PARITY_ENV_ID, TINY_MODEL_OVERRIDES, register_test_envs

    register_test_envs()
    checks: list[int] = []
    real_push = grpo.push_weights

    async def checked_push(backend, engine, scheduler, *, version, weights_dir=None):
        await real_push(backend, engine, scheduler, version=version, weights_dir=weights_dir)
        _assert_same_weights(engine.model, backend.model)
        checks.append(version)

    monkeypatch.setattr(grpo, "push_weights", checked_push)
    out = tmp_path / "run"
    argv = [
        *TINY_MODEL_OVERRIDES,
        f"env.id={PARITY_ENV_ID}",
        "warm_start.enabled=false",
        "rollout.batch_size=2",
        "rollout.n_samples=4",
        "rollout.max_concurrent_rollouts=16",
        "train.steps=3",
        "train.lr=1e-2",
        "metrics.wandb_mode=disabled",
        "metrics.progress=false",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    assert checks == [0, 1, 2, 3]  # the initial push, then one per step
    assert all(r["train/rows"] > 0 for r in read_metrics(out / "metrics.jsonl"))
