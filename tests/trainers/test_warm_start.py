"""The warm start's accuracy check: failed episodes count 0 and never end the run.

Mutation tried: ``sampled_accuracy`` back to a bare ``gather`` of the episodes ->
the failing-episode test raises (as the Agents SDK example once did when the tiny
model garbled a tool name).
"""

from __future__ import annotations

import asyncio

import pytest

from areal_env.trainers.warm_start import EVAL_SEED_OFFSET, sampled_accuracy
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
