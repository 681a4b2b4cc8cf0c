"""A multi-turn tool-calling agent: ask, run the tools through the env, ask again.

The loop: a completion with ``env.tools``; the assistant message (text and/or
tool calls) goes to ``env.astep``; the env's answer (tool results, user turns)
is appended to the history; repeat until the env ends the episode, the turn
limit, or the context budget. The chat client keeps the whole episode as one
token sequence where it can (sampled ids kept, env messages appended as prompt
tokens), so nothing the model sampled is re-tokenized. The env, not the agent,
runs tools: a malformed call is the env's to answer with an error message.

Per-episode metrics (averaged into ``rollout/<name>_mean``): ``num_turns``,
``tool_calls``, ``tool_errors`` (as the env reports them), ``context_cut``.

Example:
    >>> import asyncio, gymnasium as gym, areal_env
    >>> from areal_env.inference.chat_client import ChatClient
    >>> from areal_env.testing import ScriptedEngine, char_tokenizer
    >>> tok = char_tokenizer()
    >>> env = gym.make("areal/Search-v0", num_entities=10).unwrapped
    >>> _, info = env.reset(seed=3)
    >>> call = '<tool_call>{"name": "search", "arguments": {"query": "%s"}}</tool_call>'
    >>> replies = [call % info["query"], "<answer>%s</answer>" % info["answer"]]
    >>> client = ChatClient(ScriptedEngine(replies=[tok.encode(r) for r in replies]), tok)
    >>> traj = asyncio.run(ToolCallingAgent().run(env, client.episode(), seed=3))
    >>> traj.reward, traj.num_turns, traj.metrics["tool_calls"], len(traj.samples)
    (1.0, 2, 1.0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from areal_env.agents.base import finish_trajectory
from areal_env.inference.chat_client import EpisodeClient, to_message_dict
from areal_env.types import Trajectory


@dataclass(kw_only=True, slots=True)
class ToolCallingAgent:
    """Plays a multi-turn, tool-using episode (see the module docstring)."""

    max_turns: int = 8
    """Completions at most; the episode is cut (``truncated``) after the last."""
    max_tokens: int | None = None
    """Token budget of each completion; None keeps the client's default."""
    max_context_tokens: int | None = None
    """Stop (``truncated``) once the episode's token sequence is longer than this."""

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"agent.kwargs.max_turns must be >= 1, got {self.max_turns}")
        for name in ("max_tokens", "max_context_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"agent.kwargs.{name} must be >= 1 or None, got {value}")

    async def run(
        self,
        env: Any,
        client: EpisodeClient,
        *,
        seed: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Trajectory:
        """Play one episode to its end, its turn limit or its context budget."""
        obs, info = await env.areset(seed=seed, options=options)
        messages = list(obs)
        tools = env.tools or None
        total, step_info, done, cut = 0.0, {}, False, False
        tool_calls = 0
        for _ in range(self.max_turns):
            completion = await client.chat.completions.create(
                messages=messages, tools=tools, max_tokens=self.max_tokens
            )
            action = to_message_dict(completion.choices[0].message)
            tool_calls += len(action.get("tool_calls") or [])
            messages.append(action)
            obs, reward, done, cut, step_info = await env.astep(action)
            total += reward
            messages.extend(obs)
            if done or cut or self._over_budget(client):
                break
        context_cut = not (done or cut) and self._over_budget(client)
        traj = finish_trajectory(client, total, {**info, **step_info})
        traj.messages = messages
        traj.truncated = not done
        traj.metrics.update(
            num_turns=float(traj.num_turns),
            tool_calls=float(tool_calls),
            tool_errors=float(step_info.get("tool_errors", 0)),
            context_cut=float(context_cut),
        )
        return traj

    def _over_budget(self, client: EpisodeClient) -> bool:
        if self.max_context_tokens is None or not client.trajectory.samples:
            return False
        return len(client.trajectory.samples[-1]) > self.max_context_tokens
