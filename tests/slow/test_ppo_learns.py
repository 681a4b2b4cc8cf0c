"""PPO with a critic must learn: a few dozen steps on ParityEnv raise the reward.

The counterpart of test_grpo_learns.py for trainers/ppo.py, without groups
(``rollout.n_samples=1``): the only baseline is the critic, so a GAE sign error,
advantages that never reach the policy loss, or a critic that drags the
advantages the wrong way all keep the reward flat. ParityEnv pays 1.0 when the
reply's first character has an even code point (about half the time at random).
About 15 s on 2 CPU cores.
"""

from __future__ import annotations

import pytest

from areal_env.metrics import read_metrics
from areal_env.testing import PARITY_LEARNING_OVERRIDES, assert_reward_rose, register_test_envs
from areal_env.trainers import ppo

STEPS = 40


@pytest.mark.slow
def test_a_few_dozen_ppo_steps_raise_the_reward(tmp_path):
    register_test_envs()
    out = tmp_path / "run"
    argv = [
        *PARITY_LEARNING_OVERRIDES,
        "rollout.batch_size=32",
        "rollout.n_samples=1",
        "rollout.max_concurrent_rollouts=16",
        f"train.steps={STEPS}",
        f"output_dir={out}",
    ]
    assert ppo.main(argv) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert_reward_rose(rows, by=0.25)
    assert all("critic/loss" in r for r in rows), "the critic did not train every step"
