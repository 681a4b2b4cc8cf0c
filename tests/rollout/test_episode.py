"""Retries, timeouts, cancellation and the episode_fn built from env/agent/client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from areal_env.errors import InferenceError
from areal_env.rollout.episode import (
    EpisodeOutcome,
    FailureStats,
    make_episode_fn,
    run_with_retries,
)
from areal_env.types import Trajectory


def failing_times(n: int, exc: Exception) -> tuple[Callable[[], Awaitable[Trajectory]], list]:
    calls: list[int] = []

    async def attempt() -> Trajectory:
        calls.append(1)
        if len(calls) <= n:
            raise exc
        return Trajectory(reward=1.0)

    return attempt, calls


async def settle(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_transient_error_is_retried() -> None:
    attempt, calls = failing_times(1, InferenceError("dropped"))
    outcome = await run_with_retries(attempt, max_retries=1)
    assert outcome.ok and outcome.trajectory.reward == 1.0
    assert (outcome.attempts, outcome.errors, len(calls)) == (2, ("InferenceError",), 2)
    assert outcome.error is None


@pytest.mark.parametrize("exc", [InferenceError("down"), ValueError("bug in a tool")])
async def test_exhausted_retries_report_a_failed_outcome(exc: Exception) -> None:
    attempt, calls = failing_times(10, exc)
    outcome = await run_with_retries(attempt, max_retries=2)
    assert not outcome.ok and outcome.trajectory is None
    assert outcome.attempts == 3 == len(calls)
    assert outcome.errors == (type(exc).__name__,) * 3
    assert outcome.error is exc


async def test_no_retry_when_max_retries_is_zero() -> None:
    attempt, calls = failing_times(1, InferenceError("down"))
    outcome = await run_with_retries(attempt, max_retries=0)
    assert not outcome.ok and len(calls) == 1


async def test_negative_max_retries_is_rejected() -> None:
    attempt, _ = failing_times(0, InferenceError("unused"))
    with pytest.raises(ValueError, match="max_retries"):
        await run_with_retries(attempt, max_retries=-1)


async def test_timeout_is_a_failure_and_cancels_the_attempt() -> None:
    never = asyncio.Event()
    cancelled: list[int] = []

    async def stuck() -> Trajectory:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise
        return Trajectory()

    outcome = await run_with_retries(stuck, max_retries=1, timeout_s=0.01)
    assert not outcome.ok
    assert outcome.errors == ("timeout", "timeout")
    assert isinstance(outcome.error, TimeoutError)
    assert len(cancelled) == 2  # no attempt outlives its timeout


async def test_timeout_inside_the_episode_is_told_apart() -> None:
    attempt, _ = failing_times(1, TimeoutError("tool sandbox timed out"))
    outcome = await run_with_retries(attempt, max_retries=1, timeout_s=60.0)
    assert outcome.ok and outcome.errors == ("TimeoutError",)


@pytest.mark.parametrize("timeout_s", [None, 60.0])
async def test_cancellation_is_not_swallowed(timeout_s: float | None) -> None:
    gate = asyncio.Event()
    started: list[int] = []
    cancelled: list[int] = []

    async def blocked() -> Trajectory:
        started.append(1)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise
        return Trajectory()

    task = asyncio.ensure_future(run_with_retries(blocked, max_retries=3, timeout_s=timeout_s))
    try:
        await settle()
        assert started == [1] and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert started == [1]  # not retried
        assert cancelled == [1]
    finally:
        gate.set()


@pytest.mark.parametrize("exc_type", [asyncio.CancelledError, KeyboardInterrupt])
async def test_base_exceptions_from_the_episode_propagate(exc_type: type) -> None:
    attempt, calls = failing_times(5, exc_type())
    with pytest.raises(exc_type):
        await run_with_retries(attempt, max_retries=3)
    assert len(calls) == 1


def test_failure_stats_count_by_kind_and_reset() -> None:
    stats = FailureStats()
    stats.record(EpisodeOutcome(trajectory=Trajectory(), attempts=2, errors=("RewardError",)))
    stats.record(EpisodeOutcome(trajectory=None, attempts=2, errors=("timeout", "RewardError")))
    assert stats.as_metrics() == {
        "rollout/failed_episodes": 1.0,
        "rollout/errors/RewardError": 2.0,
        "rollout/errors/timeout": 1.0,
    }
    stats.reset()
    assert stats.as_metrics() == {"rollout/failed_episodes": 0.0}


class AsyncClosingEnv:
    def __init__(self) -> None:
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


class SyncClosingEnv:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class ScriptedAgent:
    def __init__(self, task_id: str = "", error: Exception | None = None) -> None:
        self.task_id = task_id
        self.error = error
        self.calls: list[tuple[object, object, int]] = []

    async def run(self, env: object, client: object, *, seed: int) -> Trajectory:
        self.calls.append((env, client, seed))
        if self.error is not None:
            raise self.error
        return Trajectory(reward=0.5, task_id=self.task_id)


@pytest.mark.parametrize("env_type", [AsyncClosingEnv, SyncClosingEnv])
async def test_episode_fn_uses_fresh_env_and_client_and_closes_env(env_type: type) -> None:
    envs: list = []
    clients: list = []

    def env_factory() -> object:
        envs.append(env_type())
        return envs[-1]

    def client_factory() -> object:
        clients.append(object())
        return clients[-1]

    agent = ScriptedAgent()
    episode_fn = make_episode_fn(env_factory, agent, client_factory)
    first = await episode_fn(11, 0)
    second = await episode_fn(11, 1)
    assert (first.task_id, second.task_id) == ("11", "11")
    assert (first.info["sample_index"], second.info["sample_index"]) == (0, 1)
    assert [c[2] for c in agent.calls] == [11, 11]
    assert [c[0] for c in agent.calls] == envs and len({id(e) for e in envs}) == 2
    assert [c[1] for c in agent.calls] == clients and len({id(c) for c in clients}) == 2
    assert all(env.closed for env in envs)


async def test_episode_fn_keeps_agent_task_id() -> None:
    episode_fn = make_episode_fn(AsyncClosingEnv, ScriptedAgent(task_id="gsm8k-3"), object)
    assert (await episode_fn(11, 0)).task_id == "gsm8k-3"


async def test_episode_fn_closes_env_when_agent_fails() -> None:
    envs: list[AsyncClosingEnv] = []

    def env_factory() -> AsyncClosingEnv:
        envs.append(AsyncClosingEnv())
        return envs[-1]

    episode_fn = make_episode_fn(env_factory, ScriptedAgent(error=InferenceError("x")), object)
    outcome = await run_with_retries(lambda: episode_fn(3, 0), max_retries=1)
    assert not outcome.ok and outcome.errors == ("InferenceError", "InferenceError")
    assert len(envs) == 2 and all(env.closed for env in envs)  # a fresh env per attempt
