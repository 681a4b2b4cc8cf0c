"""RolloutScheduler: keeps episodes running in the background and hands out batches.

The loops, all asyncio tasks owned by the scheduler (no threads)::

      trainer: set_version(v) after each weight update
         |                                          (raises the staleness limit)
         v
    +------------------+  admit group g   +---------------------+  n_samples  +------------------+
    | rollout_producer |----------------->| rollout_group_{g}   |------------>| episode_fn(seed, |
    | (one task)       |  (whole groups)  | (one task per group)|  concurrent | i) with retries  |
    +------------------+                  +---------------------+             +------------------+
         ^                                     |  all ok and kept: accept
         | slots freed when a group ends       |  a member failed: drop the group
         +-------------------------------------+  a filter matched: drop the group
                                               v
                                    buffer (oldest group first) ---> next_batch() ---> trainer

Backpressure, for each loop:

    loop               waits for                                 unblocked by
    -----------------  ----------------------------------------  --------------------------------
    rollout_producer   a whole group to fit:                     a group ending (running goes
                       running + n <= max_concurrent_rollouts,   down); set_version() (the limit
                       accepted + running + n <=                 goes up)
                       (eta + version + 1) * batch_size
    rollout_group_{g}  its n_samples episodes                    each episode ending; a member
                                                                 that failed after its retries
                                                                 cancels its siblings
    episode            episode_fn: env, agent, inference         the engine; episode_timeout_s
    next_batch()       batch_size groups in the buffer           a group accepted; a crash of the
                                                                 producer or a group (re-raised);
                                                                 shutdown

Counts are in episodes (see ``staleness.py``): a group takes ``n_samples`` slots
from admission until it ends. It then either becomes ``accepted`` (buffered for
the trainer) or frees its slots (failed member, filtered, cancelled), so the
producer refills them with a new group.

Resume: ``state_dict()`` records the data position and the groups that were
started but not consumed (in flight or buffered). ``load_state_dict()`` puts
those back in front of the queue: they are regenerated from scratch with the
same task seeds under the resumed policy, rather than saving trajectories in
the checkpoint. No task is skipped and none is trained on twice.

Example:
    >>> import asyncio
    >>> from areal_env.types import Trajectory
    >>> async def episode_fn(task_seed: int, sample_index: int) -> Trajectory:
    ...     return Trajectory(reward=float(sample_index), task_id=str(task_seed))
    >>> async def train() -> list[int]:
    ...     config = RolloutConfig(batch_size=2, n_samples=3, max_head_offpolicyness=0)
    ...     scheduler = RolloutScheduler(config, episode_fn)
    ...     sizes = []
    ...     async with scheduler.running():
    ...         for step in range(3):
    ...             batch = await scheduler.next_batch()
    ...             sizes.append(len(batch))
    ...             scheduler.set_version(step + 1)
    ...     return sizes
    >>> asyncio.run(train())
    [6, 6, 6]
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from areal_env.rollout.episode import EpisodeFn, EpisodeOutcome, FailureStats, run_with_retries
from areal_env.rollout.grouping import (
    GroupFilter,
    all_rewards_equal,
    build_batch,
    first_matching_filter,
    task_seed_for,
)
from areal_env.rollout.staleness import AdmissionCounters
from areal_env.types import EpisodeBatch, Trajectory

logger = logging.getLogger(__name__)

_TOTALS = ("accepted_groups", "dropped_groups", "filtered_groups", "failed_episodes")
"""Run-long counters kept in ``state_dict()``."""


@dataclass(kw_only=True, slots=True)
class RolloutConfig:
    """How many episodes run, how stale they may be, and which groups are kept."""

    batch_size: int = 32
    """Groups per training batch (each of ``n_samples`` episodes)."""
    n_samples: int = 8
    """Episodes per task; they form one group for group-relative advantages."""
    max_concurrent_rollouts: int = 256
    """Most episodes in flight at once; must hold at least one group."""
    max_head_offpolicyness: int = 1
    """How many weight versions an episode may lag the trainer; 0 is synchronous RL."""
    max_retries: int = 1
    """Fresh attempts for a failed episode before its group is dropped."""
    episode_timeout_s: float | None = None
    """Time limit per episode attempt in seconds (a timeout is a failure); None: no limit."""
    filter_all_equal: bool = False
    """Drop groups whose rewards are all equal (zero advantage); they do not count as accepted."""
    seed: int = 0
    """Task seeds are derived from it and the group index."""

    def __post_init__(self) -> None:
        for key in ("batch_size", "n_samples", "max_concurrent_rollouts"):
            if getattr(self, key) < 1:
                raise ValueError(f"rollout.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("max_head_offpolicyness", "max_retries"):
            if getattr(self, key) < 0:
                raise ValueError(f"rollout.{key} must be >= 0, got {getattr(self, key)}")
        if self.max_concurrent_rollouts < self.n_samples:
            raise ValueError(
                "rollout.max_concurrent_rollouts must be >= rollout.n_samples (groups are "
                f"admitted whole), got {self.max_concurrent_rollouts} < {self.n_samples}"
            )
        if self.episode_timeout_s is not None and self.episode_timeout_s <= 0:
            raise ValueError(
                f"rollout.episode_timeout_s must be > 0 or None, got {self.episode_timeout_s}"
            )
        if self.filter_all_equal and self.n_samples < 2:
            raise ValueError(
                "rollout.filter_all_equal needs rollout.n_samples >= 2 (a group of one "
                f"always has equal rewards), got n_samples={self.n_samples}"
            )


class RolloutScheduler:
    """Runs groups of episodes under the staleness bound and serves ``EpisodeBatch``es.

    Args:
        config: the rollout settings.
        episode_fn: ``async (task_seed, sample_index) -> Trajectory``, e.g. from
            ``make_episode_fn``; it may raise, failures are handled here.
        version: the trainer's weight version at start (non-zero on resume).
    """

    def __init__(self, config: RolloutConfig, episode_fn: EpisodeFn, *, version: int = 0) -> None:
        self.config = config
        self._episode_fn = episode_fn
        self._version = version
        self._filters: list[GroupFilter] = [all_rewards_equal] if config.filter_all_equal else []
        self._counters = AdmissionCounters(
            batch_size=config.batch_size * config.n_samples,
            max_head_offpolicyness=config.max_head_offpolicyness,
        )
        self._next_group = 0
        self._regenerate: deque[int] = deque()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._buffer: list[tuple[int, list[Trajectory]]] = []  # heap, oldest group first
        self._recent: Counter[str] = Counter()  # since the last batch
        self._failures = FailureStats()  # since the last batch
        self._totals: Counter[str] = Counter()  # since the run began; checkpointed
        self._changed = asyncio.Event()
        self._producer: asyncio.Task[None] | None = None
        self._closed = True  # the buffer serves batches only inside running()
        self._error: BaseException | None = None
        self._error_raised = False
        self._warned_stall = False

    # ----------------------------------------------------------------- public API

    @property
    def version(self) -> int:
        """The trainer's weight version, as last set."""
        return self._version

    @property
    def data_position(self) -> int:
        """Groups started so far: the next new group gets this index."""
        return self._next_group

    def set_version(self, version: int) -> None:
        """Record the trainer's new weight version; may unblock admission.

        Raises:
            ValueError: when ``version`` is lower than the current one.
        """
        if version < self._version:
            raise ValueError(f"version must not go down: {self._version} -> {version}")
        self._version = version
        self._notify()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RolloutScheduler]:
        """Run the producer for the duration of the ``async with`` block.

        Raises:
            RuntimeError: when already running.
        """
        if self._producer is not None:
            raise RuntimeError("RolloutScheduler.running() is already active")
        self._changed = asyncio.Event()
        self._closed = False
        self._error, self._error_raised = None, False
        self._producer = asyncio.create_task(self._produce(), name="rollout_producer")
        self._producer.add_done_callback(self._on_producer_done)
        try:
            yield self
        finally:
            await self._shutdown()
        if self._error is not None and not self._error_raised:
            raise self._error

    async def next_batch(self) -> EpisodeBatch:
        """Wait for ``batch_size`` finished groups and return the oldest ones.

        Raises:
            RuntimeError: outside ``running()``, or when the scheduler stops while waiting.
            Exception: whatever crashed the producer or a group task, re-raised.
        """
        if self._closed:
            raise RuntimeError("next_batch() needs `async with scheduler.running():`")
        self._warn_if_stalled()
        await self._wait_until(self._batch_ready)
        if self._error is not None:
            self._error_raised = True
            raise self._error
        if self._closed:
            raise RuntimeError("the scheduler stopped while next_batch() was waiting")
        groups = [heapq.heappop(self._buffer)[1] for _ in range(self.config.batch_size)]
        return build_batch(groups, version=self._version, extra_stats=self._take_recent_stats())

    def state_dict(self) -> dict[str, Any]:
        """What resume needs: data position, unconsumed groups, counters."""
        buffered = [g for g, _ in self._buffer]
        # Buffered groups will be regenerated on resume, so they no longer count as accepted.
        accepted = self._counters.accepted - len(buffered) * self.config.n_samples
        return {
            "data_position": self._next_group,
            "pending_groups": sorted([*self._regenerate, *self._inflight, *buffered]),
            "accepted_episodes": accepted,
            "totals": {key: self._totals[key] for key in _TOTALS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output; unconsumed groups are regenerated first.

        Raises:
            RuntimeError: while running.
        """
        if self._producer is not None:
            raise RuntimeError("load_state_dict() must be called outside running()")
        self._next_group = int(state["data_position"])
        self._regenerate = deque(sorted(state["pending_groups"]))
        self._buffer = []
        self._counters.accepted = int(state["accepted_episodes"])
        self._counters.running = 0
        self._totals = Counter(state["totals"])

    # ------------------------------------------------------------------ producer

    async def _produce(self) -> None:
        n = self.config.n_samples
        while True:
            await self._wait_until(self._group_fits)
            g = self._take_group_index()
            self._counters.on_start(n)
            task = asyncio.create_task(self._run_group(g), name=f"rollout_group_{g}")
            task.add_done_callback(self._on_group_done)
            self._inflight[g] = task

    def _group_fits(self) -> bool:
        n = self.config.n_samples
        within_concurrency = self._counters.running + n <= self.config.max_concurrent_rollouts
        return within_concurrency and self._counters.can_admit(n, self._version)

    def _take_group_index(self) -> int:
        if self._regenerate:
            return self._regenerate.popleft()
        self._next_group += 1
        return self._next_group - 1

    async def _run_group(self, g: int) -> None:
        try:
            trajectories = await self._run_members(g)
        except asyncio.CancelledError:
            # Shutdown: give the slots back and regenerate this group on the next start.
            self._counters.on_reject(self.config.n_samples)
            self._regenerate.append(g)
            raise
        finally:
            del self._inflight[g]
        self._finish_group(g, trajectories)
        self._notify()

    async def _run_members(self, g: int) -> list[Trajectory] | None:
        """The group's episodes, in sample order; None when one failed after its retries."""
        seed = task_seed_for(self.config.seed, g)
        members = [
            asyncio.create_task(self._run_member(seed, i), name=f"rollout_group_{g}_sample_{i}")
            for i in range(self.config.n_samples)
        ]
        try:
            for next_done in asyncio.as_completed(members):
                if not (await next_done).ok:
                    return None  # the group is dropped whole; its siblings are cancelled below
            return [t for m in members if (t := m.result().trajectory) is not None]
        finally:
            for member in members:
                member.cancel()
            await asyncio.gather(*members, return_exceptions=True)

    async def _run_member(self, task_seed: int, sample_index: int) -> EpisodeOutcome:
        outcome = await run_with_retries(
            lambda: self._episode_fn(task_seed, sample_index),
            max_retries=self.config.max_retries,
            timeout_s=self.config.episode_timeout_s,
        )
        self._failures.record(outcome)
        if not outcome.ok:
            self._totals["failed_episodes"] += 1
        return outcome

    def _finish_group(self, g: int, trajectories: list[Trajectory] | None) -> None:
        n = self.config.n_samples
        if trajectories is None:
            self._count("dropped_groups")
            self._counters.on_reject(n)
        elif first_matching_filter(trajectories, self._filters) is not None:
            self._count("filtered_groups")
            self._counters.on_reject(n)
        else:
            self._totals["accepted_groups"] += 1
            self._counters.on_accept(n)
            heapq.heappush(self._buffer, (g, trajectories))

    # ------------------------------------------------------ waiting and shutdown

    def _notify(self) -> None:
        self._changed.set()

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        # No await between the check and clear(), so no notification can be lost.
        while not ready():
            self._changed.clear()
            await self._changed.wait()

    def _batch_ready(self) -> bool:
        enough = len(self._buffer) >= self.config.batch_size
        return enough or self._error is not None or self._closed

    def _warn_if_stalled(self) -> None:
        stalled = self._counters.running == 0 and not self._group_fits()
        if stalled and not self._batch_ready() and not self._warned_stall:
            self._warned_stall = True
            logger.warning(
                "next_batch() waits but the staleness bound admits no group at version %d; "
                "it resumes only when set_version() is called from another task",
                self._version,
            )

    def _on_producer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self._record_crash(task.exception() or RuntimeError("rollout_producer exited"))

    def _on_group_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._record_crash(task.exception())

    def _record_crash(self, exc: BaseException | None) -> None:
        if self._error is None:
            self._error = exc
        self._notify()

    async def _shutdown(self) -> None:
        # Order matters. 1) Close the buffer and wake its waiters: with the producer gone
        # nothing new would arrive, so a next_batch() in another task must fail, not sleep
        # forever. 2) Cancel the producer, then the groups in flight (they give their slots
        # back and queue for regeneration). 3) Gather, so no task outlives `async with`.
        self._closed = True
        self._notify()
        producer, self._producer = self._producer, None
        tasks = [t for t in (producer, *self._inflight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._regenerate = deque(sorted(self._regenerate))

    def _take_recent_stats(self) -> dict[str, float]:
        stats = {
            "rollout/dropped_groups": float(self._recent["dropped_groups"]),
            "rollout/filtered_groups": float(self._recent["filtered_groups"]),
            **self._failures.as_metrics(),
            "rollout/running": float(self._counters.running),
            "rollout/buffered_groups": float(len(self._buffer)),
            "rollout/version": float(self._version),
        }
        self._recent.clear()
        self._failures.reset()
        return stats

    def _count(self, key: str) -> None:
        self._recent[key] += 1
        self._totals[key] += 1
