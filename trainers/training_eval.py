"""The episode functions of evaluation during training (``eval.every_steps``).

They play through the run's own engine, agent and env resources, so they need
the trainer's components; the measuring itself is ``areal_env.evaluation``.
"""

from __future__ import annotations

from dataclasses import replace

from areal_env.config import EnvConfig, TrainEvalConfig
from areal_env.inference.chat_client import ChatClient, SamplingConfig
from areal_env.rollout.episode import EpisodeFn, make_episode_fn
from areal_env.trainers.build import Components, make_env_factory


def training_eval_episode_fns(
    parts: Components, settings: TrainEvalConfig, env: EnvConfig, sampling: SamplingConfig
) -> tuple[EpisodeFn, EpisodeFn]:
    """``(sampled, greedy)`` episode functions for evaluation during training.

    Both play through the run's own engine, tokenizer, agent and shared env
    resources, so they measure the weights the engine holds now; the sampled one
    uses the run's sampling, the greedy one temperature 0. The env gets
    ``settings.env_kwargs`` over ``env.kwargs`` (a held-out split, if it has one).
    """
    env_factory = parts.env_factory
    if settings.env_kwargs:
        kwargs = {**env.kwargs, **settings.env_kwargs}
        env_factory = make_env_factory(env.id, kwargs, parts.resources)
    greedy = ChatClient(parts.engine, parts.tokenizer, sampling=replace(sampling, temperature=0.0))
    sampled = ChatClient(parts.engine, parts.tokenizer, sampling=sampling)
    return (
        make_episode_fn(env_factory, parts.agent, sampled.episode),
        make_episode_fn(env_factory, parts.agent, greedy.episode),
    )
