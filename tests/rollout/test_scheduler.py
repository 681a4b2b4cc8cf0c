"""RolloutScheduler under a fake, gated episode_fn: state assertions only, no timing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from areal_env.errors import RewardError
from areal_env.rollout.grouping import task_seed_for
from areal_env.rollout.scheduler import RolloutConfig, RolloutScheduler
from areal_env.types import Sample, Trajectory


class GatedEpisodes:
    """An episode_fn whose episodes wait on a gate; records starts and concurrency.

    ``fail(seed, sample_index, attempt)`` decides whether an attempt raises;
    ``reward(seed, sample_index)`` sets the reward. Generated tokens carry
    ``policy_version``, which the test moves like an inference engine would.
    """

    def __init__(
        self,
        *,
        open_gate: bool = True,
        fail: Callable[[int, int, int], bool] = lambda s, i, a: False,
        reward: Callable[[int, int], float] = lambda s, i: float(i),
    ) -> None:
        self.gate = asyncio.Event()
        if open_gate:
            self.gate.set()
        self.fail = fail
        self.reward = reward
        self.policy_version = 0
        self.started: list[tuple[int, int]] = []
        self.attempts: dict[tuple[int, int], int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0

    async def __call__(self, task_seed: int, sample_index: int) -> Trajectory:
        key = (task_seed, sample_index)
        self.attempts[key] = attempt = self.attempts.get(key, 0) + 1
        self.started.append(key)
        version = self.policy_version
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        if self.fail(task_seed, sample_index, attempt):
            raise RewardError(f"seed={task_seed} sample={sample_index} attempt={attempt}")
        sample = Sample(
            input_ids=[1, 2, 3],
            loss_mask=[0, 1, 1],
            logprobs=[0.0, -0.5, -0.5],
            versions=[-1, version, version],
        )
        return Trajectory(
            samples=[sample],
            reward=self.reward(task_seed, sample_index),
            task_id=str(task_seed),
            info={"sample_index": sample_index},
        )


async def settle(n: int = 50) -> None:
    """Let every runnable task run; enough loop turns for admission to reach a fixed point."""
    for _ in range(n):
        await asyncio.sleep(0)


def config(**overrides: object) -> RolloutConfig:
    values = {"batch_size": 2, "n_samples": 3, "max_head_offpolicyness": 1, "seed": 7}
    return RolloutConfig(**(values | overrides))


def group_index_of(seed: int) -> dict[int, int]:
    return {task_seed_for(seed, g): g for g in range(200)}


def groups_in(batch, seed: int = 7) -> list[int]:
    index = group_index_of(seed)
    return [index[int(group[0].task_id)] for group in batch.groups]


def started_groups(fake: GatedEpisodes, seed: int = 7) -> list[int]:
    index = group_index_of(seed)
    return [index[s] for s, i in fake.started if i == 0]


async def test_batches_hold_whole_groups_with_stats() -> None:
    fake = GatedEpisodes()
    scheduler = RolloutScheduler(config(batch_size=2, n_samples=3), fake)
    async with scheduler.running():
        first = await scheduler.next_batch()
        scheduler.set_version(1)
        second = await scheduler.next_batch()
    for batch in (first, second):
        assert len(batch.groups) == 2 and len(batch) == 6
        for group in batch.groups:
            assert len({t.task_id for t in group}) == 1
            assert [t.info["sample_index"] for t in group] == [0, 1, 2]
    assert groups_in(first) + groups_in(second) == [0, 1, 2, 3]
    stats = first.stats
    assert stats["rollout/reward_mean"] == 1.0  # rewards 0, 1, 2 per group
    assert stats["rollout/reward_std"] == pytest.approx((2 / 3) ** 0.5)
    assert stats["rollout/gen_tokens"] == 12.0
    assert stats["rollout/seq_len_mean"] == 3.0
    assert stats["rollout/all_equal_groups"] == 0.0
    assert (stats["rollout/dropped_groups"], stats["rollout/failed_episodes"]) == (0.0, 0.0)
    assert stats["rollout/filtered_groups"] == 0.0
    assert "rollout/running" in stats
    # Batch 1 was generated at policy version 0 (eta = 1) and trained at version 1.
    assert (first.stats["rollout/staleness_max"], second.stats["rollout/staleness_mean"]) == (
        0.0,
        1.0,
    )


@pytest.mark.parametrize("eta", [0, 1, 2])
async def test_admission_follows_the_staleness_bound(eta: int) -> None:
    fake = GatedEpisodes()
    cfg = config(batch_size=2, n_samples=2, max_head_offpolicyness=eta)
    per_batch = cfg.batch_size * cfg.n_samples
    scheduler = RolloutScheduler(cfg, fake)
    async with scheduler.running():
        await settle()
        assert len(fake.started) == (eta + 1) * per_batch
        batch = await scheduler.next_batch()
        await settle()
        # Consuming a batch does not free slots: only a new version does.
        assert len(fake.started) == (eta + 1) * per_batch
        assert groups_in(batch) == [0, 1]
        scheduler.set_version(1)
        await settle()
        assert len(fake.started) == (eta + 2) * per_batch


async def test_eta0_is_synchronous() -> None:
    fake = GatedEpisodes(open_gate=False)
    scheduler = RolloutScheduler(config(max_head_offpolicyness=0), fake)
    try:
        async with scheduler.running():
            await settle()
            assert started_groups(fake) == [0, 1]
            fake.gate.set()
            await scheduler.next_batch()
            await settle()
            assert started_groups(fake) == [0, 1]  # no episode of batch 1 yet
            scheduler.set_version(1)
            await settle()
            assert started_groups(fake) == [0, 1, 2, 3]
    finally:
        fake.gate.set()


async def test_concurrency_never_exceeds_max_concurrent_rollouts() -> None:
    fake = GatedEpisodes(open_gate=False)
    cfg = config(batch_size=4, n_samples=2, max_concurrent_rollouts=5, max_head_offpolicyness=2)
    scheduler = RolloutScheduler(cfg, fake)
    try:
        async with scheduler.running():
            await settle()
            assert fake.in_flight == 4  # a third group of 2 would not fit in 5
            fake.gate.set()
            for version in range(1, 4):
                await scheduler.next_batch()
                scheduler.set_version(version)
    finally:
        fake.gate.set()
    assert fake.max_in_flight == 4


async def test_failed_member_drops_its_group_and_is_counted() -> None:
    seed0 = task_seed_for(7, 0)
    fake = GatedEpisodes(fail=lambda s, i, a: s == seed0 and i == 1)
    scheduler = RolloutScheduler(config(max_retries=1, max_head_offpolicyness=0), fake)
    async with scheduler.running():
        first = await scheduler.next_batch()
        scheduler.set_version(1)
        second = await scheduler.next_batch()
    assert 0 not in groups_in(first) + groups_in(second)
    assert len(first.groups) == 2  # the dropped group's slots were refilled
    assert first.stats["rollout/dropped_groups"] == 1.0
    assert first.stats["rollout/failed_episodes"] == 1.0
    assert first.stats["rollout/errors/RewardError"] == 2.0  # both attempts
    assert second.stats["rollout/dropped_groups"] == 0.0  # counts are per batch
    assert fake.attempts[(seed0, 1)] == 2
    assert scheduler.state_dict()["totals"]["dropped_groups"] == 1


async def test_live_stats_count_running_finished_failed_and_buffered_episodes() -> None:
    seed0 = task_seed_for(7, 0)
    fake = GatedEpisodes(open_gate=False, fail=lambda s, i, a: s == seed0 and i == 1)
    scheduler = RolloutScheduler(config(max_retries=0, max_head_offpolicyness=0), fake)
    async with scheduler.running():
        await settle()
        stats = scheduler.live_stats()
        assert stats.running_episodes == 6 == fake.in_flight  # two groups of three admitted
        assert (stats.finished_episodes, stats.failed_episodes, stats.buffered_groups) == (0, 0, 0)
        fake.gate.set()
        await settle()
        stats = scheduler.live_stats()
        # group 0 failed (its member 1) and was replaced by group 2, which ran too
        assert stats.failed_episodes == 1 and stats.dropped_groups == 1
        assert stats.accepted_groups == 2 == stats.buffered_groups
        assert stats.finished_episodes == 2 + 3 + 3  # group 0's two others, groups 1 and 2
        assert stats.running_episodes == 0
        await scheduler.next_batch()
        assert scheduler.live_stats().buffered_groups == 0


async def test_transient_failure_is_retried_and_the_group_kept() -> None:
    seed0 = task_seed_for(7, 0)
    fake = GatedEpisodes(fail=lambda s, i, a: s == seed0 and i == 0 and a == 1)
    scheduler = RolloutScheduler(config(max_retries=1), fake)
    async with scheduler.running():
        batch = await scheduler.next_batch()
    assert groups_in(batch) == [0, 1]
    assert batch.stats["rollout/dropped_groups"] == 0.0
    assert batch.stats["rollout/failed_episodes"] == 0.0
    assert batch.stats["rollout/errors/RewardError"] == 1.0


async def test_timed_out_member_drops_its_group() -> None:
    seed0 = task_seed_for(7, 0)
    never = asyncio.Event()
    fake = GatedEpisodes()

    async def episode_fn(task_seed: int, sample_index: int) -> Trajectory:
        if task_seed == seed0 and sample_index == 2:
            await never.wait()
        return await fake(task_seed, sample_index)

    # eta = 0: only groups 0 and 1 run, so the batch waits for group 0 to time out.
    cfg = config(max_retries=0, episode_timeout_s=0.01, max_head_offpolicyness=0)
    scheduler = RolloutScheduler(cfg, episode_fn)
    try:
        async with scheduler.running():
            batch = await scheduler.next_batch()
    finally:
        never.set()
    assert groups_in(batch) == [1, 2]
    assert batch.stats["rollout/errors/timeout"] == 1.0
    assert batch.stats["rollout/dropped_groups"] == 1.0


async def test_filter_all_equal_drops_groups_without_counting_them_accepted() -> None:
    def reward(seed: int, i: int) -> float:
        return 1.0 if group_index_of(7)[seed] % 2 == 0 else float(i)

    fake = GatedEpisodes(reward=reward)
    cfg = config(filter_all_equal=True, max_head_offpolicyness=0)
    scheduler = RolloutScheduler(cfg, fake)
    async with scheduler.running():
        batch = await scheduler.next_batch()  # eta = 0: filtered slots must be refilled
    assert groups_in(batch) == [1, 3]
    assert batch.stats["rollout/filtered_groups"] == 2.0
    assert batch.stats["rollout/all_equal_groups"] == 0.0


async def test_producer_crash_surfaces_from_a_waiting_next_batch() -> None:
    fake = GatedEpisodes(open_gate=False)
    cfg = config(batch_size=2, n_samples=3, max_concurrent_rollouts=3)
    scheduler = RolloutScheduler(cfg, fake)
    take = scheduler._take_group_index
    calls: list[int] = []

    def crash_on_second_group() -> int:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("producer bug")
        return take()

    scheduler._take_group_index = crash_on_second_group
    try:
        async with scheduler.running():
            waiter = asyncio.ensure_future(scheduler.next_batch())
            await settle()
            assert not waiter.done()
            fake.gate.set()  # group 0 ends, the producer admits again and crashes
            with pytest.raises(RuntimeError, match="producer bug"):
                await waiter
    finally:
        fake.gate.set()


async def test_group_task_crash_surfaces_from_next_batch(monkeypatch) -> None:
    import areal_env.rollout.scheduler as scheduler_module

    def broken_filter(group: object, filters: object) -> str:
        raise ZeroDivisionError("filter bug")

    monkeypatch.setattr(scheduler_module, "first_matching_filter", broken_filter)
    scheduler = RolloutScheduler(config(), GatedEpisodes())
    async with scheduler.running():
        with pytest.raises(ZeroDivisionError, match="filter bug"):
            await scheduler.next_batch()


async def test_unconsumed_crash_is_raised_on_exit() -> None:
    scheduler = RolloutScheduler(config(), GatedEpisodes())

    def boom() -> int:
        raise RuntimeError("producer bug")

    scheduler._take_group_index = boom
    with pytest.raises(RuntimeError, match="producer bug"):
        async with scheduler.running():
            await settle()


async def test_resume_regenerates_unconsumed_groups_with_the_same_seeds() -> None:
    cfg = config(batch_size=2, n_samples=2, max_head_offpolicyness=1)
    first_run = GatedEpisodes()
    scheduler = RolloutScheduler(cfg, first_run)
    async with scheduler.running():
        consumed = groups_in(await scheduler.next_batch())
        await settle()
        state = scheduler.state_dict()
    assert consumed == [0, 1]
    assert state == {
        "data_position": 4,
        "pending_groups": [2, 3],
        "accepted_episodes": 4,
        "totals": {
            "accepted_groups": 4,
            "dropped_groups": 0,
            "filtered_groups": 0,
            "stale_groups": 0,
            "group_retries": 0,
            "failed_episodes": 0,
            "finished_episodes": 8,
        },
    }

    second_run = GatedEpisodes()
    second_run.policy_version = 1  # the engine serves the resumed weights
    resumed = RolloutScheduler(cfg, second_run, version=1)
    resumed.load_state_dict(state)
    async with resumed.running():
        batches = [groups_in(await resumed.next_batch())]
        second_run.policy_version = 2
        resumed.set_version(2)
        batches.append(groups_in(await resumed.next_batch()))
    assert batches == [[2, 3], [4, 5]]
    assert started_groups(second_run)[:4] == [2, 3, 4, 5]
    assert {s for s, _ in second_run.started} >= {task_seed_for(7, g) for g in (2, 3, 4, 5)}


async def test_shutdown_cancels_everything_and_keeps_in_flight_groups_for_resume() -> None:
    fake = GatedEpisodes(open_gate=False)
    scheduler = RolloutScheduler(config(batch_size=2, n_samples=3), fake)
    try:
        async with scheduler.running():
            await settle()
            assert fake.in_flight == 12
            waiter = asyncio.ensure_future(scheduler.next_batch())
            await settle()
            assert not waiter.done()
    finally:
        fake.gate.set()
    with pytest.raises(RuntimeError, match="stopped"):
        await waiter
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert fake.in_flight == 0 and fake.cancelled == 12
    state = scheduler.state_dict()
    assert state["pending_groups"] == [0, 1, 2, 3]
    assert (state["data_position"], state["accepted_episodes"]) == (4, 0)

    # Restarting the same scheduler regenerates the cancelled groups first.
    async with scheduler.running():
        batch = await scheduler.next_batch()
    assert groups_in(batch) == [0, 1]


async def test_misuse_is_reported() -> None:
    scheduler = RolloutScheduler(config(), GatedEpisodes())
    with pytest.raises(RuntimeError, match="running"):
        await scheduler.next_batch()
    scheduler.set_version(2)
    with pytest.raises(ValueError, match="version"):
        scheduler.set_version(1)
    async with scheduler.running():
        with pytest.raises(RuntimeError, match="already"):
            async with scheduler.running():
                await settle(1)
        with pytest.raises(RuntimeError, match="outside"):
            scheduler.load_state_dict(scheduler.state_dict())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_samples": 0}, "rollout.n_samples must be >= 1, got 0"),
        ({"batch_size": 0}, "rollout.batch_size must be >= 1, got 0"),
        ({"max_head_offpolicyness": -1}, "rollout.max_head_offpolicyness must be >= 0"),
        ({"max_retries": -1}, "rollout.max_retries must be >= 0"),
        ({"max_concurrent_rollouts": 2}, "rollout.max_concurrent_rollouts must be >= rollout"),
        ({"episode_timeout_s": 0.0}, "rollout.episode_timeout_s must be > 0"),
        ({"n_samples": 1, "filter_all_equal": True}, "rollout.filter_all_equal"),
    ],
)
def test_config_names_the_bad_key(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        config(**overrides)
