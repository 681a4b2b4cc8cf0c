"""Run one episode with retries: the one place where errors become data.

An episode that raises (an ``EpisodeError`` from a tool, the inference server,
the env or the reward, or any other ``Exception``) or runs past
``timeout_s`` is retried with a fresh attempt, up to ``max_retries`` times.
Then it is reported as a failed ``EpisodeOutcome``, never raised, and its
errors are counted by type in ``FailureStats``. Cancellation
(``asyncio.CancelledError``), ``KeyboardInterrupt`` and ``SystemExit`` always
propagate: they stop the run, they are not a bad episode.

Example:
    >>> import asyncio
    >>> calls = []
    >>> async def flaky() -> Trajectory:
    ...     calls.append(1)
    ...     if len(calls) == 1:
    ...         raise ConnectionError("server dropped the request")
    ...     return Trajectory(reward=1.0)
    >>> outcome = asyncio.run(run_with_retries(flaky, max_retries=1))
    >>> outcome.ok, outcome.attempts, outcome.errors
    (True, 2, ('ConnectionError',))
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from areal_env.errors import EpisodeError
from areal_env.rollout.activity import WATCHDOG_CANCEL
from areal_env.types import Trajectory

logger = logging.getLogger(__name__)

EpisodeFn = Callable[[int, int], Awaitable[Trajectory]]
"""``async (task_seed, sample_index) -> Trajectory``: one episode, reward set."""

TIMEOUT = "timeout"
"""Error kind recorded when an attempt runs past ``timeout_s``."""

STUCK = "stuck"
"""Error kind recorded when the rollout watchdog cancelled a stuck attempt."""


@dataclass(kw_only=True, slots=True)
class EpisodeOutcome:
    """What became of one episode after all its attempts."""

    trajectory: Trajectory | None
    """The finished episode, or None when every attempt failed."""
    attempts: int
    """Attempts made, the successful one included."""
    errors: tuple[str, ...] = ()
    """Error kind of each failed attempt, in order (exception class name or "timeout")."""
    error: BaseException | None = None
    """The last attempt's exception when the episode failed (a TimeoutError for timeouts)."""

    @property
    def ok(self) -> bool:
        """True when an attempt produced a trajectory."""
        return self.trajectory is not None


@dataclass(kw_only=True, slots=True)
class FailureStats:
    """Failure counters for the metrics: failed attempts by kind, failed episodes.

    Example:
        >>> stats = FailureStats()
        >>> stats.record(EpisodeOutcome(trajectory=None, attempts=2, errors=("timeout", "timeout")))
        >>> stats.as_metrics()
        {'rollout/failed_episodes': 1.0, 'rollout/errors/timeout': 2.0}
    """

    by_kind: Counter[str] = field(default_factory=Counter)
    """Failed attempts per error kind, retried ones included."""
    failed_episodes: int = 0
    """Episodes that failed every attempt."""

    def record(self, outcome: EpisodeOutcome) -> None:
        """Add one episode's failed attempts (and its failure, if it failed)."""
        self.by_kind.update(outcome.errors)
        self.failed_episodes += not outcome.ok

    def as_metrics(self, prefix: str = "rollout/") -> dict[str, float]:
        """Counters as metrics: ``failed_episodes`` and ``errors/<kind>``, kinds sorted."""
        metrics = {f"{prefix}failed_episodes": float(self.failed_episodes)}
        for kind in sorted(self.by_kind):
            metrics[f"{prefix}errors/{kind}"] = float(self.by_kind[kind])
        return metrics

    def reset(self) -> None:
        """Zero every counter (the scheduler does it after each batch)."""
        self.by_kind.clear()
        self.failed_episodes = 0


