"""Gold demonstrations played through the real rollout path (teacher forcing).

A warm start fine-tunes on demonstrations before RL. For a single-turn task a
demonstration is just prompt + answer, but a multi-turn one has tool calls whose
results the env produces, chat-template turn boundaries, and possibly rows split
by template drift. Rather than rebuild all of that, a demonstration *is* an
episode: the env's gold assistant messages (``env.demonstration()``, else the
reset ``info["answer"]``) are rendered to token ids with the model's own chat
template and replayed by a :class:`~areal_env.inference.replay.ReplayEngine`
through the configured agent, chat client and env. The resulting trajectory has
exactly the tokens and loss mask a rollout of those replies would have: the
assistant's tokens are trained on, tool results and prompts are not.

A demonstration that does not earn ``min_reward`` (a gold answer the env's own
reward rejects, a search that missed its passage) is dropped and counted, not
trained on.

Example:
    >>> import asyncio, gymnasium as gym, areal_env
    >>> from areal_env.agents.tool_calling import ToolCallingAgent
    >>> from areal_env.inference.chat_client import ChatClient
    >>> from areal_env.testing import ScriptedEngine, char_tokenizer
    >>> client = ChatClient(ScriptedEngine(replies=[[5]]), char_tokenizer())
    >>> make_env = lambda: gym.make("areal/Search-v0", num_entities=10).unwrapped
    >>> demos, stats = asyncio.run(
    ...     build_demonstrations(make_env, ToolCallingAgent(), client, seeds=range(3)))
    >>> [d.reward for d in demos], [d.num_turns for d in demos], stats.dropped
    ([1.0, 1.0, 1.0], [2, 2, 2], 0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from areal_env.inference.chat_client import ChatClient
from areal_env.inference.replay import ReplayEngine
from areal_env.rollout.episode import close_env
from areal_env.types import Trajectory

Message = dict[str, Any]


@dataclass(kw_only=True, slots=True)
class DemonstrationStats:
    """What building a demonstration pool gave."""

    built: int = 0
    """Demonstrations kept."""
    dropped: int = 0
    """Played to the end but below ``min_reward``: not trained on."""


def gold_messages(env: Any, info: dict[str, Any]) -> list[Message]:
    """The gold assistant messages of the task ``env`` was just reset to.

    Raises:
        ValueError: when the env has no ``demonstration()`` and its reset info no
            ``"answer"``: there is nothing to demonstrate.
    """
    own = getattr(env, "demonstration", None)
    messages = own() if own is not None else None
    if messages:
        return list(messages)
    if "answer" not in info:
        raise ValueError(
            f"{type(env).__name__} gives no demonstration: a warm start needs an env with "
            "demonstration() or a reset info['answer']"
        )
    return [{"role": "assistant", "content": str(info["answer"])}]


def reply_ids(
    client: ChatClient, context: list[Message], tools: list[Any] | None, message: Message
) -> list[int]:
    """Token ids a model would sample to produce ``message`` after ``context``.

    The template's rendering of the conversation with the message, minus its
    rendering with a generation prompt, is the reply text; the turn ending the
    template writes after it is left to the engine's stop token, as when sampling.

    Raises:
        ValueError: when the template does not render the reply after the prompt.
    """
    prompt = client.render(context, tools, generation_prompt=True)
    full = client.render([*context, message], tools, generation_prompt=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template does not write an assistant message after its generation "
            "prompt, so a demonstration cannot be rendered as sampled tokens"
        )
    text = full[len(prompt) :]
    close = client.turn_close
    if close and text.endswith(close):
        text = text[: -len(close)]
    return client.encode(text)


async def play_demonstration(
    env_factory: Callable[[], Any], agent: Any, client: ChatClient, seed: int
) -> Trajectory:
    """One gold episode of task ``seed``, recorded as a rollout would record it."""
    env = env_factory()
    try:
        obs, info = await env.areset(seed=seed)
        tools = env.tools or None
        replies = [reply_ids(client, list(obs), tools, m) for m in gold_messages(env, info)]
        forced = ChatClient(
            ReplayEngine(replies, logprob=0.0), client.tokenizer, sampling=client.sampling
        )
        # The agent resets the env again with the same seed: the same task.
        return await agent.run(env, forced.episode(), seed=seed)
    finally:
        await close_env(env)


async def build_demonstrations(
    env_factory: Callable[[], Any],
    agent: Any,
    client: ChatClient,
    *,
    seeds: Iterable[int],
    min_reward: float = 1.0,
) -> tuple[list[Trajectory], DemonstrationStats]:
    """Play the demonstration of every task seed; keep those that earn ``min_reward``.

    Raises:
        ValueError: when no demonstration earns ``min_reward`` (the env's gold
            answers fail its own reward: nothing would be learned).
    """
    stats = DemonstrationStats()
    kept: list[Trajectory] = []
    for seed in seeds:
        traj = await play_demonstration(env_factory, agent, client, seed)
        if traj.reward >= min_reward:
            kept.append(traj)
        else:
            stats.dropped += 1
    stats.built = len(kept)
    if not kept:
        raise ValueError(
            f"no demonstration earned reward >= {min_reward} ({stats.dropped} played): "
            "the env's gold replies fail its own reward"
        )
    return kept, stats
