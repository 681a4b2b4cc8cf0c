"""The admission rule, walked version by version under a fake trainer."""

from __future__ import annotations

import itertools

import pytest

from areal_env.rollout.staleness import (
    AdmissionCounters,
    admission_capacity,
    staleness_limit,
    trajectory_staleness,
)
from areal_env.types import Sample, Trajectory


class FakeTrainer:
    """The version source: consumes one batch per step, then bumps its version."""

    def __init__(self) -> None:
        self.version = 0

    def step(self) -> None:
        self.version += 1


def admit_one_by_one(counters: AdmissionCounters, version: int) -> int:
    admitted = 0
    while counters.can_admit(1, version):
        counters.on_start(1)
        admitted += 1
    return admitted


@pytest.mark.parametrize("eta", [0, 1, 2])
def test_walk_versions_admits_exactly_one_batch_per_version(eta: int) -> None:
    batch = 4
    trainer = FakeTrainer()
    counters = AdmissionCounters(batch_size=batch, max_head_offpolicyness=eta)
    admitted_per_version = []
    for _ in range(5):
        admitted_per_version.append(admit_one_by_one(counters, trainer.version))
        counters.on_accept(counters.running)  # every running episode finishes and is kept
        trainer.step()
    # Version 0 fills eta + 1 batches ahead; after that, each new version frees one batch.
    assert admitted_per_version == [(eta + 1) * batch] + [batch] * 4


@pytest.mark.parametrize("eta", [0, 1, 2])
def test_running_episodes_hold_their_slots(eta: int) -> None:
    counters = AdmissionCounters(batch_size=3, max_head_offpolicyness=eta)
    assert admit_one_by_one(counters, version=0) == (eta + 1) * 3
    assert admit_one_by_one(counters, version=0) == 0  # nothing finished, nothing more
    counters.on_reject(2)  # dropped episodes give their slots back
    assert admit_one_by_one(counters, version=0) == 2
    assert admit_one_by_one(counters, version=1) == 3


@pytest.mark.parametrize(("eta", "batch"), list(itertools.product([0, 1, 2], [1, 2, 3, 4])))
def test_no_trained_episode_is_more_than_eta_versions_stale(eta: int, batch: int) -> None:
    trainer = FakeTrainer()
    counters = AdmissionCounters(batch_size=batch, max_head_offpolicyness=eta)
    admitted_at: list[int] = []  # admission version of each episode, in order
    staleness = []
    for _ in range(6):
        n = admit_one_by_one(counters, trainer.version)
        admitted_at += [trainer.version] * n
        counters.on_accept(n)
        # The trainer consumes the oldest batch at its current version.
        consumed, admitted_at = admitted_at[:batch], admitted_at[batch:]
        staleness += [trainer.version - v for v in consumed]
        trainer.step()
    assert max(staleness) == eta  # the bound holds and is reached
    assert min(staleness) >= 0


@pytest.mark.parametrize(
    ("accepted", "running", "k", "version", "eta"),
    list(itertools.product([0, 3, 8], [0, 2, 5], [1, 2, 4], [0, 1, 2], [0, 1])),
)
def test_group_fits_iff_each_episode_passes_the_strict_rule(
    accepted: int, running: int, k: int, version: int, eta: int
) -> None:
    batch = 4
    counters = AdmissionCounters(
        batch_size=batch, max_head_offpolicyness=eta, accepted=accepted, running=running
    )
    limit = (eta + version + 1) * batch
    one_by_one = all(accepted + running + i < limit for i in range(k))
    assert counters.can_admit(k, version) == one_by_one


def test_formula_values() -> None:
    assert staleness_limit(version=2, batch_size=8, max_head_offpolicyness=1) == 32
    kwargs = {"version": 0, "batch_size": 4, "max_head_offpolicyness": 0}
    assert admission_capacity(accepted=0, running=3, **kwargs) == 1
    assert admission_capacity(accepted=4, running=3, **kwargs) == 0  # never negative


def test_release_more_than_running_is_a_bug() -> None:
    counters = AdmissionCounters(batch_size=4, max_head_offpolicyness=0, running=1)
    with pytest.raises(AssertionError):
        counters.on_accept(2)


def test_trajectory_staleness_uses_oldest_generated_token() -> None:
    first = Sample(input_ids=[1, 2], loss_mask=[0, 1], logprobs=[0.0] * 2, versions=[-1, 4])
    second = Sample(
        input_ids=[1, 2, 3, 4], loss_mask=[0, 1, 0, 1], logprobs=[0.0] * 4, versions=[-1, 3, -1, 5]
    )
    traj = Trajectory(samples=[first, second])
    assert trajectory_staleness(traj, trainer_version=6) == 3  # oldest over all samples
    prompt_only = Trajectory(
        samples=[Sample(input_ids=[1], loss_mask=[0], logprobs=[0.0], versions=[-1])]
    )
    assert trajectory_staleness(prompt_only, trainer_version=6) == 0