async def run_with_retries(
    attempt: Callable[[], Awaitable[Trajectory]],
    *,
    max_retries: int,
    timeout_s: float | None = None,
) -> EpisodeOutcome:
    """Run ``attempt()`` until it returns a trajectory, at most ``1 + max_retries`` times.

    Args:
        attempt: builds and runs one fresh attempt of the episode.
        max_retries: extra attempts after the first failure; 0 means no retry.
        timeout_s: per-attempt time limit in seconds; None means no limit.

    Returns:
        The outcome; failures are reported in it, never raised.

    Raises:
        ValueError: when ``max_retries`` is negative.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    errors: list[str] = []
    for n in range(1, max_retries + 2):
        try:
            trajectory = await _attempt_with_timeout(attempt, timeout_s)
        except Exception as exc:  # errors are data here; BaseExceptions (cancel) propagate
            errors.append(_error_kind(exc))
            last = exc
            # An EpisodeError or a timeout is an expected fault; anything else is likely a
            # bug in env or agent code, so keep its traceback in the log.
            expected = isinstance(exc, (EpisodeError, _AttemptTimeout, _AttemptStuck))
            logger.warning(
                "episode attempt %d/%d failed: %r", n, max_retries + 1, exc, exc_info=not expected
            )
        else:
            return EpisodeOutcome(trajectory=trajectory, attempts=n, errors=tuple(errors))
    return EpisodeOutcome(trajectory=None, attempts=n, errors=tuple(errors), error=last)


class _AttemptTimeout(TimeoutError):
    """Our per-attempt timeout, told apart from a TimeoutError raised inside the episode."""


class _AttemptStuck(EpisodeError):
    """The attempt's task was cancelled from outside (the watchdog), not the episode itself."""


def _error_kind(exc: Exception) -> str:
    if isinstance(exc, _AttemptTimeout):
        return TIMEOUT
    return STUCK if isinstance(exc, _AttemptStuck) else type(exc).__name__


async def _attempt_with_timeout(
    attempt: Callable[[], Awaitable[Trajectory]], timeout_s: float | None
) -> Trajectory:
    # The rollout watchdog cancels a stuck attempt's task with WATCHDOG_CANCEL: that attempt
    # fails as "stuck" (and may be retried); any other cancellation stops the episode.
    if timeout_s is None:
        try:
            return await attempt()
        except asyncio.CancelledError as e:
            if not _by_watchdog(e):
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # this task goes on: the cancel was for the attempt only
            raise _AttemptStuck("the rollout watchdog cancelled this attempt: stuck") from None
    task = asyncio.ensure_future(attempt())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    finally:
        # Covers both our timeout and our own cancellation: the attempt never outlives us.
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if not done:
        raise _AttemptTimeout(f"episode attempt ran past {timeout_s}s")
    try:
        return task.result()
    except asyncio.CancelledError as e:  # we were not cancelled, or wait() would have raised
        if _by_watchdog(e):
            raise _AttemptStuck("the rollout watchdog cancelled this attempt: stuck") from None
        raise


def _by_watchdog(exc: asyncio.CancelledError) -> bool:
    return bool(exc.args) and exc.args[0] == WATCHDOG_CANCEL


async def close_env(env: Any) -> None:
    """Close ``env`` with ``await env.aclose()`` when it has one, else ``env.close()``."""
    aclose = getattr(env, "aclose", None)
    if aclose is not None:
        await aclose()
    else:
        env.close()


def make_episode_fn(
    env_factory: Callable[[], Any], agent: Any, client_factory: Callable[[], Any]
) -> EpisodeFn:
    """Build the scheduler's ``episode_fn`` from an env factory, an agent and a client factory.

    Each call runs one episode on a fresh env and a fresh per-episode client:
    ``await agent.run(env, client, seed=task_seed)``. The env is always closed.
    ``trajectory.task_id`` defaults to ``str(task_seed)`` so a group shares it.

    Args:
        env_factory: returns a new env (``areset``/``astep``, and ``aclose`` or ``close``).
        agent: has ``async run(env, client, *, seed) -> Trajectory``, reward set.
        client_factory: returns a new inference client for one episode.
    """

    async def episode_fn(task_seed: int, sample_index: int) -> Trajectory:
        env = env_factory()
        try:
            trajectory = await agent.run(env, client_factory(), seed=task_seed)
        finally:
            await close_env(env)
        if not trajectory.task_id:
            trajectory.task_id = str(task_seed)
        trajectory.info.setdefault("sample_index", sample_index)
        return trajectory

    return episode_fn
