"""Group-safe failures, in-queue staleness, staleness after resume, and the watchdog."""

from __future__ import annotations

import asyncio
import logging

import pytest
from test_scheduler import GatedEpisodes, config, groups_in, settle

from areal_env.inference.chat_client import ChatClient
from areal_env.rollout.activity import phase
from areal_env.rollout.episode import make_episode_fn
from areal_env.rollout.grouping import task_seed_for
from areal_env.rollout.scheduler import RolloutScheduler, RolloutStalled
from areal_env.testing import ParityEnv, ScriptedEngine, char_tokenizer
from areal_env.types import Trajectory

SEED0 = task_seed_for(7, 0)

# ---- group-safe failures ---------------------------------------------------------------


async def test_retry_policy_reruns_the_whole_group_and_keeps_it() -> None:
    # Sample 1 of group 0 fails its first run (no episode retries): the whole group runs again.
    fake = GatedEpisodes(fail=lambda s, i, a: s == SEED0 and i == 1 and a == 1)
    cfg = config(
        max_retries=0, group_failure="retry", max_group_retries=1, max_head_offpolicyness=0
    )
    scheduler = RolloutScheduler(cfg, fake)
    async with scheduler.running():
        batch = await scheduler.next_batch()
    assert groups_in(batch) == [0, 1]
    assert batch.stats["rollout/group_retries"] == 1.0
    assert batch.stats["rollout/dropped_groups"] == 0.0
    assert all(fake.attempts[(SEED0, i)] == 2 for i in range(3))  # every member ran again


async def test_drop_policy_replaces_the_group_by_a_fresh_task() -> None:
    fake = GatedEpisodes(fail=lambda s, i, a: s == SEED0 and i == 1 and a == 1)
    cfg = config(max_retries=0, group_failure="drop", max_head_offpolicyness=0)
    scheduler = RolloutScheduler(cfg, fake)
    async with scheduler.running():
        batch = await scheduler.next_batch()
    assert groups_in(batch) == [1, 2]  # full batch: a fresh task took group 0's place
    assert batch.stats["rollout/dropped_groups"] == 1.0
    assert batch.stats["rollout/dropped_groups/RewardError"] == 1.0
    assert batch.stats["rollout/group_retries"] == 0.0


async def test_retries_exhausted_drop_the_group_counted_by_cause() -> None:
    fake = GatedEpisodes(fail=lambda s, i, a: s == SEED0 and i == 0)
    cfg = config(
        max_retries=0, group_failure="retry", max_group_retries=2, max_head_offpolicyness=0
    )
    scheduler = RolloutScheduler(cfg, fake)
    async with scheduler.running():
        batch = await scheduler.next_batch()
    assert 0 not in groups_in(batch) and len(batch.groups) == 2
    assert batch.stats["rollout/group_retries"] == 2.0
    assert batch.stats["rollout/dropped_groups/RewardError"] == 1.0
    assert fake.attempts[(SEED0, 0)] == 3


async def test_every_episode_failing_stops_the_run_with_the_cause() -> None:
    fake = GatedEpisodes(fail=lambda s, i, a: True)
    scheduler = RolloutScheduler(config(max_retries=0, max_failed_groups_in_a_row=5), fake)
    with pytest.raises(RuntimeError, match="5 groups in a row failed.*RewardError"):
        async with scheduler.running():
            await scheduler.next_batch()


async def test_hanging_and_timed_out_members_are_dropped_by_timeout() -> None:
    never = asyncio.Event()
    fake = GatedEpisodes()

    async def episode_fn(task_seed: int, sample_index: int) -> Trajectory:
        if task_seed == SEED0:
            await never.wait()  # hangs forever
        return await fake(task_seed, sample_index)

    cfg = config(max_retries=1, episode_timeout_s=0.02, max_head_offpolicyness=0)
    scheduler = RolloutScheduler(cfg, episode_fn)
    async with scheduler.running():
        batch = await scheduler.next_batch()
    assert groups_in(batch) == [1, 2]
    assert batch.stats["rollout/dropped_groups/timeout"] == 1.0


