"""GRPO must learn: a few dozen steps on a tiny task raise the reward.

This is the test that fails when the trainer is wrong in a way no unit test
sees: a flipped loss sign, gradient ascent, weights that never reach the
engine, advantages that do not reach the loss. ParityEnv pays 1.0 when the
reply's first character has an even code point, which a random model earns
about half the time, so every group is mixed from the first step and the
policy only has to shift probability between characters.
"""

from __future__ import annotations

import pytest

from areal_env.metrics import read_metrics
from areal_env.testing import PARITY_LEARNING_OVERRIDES, assert_reward_rose, register_test_envs
from areal_env.trainers import grpo

STEPS = 40


@pytest.mark.slow
def test_a_few_dozen_grpo_steps_raise_the_reward(tmp_path):
    register_test_envs()
    out = tmp_path / "run"
    argv = [
        *PARITY_LEARNING_OVERRIDES,
        "rollout.batch_size=4",
        "rollout.n_samples=8",
        f"train.steps={STEPS}",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    assert_reward_rose(read_metrics(out / "metrics.jsonl"), by=0.25)
