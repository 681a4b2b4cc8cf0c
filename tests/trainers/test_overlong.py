"""DAPO's soft overlong punishment against hand-computed values, and in a training run."""

from __future__ import annotations

import pytest

from areal_env.metrics import read_metrics
from areal_env.testing import (
    PARITY_ENV_ID,
    SMALL_RUN_OVERRIDES,
    TINY_MODEL_OVERRIDES,
    make_sample,
    register_test_envs,
)
from areal_env.trainers import grpo
from areal_env.trainers.algorithms.overlong import (
    apply_overlong_penalty,
    episode_length,
    overlong_penalty,
)
from areal_env.trainers.algorithms.presets import get_preset, resolve_preset
from areal_env.types import EpisodeBatch, Trajectory


@pytest.mark.parametrize(
    "length, want",
    [
        (0, 0.0),
        (12, 0.0),  # L_max - L_cache = 12: no penalty yet
        (13, -0.25),  # (12 - 13) / 4
        (14, -0.5),
        (16, -1.0),  # at the budget
        (17, -1.0),  # beyond it (not reachable through our engines, still defined)
    ],
)
def test_penalty_follows_dapo_eq_13(length, want):
    assert overlong_penalty(length, max_len=16, buffer=4) == pytest.approx(want)


def test_factor_scales_and_zero_buffer_turns_it_off():
    assert overlong_penalty(14, max_len=16, buffer=4, factor=0.5) == pytest.approx(-0.25)
    assert overlong_penalty(16, max_len=16, buffer=0) == 0.0


def _episode(n, reward=1.0):
    return Trajectory(samples=[make_sample([1, 2], list(range(n)))], reward=reward)


def test_an_episode_is_judged_by_its_longest_completion():
    one = Trajectory(samples=[make_sample([1], [5] * 9), make_sample([1], [5] * 3)])
    assert episode_length(one) == 9


def test_rewards_are_shaped_in_place_and_the_raw_reward_is_kept():
    short, long_, cut = _episode(3), _episode(9, reward=0.0), _episode(10)
    batch = EpisodeBatch(groups=[[short, long_, cut]])
    metrics = apply_overlong_penalty(batch, max_len=10, buffer_frac=0.2, factor=1.0)
    # buffer = floor(0.2 * 10) = 2: 3 -> 0; 9 -> (8 - 9) / 2 = -0.5; 10 -> -1
    assert [t.reward for t in batch.groups[0]] == pytest.approx([1.0, -0.5, 0.0])
    assert "reward_before_overlong" not in short.info
    assert long_.info["reward_before_overlong"] == 0.0
    assert cut.info["reward_before_overlong"] == 1.0
    assert metrics["rollout/overlong_penalty_mean"] == pytest.approx(-0.5)
    assert metrics["rollout/overlong_penalized"] == 2.0


def test_dapo_preset_carries_the_penalty_and_config_checks_it():
    assert get_preset("dapo").overlong_buffer_frac == 0.2
    assert get_preset("grpo").overlong_buffer_frac == 0.0
    assert resolve_preset("dapo", overlong_buffer_frac=0.0).overlong_buffer_frac == 0.0
    with pytest.raises(ValueError, match="overlong_buffer_frac"):
        resolve_preset("dapo", overlong_buffer_frac=1.0)
    with pytest.raises(ValueError, match="overlong_factor"):
        resolve_preset("dapo", overlong_factor=-1.0)


def test_a_dapo_run_logs_the_penalty(tmp_path):
    register_test_envs()
    out = tmp_path / "run"
    argv = [
        *TINY_MODEL_OVERRIDES,
        *SMALL_RUN_OVERRIDES,
        f"env.id={PARITY_ENV_ID}",
        "warm_start.enabled=false",
        "algorithm.preset=dapo",
        "algorithm.overlong_buffer_frac=0.5",
        "train.steps=2",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert all("rollout/overlong_penalty_mean" in r for r in rows)
    # the untrained model often runs to the 6-token budget: buffer 3, so those pay -1
    assert any(r["rollout/overlong_penalized"] > 0 for r in rows)
    assert all(
        -1 <= r["rollout/overlong_penalty_mean"] < 0
        for r in rows
        if r["rollout/overlong_penalized"]
    )
