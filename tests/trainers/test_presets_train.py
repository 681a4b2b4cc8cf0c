"""Every ``algorithm.preset`` trains one step through ``trainers/grpo.py`` on the tiny model."""

from __future__ import annotations

import pytest
import torch

from areal_env.metrics import read_metrics
from areal_env.testing import PARITY_ENV_ID, TINY_MODEL_OVERRIDES, register_test_envs
from areal_env.trainers import grpo
from areal_env.trainers.algorithms.presets import PRESETS

ONE_STEP = [
    *TINY_MODEL_OVERRIDES,
    "warm_start.enabled=false",
    f"env.id={PARITY_ENV_ID}",  # mixed rewards: every group has a gradient
    "rollout.batch_size=2",
    "rollout.n_samples=4",
    "rollout.max_concurrent_rollouts=16",
    "train.steps=1",
    "checkpoint.every_steps=0",
    "metrics.wandb_mode=disabled",
    "metrics.progress=false",
]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_one_step_through_the_grpo_trainer(name, tmp_path):
    register_test_envs()
    out = tmp_path / name
    assert grpo.main([*ONE_STEP, f"algorithm.preset={name}", f"output_dir={out}"]) == 0
    (row,) = read_metrics(out / "metrics.jsonl")
    assert row["train/rows"] > 0
    assert all(v == v for v in row.values() if isinstance(v, float)), "NaN metric"
    initial, final = _weights(out / "tiny_model"), _weights(out / "final_model")
    assert any(not torch.equal(initial[k], final[k]) for k in initial), "no weight moved"
