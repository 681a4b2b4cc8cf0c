"""Supervised warm start on an env's reference answers, stopped on sampled accuracy.

RL from a randomly initialised model has no signal: every group is all-zero.
We first fine-tune on demonstrations (the env's prompt + its ``info["answer"]``
as the assistant reply, loss on the reply tokens only) and stop as soon as
the accuracy of *sampled* answers, measured through the real rollout path
(engine -> client -> agent -> env reward), reaches a target. Stopping on an
accuracy target rather than a step count leaves mostly mixed groups, which is
where group-relative RL learns fastest.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

import torch

from areal_env.progress import progress_bar
from areal_env.rollout.episode import close_env
from areal_env.trainers.algorithms.losses.nll import nll_loss
from areal_env.trainers.backends.base import TrainConfig
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.trainers.config import WarmStartConfig
from areal_env.trainers.weight_sync import push_weights
from areal_env.types import EpisodeBatch, Sample, Trajectory

logger = logging.getLogger(__name__)

DEMO_SEED_OFFSET = 10_000_000
"""Demonstration tasks are drawn from seeds above this, away from RL task seeds."""
EVAL_SEED_OFFSET = 20_000_000
"""Accuracy checks use their own seeds so they measure generalisation."""


@dataclass(kw_only=True, slots=True)
class WarmStartResult:
    """What the warm start did."""

    steps: int
    """SFT steps taken."""
    accuracy: float
    """Last measured sampled accuracy."""
    reached_target: bool
    """Whether accuracy reached the target before max_steps."""


async def demonstrations(env_factory: Any, client: Any, n: int) -> list[Trajectory]:
    """``n`` prompt + reference-answer sequences built through the chat template."""
    tok = client.tokenizer
    demos = []
    for i in range(n):
        env = env_factory()
        obs, info = await env.areset(seed=DEMO_SEED_OFFSET + i)
        await close_env(env)
        if "answer" not in info:
            raise ValueError("warm_start needs an env whose reset info has an 'answer'")
        sample = Sample()
        sample.append_prompt(
            client.encode(client.render(list(obs), env.tools, generation_prompt=True))
        )
        reply = client.encode(str(info["answer"])) + [tok.eos_token_id]
        sample.input_ids.extend(reply)
        sample.loss_mask.extend([1] * len(reply))
        sample.logprobs.extend([0.0] * len(reply))
        sample.versions.extend([0] * len(reply))
        demos.append(Trajectory(samples=[sample]))
    return demos


async def sampled_accuracy(episode_fn: Any, n: int) -> float:
    """Mean reward of ``n`` fresh episodes on held-out task seeds."""
    trajs = await asyncio.gather(*(episode_fn(EVAL_SEED_OFFSET + i, 0) for i in range(n)))
    return sum(t.reward for t in trajs) / n


async def warm_start(
    cfg: WarmStartConfig,
    model: torch.nn.Module,
    *,
    engine: Any,
    client: Any,
    env_factory: Any,
    episode_fn: Any,
    seed: int,
    progress: bool = True,
) -> WarmStartResult:
    """Fine-tune ``model`` in place until sampled accuracy reaches the target."""
    sft = TorchBackend(
        model,
        TrainConfig(
            lr=cfg.lr,
            warmup_steps=cfg.warmup_steps,
            ppo_minibatches=1,
            micro_batch_size=cfg.batch_size,
        ),
        pad_id=client.tokenizer.pad_token_id,
    )
    pool = await demonstrations(env_factory, client, cfg.num_demos)
    rng = random.Random(seed)
    accuracy, step = 0.0, 0
    bar = progress_bar(total=cfg.max_steps, desc="warm start", enabled=progress)
    try:
        while step < cfg.max_steps:
            batch = EpisodeBatch(groups=[rng.sample(pool, min(cfg.batch_size, len(pool)))])
            rows = list(range(len(batch)))
            stats = await asyncio.to_thread(sft.train_step, batch, nll_loss, rows)
            step += 1
            bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                await push_weights(sft, engine, None, version=engine.version)
                accuracy = await sampled_accuracy(episode_fn, cfg.eval_episodes)
                bar.set_postfix(
                    nll=f"{stats['sft/nll']:.3f}", accuracy=f"{accuracy:.3f}", refresh=False
                )
                logger.info(
                    "warm start step %d: nll %.3f sampled accuracy %.3f",
                    step,
                    stats["sft/nll"],
                    accuracy,
                )
                if accuracy >= cfg.target_accuracy:
                    return WarmStartResult(steps=step, accuracy=accuracy, reached_target=True)
    finally:
        bar.close()
    return WarmStartResult(steps=step, accuracy=accuracy, reached_target=False)
