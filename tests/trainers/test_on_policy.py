"""On-policy invariant: synchronous RL's first update sees ratio 1 and zero KL to behaviour.

With ``max_head_offpolicyness=0`` every episode of the first batch is sampled by
the weights the trainer holds, and with one minibatch the loss is computed
before any optimizer step. The trainer's recomputed logprobs must then equal
the engine's recorded ones: through the real chat template, the engine's KV
cache, the shared-prompt training forward, and at the sampling temperature.
Anything that breaks token faithfulness or scoring shows up here.
"""

from __future__ import annotations

import pytest

from areal_env.metrics import read_metrics
from areal_env.testing import PARITY_ENV_ID, TINY_MODEL_OVERRIDES, register_test_envs
from areal_env.trainers import grpo

TINY = [
    *TINY_MODEL_OVERRIDES,
    "metrics.wandb_mode=disabled",
    "metrics.progress=false",
]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_first_synchronous_step_is_exactly_on_policy(tmp_path, temperature):
    register_test_envs()
    out = tmp_path / "run"
    argv = [
        *TINY,
        f"env.id={PARITY_ENV_ID}",
        "warm_start.enabled=false",
        "rollout.max_head_offpolicyness=0",
        "rollout.batch_size=4",
        "rollout.n_samples=4",
        "train.ppo_minibatches=1",
        "train.steps=1",
        f"inference.sampling.temperature={temperature}",
        "inference.sampling.max_new_tokens=4",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    (row,) = read_metrics(out / "metrics.jsonl")
    assert row["train/rows"] > 0, "no mixed group: the invariant was not exercised"
    assert row["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert abs(row["loss/approx_kl_old"]) < 1e-7
    assert row["loss/clip_frac"] == 0.0
