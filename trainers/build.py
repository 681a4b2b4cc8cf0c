"""Build the run's components from the config: model, engine, client, env, agent.

Kept apart from the entry points so that grpo.py reads as the algorithm, and so
that other trainers (SFT, PPO) build the same pieces the same way.
"""

from __future__ import annotations

import copy
import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import load_env_creator

import areal_env  # noqa: F401  (registers the areal/* env ids)
from areal_env.agents.base import Agent
from areal_env.agents.registry import make_agent
from areal_env.config import resolve_device
from areal_env.inference.chat_client import ChatClient
from areal_env.inference.engine import InferenceEngine
from areal_env.inference.registry import EngineContext, make_engine
from areal_env.models.load import model_dir
from areal_env.models.tiny import load_model_and_tokenizer
from areal_env.resources import ResourceRegistry
from areal_env.rollout.episode import make_episode_fn
from areal_env.trainers.config import GRPOConfig

POLICY_CLIENT_KEY = "inference/policy_client"
"""Where the run's ``ChatClient`` lies in ``resources``: envs that call the policy's
engine themselves (tau2's ``user={"kind": "llm", "engine": "policy"}``) take it
from there, through ``client.untracked()``, so those calls are never trained."""


@dataclass(kw_only=True, slots=True)
class Components:
    """Everything a trainer step touches."""

    tokenizer: Any
    policy: torch.nn.Module
    engine: InferenceEngine
    client: ChatClient
    env_factory: Callable[[], Any]
    agent: Agent
    episode_fn: Callable[[int, int], Any]
    resources: ResourceRegistry
    """What envs share across episodes (indexes, sandboxes, clients); the run closes it."""
    device: str


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (envs seed their own RNGs per reset)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_env_factory(
    env_id: str, kwargs: dict[str, Any], resources: ResourceRegistry | None = None
) -> Callable[[], Any]:
    """A factory of fresh envs; fails now, not mid-run, on a bad id or kwargs.

    Episodes use the bare env (the scheduler owns time limits and retries), so
    the factory calls the registered entry point directly: ``gym.make`` builds
    and then discards its wrapper stack, a measurable cost at a few hundred
    episodes per step. Envs that take a ``resources`` argument (every
    ``AsyncEnv``) get the run's registry, so they share what is expensive to build.
    """
    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("areal/"))
        raise ValueError(f"env.id {env_id!r} is not registered; areal ids: {known}")
    spec = gym.spec(env_id)
    gym.make(env_id, **kwargs).close()  # gymnasium's own checks of the id and kwargs
    creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
    merged = {**spec.kwargs, **kwargs}
    if resources is not None and _accepts(creator, "resources"):
        merged["resources"] = resources

    def factory() -> Any:
        return creator(**merged)

    return factory


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def build_components(cfg: GRPOConfig) -> Components:
    """Load the model twice (trainer copy and inference copy) and wire the rollout path."""
    device = resolve_device(cfg.model.device)
    path = model_dir(cfg.model, cfg.output_dir)
    policy, tokenizer = load_model_and_tokenizer(path, dtype=cfg.model.dtype, device=device)
    # A local engine gets its own copy: rollouts keep sampling while the trainer
    # steps, and weights move only through update_weights. Servers load ``path``.
    context = EngineContext(
        tokenizer=tokenizer,
        model_path=path,
        output_dir=cfg.output_dir,
        load_model=lambda: copy.deepcopy(policy).eval(),
        lora_rank=cfg.train.lora.rank,
    )
    engine = make_engine(cfg.inference, context)
    client = ChatClient(engine, tokenizer, sampling=cfg.inference.sampling)
    resources = ResourceRegistry(name="run")
    resources.get(POLICY_CLIENT_KEY, lambda: client)
    env_factory = make_env_factory(cfg.env.id, dict(cfg.env.kwargs), resources)
    agent = make_agent(cfg.agent.name, **cfg.agent.kwargs)
    return Components(
        tokenizer=tokenizer,
        policy=policy,
        engine=engine,
        client=client,
        env_factory=env_factory,
        agent=agent,
        episode_fn=make_episode_fn(env_factory, agent, client.episode),
        resources=resources,
        device=device,
    )