# ---- staleness in the queue and after resume --------------------------------------------


async def test_groups_that_grow_stale_in_the_buffer_are_dropped_and_refilled() -> None:
    # Group 0 is slow: it samples at version 0 and finishes only after the trainer reached
    # version 2. With eta = 1 it must not be trained on; fresh groups fill the batch.
    fake = GatedEpisodes()
    slow = asyncio.Event()

    async def episode_fn(task_seed: int, sample_index: int) -> Trajectory:
        version = fake.policy_version
        if task_seed == SEED0:
            await slow.wait()
        trajectory = await fake(task_seed, sample_index)
        for sample in trajectory.samples:
            sample.versions = [v if v < 0 else version for v in sample.versions]
        return trajectory

    cfg = config(batch_size=2, n_samples=2, max_head_offpolicyness=1)
    scheduler = RolloutScheduler(cfg, episode_fn)
    batches = []
    async with scheduler.running():
        for step in range(4):
            batches.append(await scheduler.next_batch())
            fake.policy_version = step + 1
            scheduler.set_version(step + 1)
            if step == 1:
                slow.set()  # group 0 lands in the buffer at version 2: two versions stale
                await settle()
    assert all(0 not in groups_in(b) for b in batches)
    assert sum(b.stats["rollout/stale_groups"] for b in batches) == 1.0
    assert all(b.stats["rollout/staleness_max"] <= 1.0 for b in batches)
    assert all(len(b.groups) == 2 for b in batches)
    assert scheduler.state_dict()["totals"]["stale_groups"] == 1


async def test_staleness_bound_holds_after_resume() -> None:
    # AReaL #1388: after a resume the admission counters must match the resumed version,
    # or the producer admits far more than eta batches ahead and staleness climbs.
    cfg = config(batch_size=2, n_samples=2, max_head_offpolicyness=1)
    first = GatedEpisodes()
    scheduler = RolloutScheduler(cfg, first)
    async with scheduler.running():
        for step in range(3):
            await scheduler.next_batch()
            first.policy_version = step + 1
            scheduler.set_version(step + 1)
        await settle()
        state = scheduler.state_dict()

    resumed_fake = GatedEpisodes(open_gate=False)  # nothing finishes: only admission runs
    resumed_fake.policy_version = 3
    resumed = RolloutScheduler(cfg, resumed_fake, version=3)
    resumed.load_state_dict(state)
    async with resumed.running():
        await settle()
        admitted_groups = len(resumed_fake.started) // cfg.n_samples
        # (eta + 1) batches of groups may exist at once, no more.
        assert admitted_groups == (cfg.max_head_offpolicyness + 1) * cfg.batch_size
        resumed_fake.gate.set()
        batches = []
        for step in range(3, 6):
            batches.append(await resumed.next_batch())
            resumed_fake.policy_version = step + 1
            resumed.set_version(step + 1)
    assert all(b.stats["rollout/staleness_max"] <= 1.0 for b in batches)


# ---- the watchdog ------------------------------------------------------------------------


def _stuck_in_tool(fake: GatedEpisodes, never: asyncio.Event):
    async def episode_fn(task_seed: int, sample_index: int) -> Trajectory:
        if task_seed == SEED0 and sample_index == 1:
            with phase("tool", "python"):
                await never.wait()
        return await fake(task_seed, sample_index)

    return episode_fn


async def test_watchdog_stop_names_the_stuck_part_and_episode() -> None:
    never = asyncio.Event()
    cfg = config(max_head_offpolicyness=0, watchdog_s=0.05, watchdog_action="stop")
    scheduler = RolloutScheduler(cfg, _stuck_in_tool(GatedEpisodes(), never))
    with pytest.raises(RolloutStalled) as info:
        async with scheduler.running():
            await scheduler.next_batch()
    message = str(info.value)
    assert "Stuck part: tool (python) (1 of 1 episodes" in message
    assert f"group 0 (task seed {SEED0}) sample 1: in tool (python)" in message
    assert "1 of 2 groups buffered" in message


