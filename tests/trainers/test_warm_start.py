"""The warm start's accuracy check: failed episodes count 0 and never end the run.

Mutation tried: ``sampled_accuracy`` back to a bare ``gather`` of the episodes ->
the failing-episode test raises (as the Agents SDK example once did when the tiny
model garbled a tool name).
"""

from __future__ import annotations

import asyncio

import pytest

from areal_env.trainers.warm_start import EVAL_SEED_OFFSET, TargetCheck, sampled_accuracy
from areal_env.types import Trajectory


def test_failed_episodes_count_zero_in_the_accuracy_check():
    seen = []

    async def episode_fn(seed: int, sample: int) -> Trajectory:
        seen.append(seed)
        if seed % 2:  # every other episode fails the way a wrapped agent can
            raise RuntimeError("Tool sear>{ not found in agent searcher")
        return Trajectory(reward=1.0)

    accuracy = asyncio.run(sampled_accuracy(episode_fn, 4))
    assert accuracy == pytest.approx(2 / 4)
    assert sorted(seen) == [EVAL_SEED_OFFSET + i for i in range(4)]


def test_cancellation_still_propagates():
    async def episode_fn(seed: int, sample: int) -> Trajectory:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(sampled_accuracy(episode_fn, 2))


def test_the_stop_check_needs_a_full_window_whose_mean_reaches_the_target():
    check = TargetCheck(0.2, window=3)
    assert [check.add(a) for a in (0.3, 0.25)] == [False, False]  # not a full window yet
    assert check.add(0.04) is False  # mean 0.197: one lucky check does not stop it
    assert check.add(0.33) is True and check.mean == pytest.approx((0.25 + 0.04 + 0.33) / 3)
    assert TargetCheck(0.2, window=1).add(0.2) is True
    with pytest.raises(ValueError, match="accuracy_window must be >= 1"):
        TargetCheck(0.2, window=0)
