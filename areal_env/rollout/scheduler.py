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
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from areal_env.rollout.activity import CURRENT, EpisodeActivity
from areal_env.rollout.episode import EpisodeFn, EpisodeOutcome, FailureStats, run_with_retries
from areal_env.rollout.grouping import (
    GroupFilter,
    all_rewards_equal,
    build_batch,
    first_matching_filter,
    task_seed_for,
)
from areal_env.rollout.seeding import EPISODE_SEED, mix
from areal_env.rollout.staleness import AdmissionCounters, trajectory_staleness
from areal_env.rollout.watchdog import stall_report
from areal_env.types import EpisodeBatch, Trajectory

logger = logging.getLogger(__name__)

_TOTALS = (
    "accepted_groups",
    "dropped_groups",
    "filtered_groups",
    "stale_groups",
    "group_retries",
    "failed_episodes",
    "finished_episodes",
)
"""Run-long counters kept in ``state_dict()``."""


@dataclass(frozen=True, slots=True)
class RolloutLiveStats:
    """The scheduler's counters right now, for progress displays (``live_stats()``).

    The ``*_episodes``/``*_groups`` totals count since the run began (a resumed run
    continues its checkpoint's); ``running_episodes`` and ``buffered_groups`` are now.
    """

    running_episodes: int
    """Episode attempts running now."""
    buffered_groups: int
    """Accepted groups waiting for the trainer."""
    finished_episodes: int
    """Episodes that ended with a trajectory (whatever became of their group)."""
    failed_episodes: int
    """Episodes that failed after their retries."""
    accepted_groups: int
    dropped_groups: int
    """Groups dropped for a failed member."""
    filtered_groups: int
    """Groups dropped by a filter (e.g. all rewards equal)."""
    stale_groups: int
    """Buffered groups evicted for exceeding the staleness bound."""


GROUP_FAILURE_POLICIES = ("drop", "retry")
"""Valid values of ``rollout.group_failure``."""

WATCHDOG_ACTIONS = ("warn", "drop_stuck", "stop")
"""Valid values of ``rollout.watchdog_action``."""