async def test_watchdog_drop_stuck_fails_the_stuck_episode_and_the_run_goes_on() -> None:
    never = asyncio.Event()
    cfg = config(
        max_head_offpolicyness=0, max_retries=0, watchdog_s=0.05, watchdog_action="drop_stuck"
    )
    scheduler = RolloutScheduler(cfg, _stuck_in_tool(GatedEpisodes(), never))
    async with scheduler.running():
        batch = await scheduler.next_batch()
    assert groups_in(batch) == [1, 2]
    assert batch.stats["rollout/errors/stuck"] == 1.0
    assert batch.stats["rollout/watchdog_dropped"] == 1.0
    assert batch.stats["rollout/dropped_groups/stuck"] == 1.0


async def test_watchdog_warn_reports_and_keeps_waiting(caplog) -> None:
    never = asyncio.Event()
    cfg = config(max_head_offpolicyness=0, watchdog_s=0.03, watchdog_action="warn")
    scheduler = RolloutScheduler(cfg, _stuck_in_tool(GatedEpisodes(), never))
    with caplog.at_level(logging.WARNING, logger="areal_env.rollout.scheduler"):
        async with scheduler.running():
            waiting = asyncio.ensure_future(scheduler.next_batch())
            # Ten watchdog periods: it reports (at least once) and keeps waiting.
            await asyncio.wait({waiting}, timeout=0.3)
            assert "rollout watchdog" in caplog.text
            assert not waiting.done()  # warn only reports
            never.set()
            batch = await waiting
    assert groups_in(batch) == [0, 1]
    assert "Stuck part: tool (python)" in caplog.text
    assert batch.stats["rollout/watchdog_reports"] >= 1.0


async def test_watchdog_names_the_staleness_bound_when_nothing_runs() -> None:
    # The trainer forgot set_version(): no group may start, and the report says why.
    cfg = config(max_head_offpolicyness=0, watchdog_s=0.05, watchdog_action="stop")
    scheduler = RolloutScheduler(cfg, GatedEpisodes())
    with pytest.raises(RolloutStalled, match="staleness bound admits no group at version 0"):
        async with scheduler.running():
            await scheduler.next_batch()
            await scheduler.next_batch()


async def test_real_env_and_client_mark_inference_and_env_step() -> None:
    # The phases come from the chat client and AsyncEnv themselves, not from the test.
    tok = char_tokenizer()
    hang = asyncio.Event()
    engine = ScriptedEngine(replies=[tok.encode("b")])
    generate = engine.agenerate

    async def hanging_generate(request):
        await hang.wait()
        return await generate(request)

    engine.agenerate = hanging_generate  # type: ignore[method-assign]

    class SlowStepEnv(ParityEnv):
        async def _astep(self, message):
            await hang.wait()
            return await super()._astep(message)

    from areal_env.agents.single_turn import SingleTurnAgent

    client = ChatClient(engine, tok)
    cfg = config(batch_size=1, n_samples=2, max_head_offpolicyness=0, watchdog_s=0.05)
    cfg.watchdog_action = "stop"
    scheduler = RolloutScheduler(cfg, make_episode_fn(ParityEnv, SingleTurnAgent(), client.episode))
    with pytest.raises(RolloutStalled, match=r"Stuck part: inference \(2 of 2 episodes"):
        async with scheduler.running():
            await scheduler.next_batch()

    hang.set()
    scheduler = RolloutScheduler(
        cfg, make_episode_fn(SlowStepEnv, SingleTurnAgent(), client.episode)
    )
    hang.clear()
    engine.agenerate = generate  # type: ignore[method-assign]
    with pytest.raises(RolloutStalled, match=r"Stuck part: env step \(SlowStepEnv\)"):
        async with scheduler.running():
            await scheduler.next_batch()
    hang.set()
