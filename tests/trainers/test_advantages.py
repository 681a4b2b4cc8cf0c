"""Advantage estimators against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from areal_env.trainers.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    BATCH_ESTIMATORS,
    batch_normalized,
    compute_advantages,
    group_mean,
    group_mean_batch_std,
    group_mean_std,
    rloo,
)
from areal_env.types import EpisodeBatch, Sample, Trajectory

GROUP_ESTIMATORS = sorted(set(ADVANTAGE_ESTIMATORS) - BATCH_ESTIMATORS)
SQRT2 = math.sqrt(2.0)


def make_batch(*groups: list[float]) -> EpisodeBatch:
    return EpisodeBatch(groups=[[Trajectory(reward=r) for r in g] for g in groups])


def test_group_mean_std_balanced_binary_group():
    # mean 0.5, population std 0.5 -> +-0.5 / (0.5 + 1e-4)
    a = 0.5 / 0.5001
    assert group_mean_std([1.0, 0.0, 0.0, 1.0]).tolist() == pytest.approx([a, -a, -a, a])


def test_group_mean_std_uses_population_std():
    # mean 1/3, var = (4/9 + 1/9 + 1/9) / 3 = 2/9, std = sqrt(2)/3
    # (2/3) / (sqrt(2)/3) = sqrt(2); (-1/3) / (sqrt(2)/3) = -1/sqrt(2)
    out = group_mean_std([1.0, 0.0, 0.0], eps=0.0)
    assert out.tolist() == pytest.approx([SQRT2, -1 / SQRT2, -1 / SQRT2])


def test_group_mean_has_no_std():
    assert group_mean([1.0, 0.0, 0.0, 1.0]).tolist() == [0.5, -0.5, -0.5, 0.5]
    assert group_mean([3.0, 1.0]).tolist() == [1.0, -1.0]


def test_rloo_leave_one_out():
    # 1 - mean(0, 0, 1) = 2/3 ; 0 - mean(1, 0, 1) = -2/3
    assert rloo([1.0, 0.0, 0.0, 1.0]).tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # 1 - mean(0, 0) = 1 ; 0 - mean(1, 0) = -0.5
    assert rloo([1.0, 0.0, 0.0]).tolist() == pytest.approx([1.0, -0.5, -0.5])


def test_batch_normalized_over_whole_vector():
    # mean 2/3, population std sqrt(2)/3: 1 -> 1/sqrt(2), 0 -> -sqrt(2)
    out = batch_normalized([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], eps=0.0)
    hi, lo = 1 / SQRT2, -SQRT2
    assert out.tolist() == pytest.approx([hi, lo, hi, hi, lo, hi])


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_group_of_one_and_all_equal_group_get_zero(name):
    fn = ADVANTAGE_ESTIMATORS[name]
    assert fn([0.7]).tolist() == [0.0]
    assert fn([1.0, 1.0, 1.0]).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_accepts_tensor_and_int_rewards(name):
    fn = ADVANTAGE_ESTIMATORS[name]
    from_list = fn([1.0, 0.0, 0.0, 1.0])
    assert torch.allclose(fn(torch.tensor([1, 0, 0, 1])), from_list)
    assert from_list.dtype == torch.float32 and from_list.shape == (4,)


def test_rejects_non_vector_rewards():
    with pytest.raises(ValueError, match="1-D"):
        group_mean(torch.zeros(2, 2))


def test_compute_advantages_per_group_with_uneven_sizes():
    batch = make_batch([1.0, 0.0, 0.0], [0.5], [2.0, 0.0])
    out = compute_advantages(batch, "group_mean")
    assert out is batch
    expected = [[2 / 3, -1 / 3, -1 / 3], [0.0], [1.0, -1.0]]
    assert len(batch.advantages) == len(expected)
    for got, want in zip(batch.advantages, expected, strict=True):
        assert got == pytest.approx(want)


def test_compute_advantages_passes_kwargs():
    batch = compute_advantages(make_batch([1.0, 0.0, 0.0]), "group_mean_std", eps=0.0)
    assert batch.advantages == [pytest.approx([SQRT2, -1 / SQRT2, -1 / SQRT2])]


def test_compute_advantages_batch_estimator_is_global_and_reshaped():
    # Same flat rewards as test_batch_normalized_over_whole_vector, split 2 + 4.
    batch = compute_advantages(
        make_batch([1.0, 0.0], [1.0, 1.0, 0.0, 1.0]), "batch_normalized", eps=0.0
    )
    hi, lo = 1 / SQRT2, -SQRT2
    assert [len(g) for g in batch.advantages] == [2, 4]
    assert batch.advantages[0] == pytest.approx([hi, lo])
    assert batch.advantages[1] == pytest.approx([hi, hi, lo, hi])


def test_compute_advantages_feeds_padded_batch():
    batch = make_batch([1.0, 0.0], [0.0, 1.0])
    for t in batch.trajectories:
        t.samples.append(
            Sample(input_ids=[1, 2], loss_mask=[0, 1], logprobs=[0.0, -1.0], versions=[-1, 0])
        )
    compute_advantages(batch, "group_mean")
    assert batch.padded(pad_id=0).advantages[:, 1].tolist() == [0.5, -0.5, -0.5, 0.5]


def test_compute_advantages_empty_batch_and_group():
    assert compute_advantages(make_batch(), "batch_normalized").advantages == []
    assert compute_advantages(make_batch([]), "rloo").advantages == [[]]


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(ValueError, match="group_mean_std") as err:
        compute_advantages(make_batch([1.0]), "gae")
    assert "'gae'" in str(err.value) and "rloo" in str(err.value)


def test_group_mean_batch_std_litePPO_by_hand():
    """Mutations caught: the group std instead of the batch std (group [1, 0] would give
    +-1), the batch mean instead of the group mean (row 2 would be 1 - 4/6 = 1/3)."""
    rewards, sizes = [1.0, 0.0, 1.0, 1.0, 1.0, 0.0], [2, 4]
    # Group means 0.5 and 0.75; batch mean 4/6, population var 4/6 - 16/36 = 2/9.
    std = math.sqrt(2 / 9)
    want = [0.5, -0.5, 0.25, 0.25, 0.25, -0.75]
    out = group_mean_batch_std(rewards, sizes, eps=0.0)
    assert out.tolist() == pytest.approx([w / std for w in want])
    with pytest.raises(ValueError, match="sum"):
        group_mean_batch_std(rewards, [2, 3])


def test_compute_advantages_passes_group_sizes_to_litePPO():
    batch = compute_advantages(
        make_batch([1.0, 0.0], [1.0, 1.0, 1.0, 0.0]), "group_mean_batch_std", eps=0.0
    )
    std = math.sqrt(2 / 9)
    assert batch.advantages[0] == pytest.approx([0.5 / std, -0.5 / std])
    assert batch.advantages[1] == pytest.approx([0.25 / std] * 3 + [-0.75 / std])
