"""GRPO must learn: a few dozen steps on a tiny task raise the reward.

This is the test that fails when the trainer is wrong in a way no unit test
sees: a flipped loss sign, gradient ascent, weights that never reach the
engine, advantages that do not reach the loss. ParityEnv pays 1.0 when the
reply's first character has an even code point, which a random model earns
about half the time, so every group is mixed from the first step and the
policy only has to shift probability between characters.
"""

from __future__ import annotations

import statistics

import pytest

from areal_env.metrics import read_metrics
from areal_env.testing import PARITY_LEARNING_OVERRIDES, register_test_envs
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
    rewards = [r["rollout/reward_mean"] for r in read_metrics(out / "metrics.jsonl")]
    first, last = statistics.fmean(rewards[:5]), statistics.fmean(rewards[-5:])
    assert last > first + 0.25, f"reward did not rise: first 5 steps {first:.2f}, last 5 {last:.2f}"