class RolloutStalled(RuntimeError):
    """No batch came for ``rollout.watchdog_s`` and the watchdog action is "stop"."""


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
    group_failure: str = "drop"
    """When a member still fails after its retries: "drop" the group (a fresh task takes its
    slots) or "retry" the whole group on the same task, up to ``max_group_retries`` times."""
    max_group_retries: int = 1
    """Fresh runs of a whole group when ``group_failure`` is "retry"; then it is dropped."""
    max_failed_groups_in_a_row: int | None = 64
    """Stop the run with the last error once this many groups in a row failed (a broken env,
    tool or server fails every episode; refilling would spin forever); None: never stop."""
    filter_all_equal: bool = False
    """Drop groups whose rewards are all equal (zero advantage); they do not count as accepted."""
    watchdog_s: float | None = 600.0
    """Seconds without a batch before the watchdog reports what every running episode waits
    on (inference, env step, tool, reward, user) and applies ``watchdog_action``; None: off."""
    watchdog_action: str = "warn"
    """After a report: "warn" (keep waiting, report again), "drop_stuck" (episodes in one
    phase for ``watchdog_s`` or more fail as "stuck"), or "stop" (the run ends, named)."""
    deterministic: bool = False
    """Each episode attempt samples with its own seed, derived from ``seed``, its group,
    sample and attempt, so a run (and a resumed run) draws the same batches every time;
    needs ``max_head_offpolicyness=0`` (with overlap, timing decides versions)."""
    seed: int = 0
    """Task seeds are derived from it and the group index."""

    def __post_init__(self) -> None:
        if self.max_failed_groups_in_a_row is not None and self.max_failed_groups_in_a_row < 1:
            raise ValueError(
                "rollout.max_failed_groups_in_a_row must be >= 1 or None, "
                f"got {self.max_failed_groups_in_a_row}"
            )
        for key in ("batch_size", "n_samples", "max_concurrent_rollouts"):
            if getattr(self, key) < 1:
                raise ValueError(f"rollout.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("max_head_offpolicyness", "max_retries", "max_group_retries"):
            if getattr(self, key) < 0:
                raise ValueError(f"rollout.{key} must be >= 0, got {getattr(self, key)}")
        if self.max_concurrent_rollouts < self.n_samples:
            raise ValueError(
                "rollout.max_concurrent_rollouts must be >= rollout.n_samples (groups are "
                f"admitted whole), got {self.max_concurrent_rollouts} < {self.n_samples}"
            )
        for key in ("episode_timeout_s", "watchdog_s"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"rollout.{key} must be > 0 or None, got {value}")
        if self.group_failure not in GROUP_FAILURE_POLICIES:
            raise ValueError(
                f"rollout.group_failure must be one of {GROUP_FAILURE_POLICIES}, "
                f"got {self.group_failure!r}"
            )
        if self.watchdog_action not in WATCHDOG_ACTIONS:
            raise ValueError(
                f"rollout.watchdog_action must be one of {WATCHDOG_ACTIONS}, "
                f"got {self.watchdog_action!r}"
            )
        if self.deterministic and self.max_head_offpolicyness != 0:
            raise ValueError(
                "rollout.deterministic needs rollout.max_head_offpolicyness=0: with overlap, "
                "which weight version samples an episode depends on timing, got "
                f"max_head_offpolicyness={self.max_head_offpolicyness}"
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
        self._activities: set[EpisodeActivity] = set()  # running attempts, for the watchdog
        self._last_batch_at = time.monotonic()
        self._failed_in_a_row = 0  # groups dropped for failures since the last accepted one

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
        self._evict_stale()
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
        self._last_batch_at = time.monotonic()
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

        Groups that waited in the buffer past the staleness bound (their oldest token
        more than ``max_head_offpolicyness`` versions behind) are dropped, counted
        and replaced by fresh tasks: the bound holds for trained samples, not only
        at admission. While waiting, the watchdog reports every ``watchdog_s``.

        Raises:
            RuntimeError: outside ``running()``, or when the scheduler stops while waiting.
            RolloutStalled: no batch for ``watchdog_s`` with ``watchdog_action`` "stop".
            Exception: whatever crashed the producer or a group task, re-raised.
        """
        if self._closed:
            raise RuntimeError("next_batch() needs `async with scheduler.running():`")
        self._warn_if_stalled()
        self._evict_stale()
        await self._wait_with_watchdog()
        if self._error is not None:
            self._error_raised = True
            raise self._error
        if self._closed:
            raise RuntimeError("the scheduler stopped while next_batch() was waiting")
        groups = [heapq.heappop(self._buffer)[1] for _ in range(self.config.batch_size)]
        self._last_batch_at = time.monotonic()
        return build_batch(groups, version=self._version, extra_stats=self._take_recent_stats())

    def live_stats(self) -> RolloutLiveStats:
        """Counters as they are now (cheap: a progress display may poll it often)."""
        t = self._totals
        return RolloutLiveStats(
            running_episodes=len(self._activities),
            buffered_groups=len(self._buffer),
            finished_episodes=t["finished_episodes"],
            failed_episodes=t["failed_episodes"],
            accepted_groups=t["accepted_groups"],
            dropped_groups=t["dropped_groups"],
            filtered_groups=t["filtered_groups"],
            stale_groups=t["stale_groups"],
        )

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
        retries = self.config.max_group_retries if self.config.group_failure == "retry" else 0
        try:
            for run in range(retries + 1):
                trajectories, cause = await self._run_members(g)
                if trajectories is not None:
                    break
                if run < retries:
                    self._count("group_retries")
                    logger.info("group %d: a member failed (%s); running the group again", g, cause)
        except asyncio.CancelledError:
            # Shutdown: give the slots back and regenerate this group on the next start.
            self._counters.on_reject(self.config.n_samples)
            self._regenerate.append(g)
            raise
        finally:
            del self._inflight[g]
        self._finish_group(g, trajectories, cause)
        self._notify()

    async def _run_members(self, g: int) -> tuple[list[Trajectory] | None, str]:
        """The group's episodes in sample order, or None and the failing member's error kind."""
        seed = task_seed_for(self.config.seed, g)
        members = [
            asyncio.create_task(self._run_member(g, seed, i), name=f"rollout_group_{g}_sample_{i}")
            for i in range(self.config.n_samples)
        ]
        try:
            for next_done in asyncio.as_completed(members):
                outcome = await next_done
                if not outcome.ok:  # the group fails whole; its siblings are cancelled below
                    return None, outcome.errors[-1] if outcome.errors else "unknown"
            return [t for m in members if (t := m.result().trajectory) is not None], ""
        finally:
            for member in members:
                member.cancel()
            await asyncio.gather(*members, return_exceptions=True)

    async def _run_member(self, g: int, task_seed: int, sample_index: int) -> EpisodeOutcome:
        attempts = 0

        async def attempt() -> Trajectory:
            nonlocal attempts
            attempts += 1
            if self.config.deterministic:  # the same tokens whatever the timing (seeding.py)
                EPISODE_SEED.set(mix(self.config.seed, g, sample_index, attempts))
            # The watchdog reads (and may cancel) this attempt through its activity record.
            activity = EpisodeActivity(
                label=f"group {g} (task seed {task_seed}) sample {sample_index}",
                attempt=asyncio.current_task(),
            )
            CURRENT.set(activity)  # this task's context (and its children's) only
            self._activities.add(activity)
            try:
                return await self._episode_fn(task_seed, sample_index)
            finally:
                self._activities.discard(activity)

        outcome = await run_with_retries(
            attempt, max_retries=self.config.max_retries, timeout_s=self.config.episode_timeout_s
        )
        self._failures.record(outcome)
        self._totals["finished_episodes" if outcome.ok else "failed_episodes"] += 1
        return outcome

    def _finish_group(self, g: int, trajectories: list[Trajectory] | None, cause: str) -> None:
        n = self.config.n_samples
        if trajectories is None:
            self._count("dropped_groups")
            self._recent[f"dropped_groups/{cause}"] += 1
            self._counters.on_reject(n)
            self._failed_in_a_row += 1
            limit = self.config.max_failed_groups_in_a_row
            if limit is not None and self._failed_in_a_row >= limit:
                self._record_crash(
                    RuntimeError(
                        f"{self._failed_in_a_row} groups in a row failed (last error: {cause}; "
                        "see the log for its traceback): the env, agent, tool or inference "
                        "server fails every episode. Fix it, or raise "
                        "rollout.max_failed_groups_in_a_row"
                    )
                )
        elif first_matching_filter(trajectories, self._filters) is not None:
            self._count("filtered_groups")
            self._counters.on_reject(n)
        else:
            self._totals["accepted_groups"] += 1
            self._failed_in_a_row = 0
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

    async def _wait_with_watchdog(self) -> None:
        """Wait for a batch; every ``watchdog_s`` without one, report and act."""
        limit = self.config.watchdog_s
        while not self._batch_ready():
            if limit is None:
                await self._wait_until(self._batch_ready)
                return
            deadline = self._last_batch_at + limit
            try:
                await asyncio.wait_for(
                    self._wait_until(self._batch_ready),
                    timeout=max(0.0, deadline - time.monotonic()),
                )
            except TimeoutError:
                self._on_watchdog(limit)
                self._last_batch_at = time.monotonic()  # the next report comes after another limit

    def _on_watchdog(self, limit: float) -> None:
        now = time.monotonic()
        report = stall_report(
            self._activities,
            now=now,
            waited_s=now - self._last_batch_at,
            buffered=len(self._buffer),
            batch_size=self.config.batch_size,
            staleness_note=self._staleness_note(),
        )
        action = self.config.watchdog_action
        logger.warning("rollout watchdog: %s\naction: %s", report, action)
        self._count("watchdog_reports")
        if action == "stop":
            self._record_crash(
                RolloutStalled(
                    f"{report}\n(rollout.watchdog_action=stop; raise "
                    "rollout.watchdog_s or fix the stuck part)"
                )
            )
        elif action == "drop_stuck":
            stuck = [a for a in self._activities if now - a.since >= limit]
            dropped = sum(a.cancel_stuck() for a in stuck)
            self._recent["watchdog_dropped"] += dropped
            logger.warning("rollout watchdog: %d stuck episode attempt(s) cancelled", dropped)

    def _staleness_note(self) -> str:
        """Why no group is admitted, when that is the reason nothing runs."""
        if self._counters.running or self._group_fits():
            return ""
        return (
            f"the staleness bound admits no group at version {self._version} "
            f"(accepted {self._counters.accepted} + running {self._counters.running} episodes "
            f"fill the limit {self._counters.capacity(self._version) + self._counters.accepted}); "
            "it opens when the trainer calls set_version()"
        )

    def _evict_stale(self) -> None:
        """Drop buffered groups whose samples are now past the staleness bound."""
        eta, n = self.config.max_head_offpolicyness, self.config.n_samples
        keep = []
        for g, group in self._buffer:
            if max(trajectory_staleness(t, self._version) for t in group) > eta:
                self._count("stale_groups")
                self._counters.on_evict(n)
            else:
                keep.append((g, group))
        if len(keep) != len(self._buffer):
            heapq.heapify(keep)
            self._buffer = keep
            self._notify()  # freed slots: the producer refills them with fresh tasks

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
        counted = ("dropped_groups", "filtered_groups", "stale_groups", "group_retries")
        stats = {
            **{f"rollout/{key}": float(self._recent[key]) for key in counted},
            **{
                f"rollout/{k}": float(v)
                for k, v in sorted(self._recent.items())
                if k not in counted
            },
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
