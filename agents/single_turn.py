"""The simplest agent: one completion per episode (math, countdown, QA)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from areal_env.agents.base import finish_trajectory
from areal_env.inference.chat_client import EpisodeClient, to_message_dict
from areal_env.types import Trajectory


@dataclass(kw_only=True, slots=True)
class SingleTurnAgent:
    """Reset, ask the model once, step with its reply, return the trajectory.

    Example:
        >>> import asyncio, gymnasium as gym, areal_env
        >>> from areal_env.inference.chat_client import ChatClient
        >>> from areal_env.testing import ScriptedEngine, char_tokenizer
        >>> tok = char_tokenizer()
        >>> client = ChatClient(ScriptedEngine(replies=[tok.encode("5")]), tok)
        >>> env = gym.make("areal/Math-v0").unwrapped
        >>> traj = asyncio.run(SingleTurnAgent().run(env, client.episode(), seed=0))
        >>> traj.num_turns
        1
    """

    max_tokens: int | None = None
    """Override of the client's token budget; None keeps the client default."""

    async def run(
        self,
        env: Any,
        client: EpisodeClient,
        *,
        seed: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Trajectory:
        """Play one single-turn episode."""
        obs, info = await env.areset(seed=seed, options=options)
        completion = await client.chat.completions.create(
            messages=list(obs), tools=env.tools or None, max_tokens=self.max_tokens
        )
        # A plain dict the env's action space accepts (content may be None next
        # to tool calls); None-valued SDK fields such as ``refusal`` are dropped.
        action = to_message_dict(completion.choices[0].message)
        _, reward, terminated, truncated, step_info = await env.astep(action)
        traj = finish_trajectory(client, reward, {**info, **step_info})
        traj.truncated = bool(truncated) or completion.choices[0].finish_reason == "length"
        return traj
