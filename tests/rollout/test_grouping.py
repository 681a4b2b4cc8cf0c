"""Batch statistics: what the metrics of a multi-turn run are made of."""

from __future__ import annotations

import pytest

from areal_env.rollout.grouping import batch_stats
from areal_env.testing import make_sample
from areal_env.types import Trajectory


def episode(reward: float, **metrics: float) -> Trajectory:
    return Trajectory(samples=[make_sample([1, 2], [3], version=0)], reward=reward, metrics=metrics)


def test_multi_turn_metrics_are_means_plus_named_totals():
    groups = [
        [
            episode(1.0, num_turns=2, tool_calls=1, tool_errors=0, template_splits=0),
            episode(0.0, num_turns=3, tool_calls=2, tool_errors=2, template_splits=1),
        ],
        [
            episode(0.0, num_turns=1, tool_calls=0, tool_errors=1, template_splits=2),
            episode(0.0, num_turns=4),  # an agent that reports fewer keys counts 0 for them
        ],
    ]
    stats = batch_stats(groups, version=0)
    assert stats["rollout/num_turns_mean"] == pytest.approx(10 / 4)
    assert stats["rollout/tool_calls_mean"] == pytest.approx(3 / 4)
    assert stats["rollout/tool_errors_mean"] == pytest.approx(3 / 4)
    assert stats["rollout/tool_errors"] == 3.0
    assert stats["rollout/template_split_rate"] == pytest.approx(2 / 4)
    assert stats["rollout/reward_mean"] == pytest.approx(1 / 4)
    assert stats["rollout/all_equal_groups"] == pytest.approx(1 / 2)


def test_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match="at least one trajectory"):
        batch_stats([[]], version=0)
