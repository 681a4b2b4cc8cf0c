"""The Agent protocol: how an agent plays one episode of an env through a client.

An agent owns the episode loop (reset, ask the model, act, repeat) and returns
the recorded :class:`~areal_env.types.Trajectory` with its reward set. Our own
agents, the adapters around other frameworks, and black-box programs behind an
OpenAI-compatible endpoint all have this shape, so the rollout scheduler never
needs to know which one it runs.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from areal_env.inference.chat_client import EpisodeClient
from areal_env.types import Trajectory


@runtime_checkable
class Agent(Protocol):
    """Plays one episode and returns its trajectory."""

    async def run(
        self,
        env: Any,
        client: EpisodeClient,
        *,
        seed: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Trajectory:
        """Reset ``env`` with ``seed``/``options``, play to the end, return the trajectory.

        Args:
            env: an ``AsyncEnv`` (``areset``/``astep``).
            client: a fresh per-episode client; it records tokens and logprobs.
            seed: chooses the task; episodes of one group share it.
            options: passed to ``env.areset``.
        """
        ...


def finish_trajectory(client: EpisodeClient, reward: float, info: dict[str, Any]) -> Trajectory:
    """Set reward and env facts on the client's trajectory and return it.

    An episode the chat client recorded as several samples (a template that
    rewrites earlier turns, a change of temperature) is returned as it is: every
    sample is a training row that shares this reward.
    """
    traj = client.trajectory
    traj.reward = float(reward)
    traj.task_id = str(info.get("task_id", traj.task_id))
    traj.info.update({k: v for k, v in info.items() if _is_scalar(v)})
    return traj


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))
