"""Supervised warm start on an env's reference answers, stopped on sampled accuracy.

RL from a randomly initialised model has no signal: every group is all-zero.
We first fine-tune on demonstrations (gold episodes played through the real
agent, chat client and env by teacher forcing: ``env.demonstration()``, else the
reset ``info["answer"]`` as the reply; loss on the assistant's tokens only, so
a search demonstration trains the tool call and the answer, not the passages the
tool returned) and stop as soon as
the accuracy of *sampled* answers, measured through the real rollout path
(engine -> client -> agent -> env reward), reaches a target. Stopping on an
accuracy target rather than a step count leaves mostly mixed groups, which is
where group-relative RL learns fastest.

Each step is :func:`areal_env.trainers.sft.sft_step`, the update of
``trainers/sft.py``: chat SFT and the warm start train the same way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from areal_env.progress import progress_bar
from areal_env.rollout.demonstrations import build_demonstrations
from areal_env.rollout.episode import run_with_retries
from areal_env.rollout.seeding import episode_seed, mix
from areal_env.trainers.backends.base import TrainConfig
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.trainers.config import WarmStartConfig
from areal_env.trainers.sft import sft_step
from areal_env.trainers.weight_sync import push_weights

logger = logging.getLogger(__name__)

DEMO_SEED_OFFSET = 10_000_000
"""Demonstration tasks are drawn from seeds above this, away from RL task seeds."""
EVAL_SEED_OFFSET = 20_000_000
"""Accuracy checks use their own seeds so they measure generalisation."""


class TargetCheck:
    """Whether the mean of the last ``window`` accuracy checks has reached ``target``.

    One check is a noisy estimate, and stopping at the first one over the target
    picks lucky ones; a mean over a few checks stops nearer the true accuracy.

    Example:
        >>> check = TargetCheck(0.2, window=2)
        >>> check.add(0.25), check.add(0.1), check.add(0.35), round(check.mean, 3)
        (False, False, True, 0.225)
    """

    def __init__(self, target: float, window: int) -> None:
        if window < 1:
            raise ValueError(f"warm_start.accuracy_window must be >= 1, got {window}")
        self.target = target
        self.recent: deque[float] = deque(maxlen=window)

    @property
    def mean(self) -> float:
        """Mean of the checks in the window (0 before the first)."""
        return sum(self.recent) / len(self.recent) if self.recent else 0.0

    def add(self, accuracy: float) -> bool:
        """Record a check; True once a full window's mean reaches the target."""
        self.recent.append(accuracy)
        return len(self.recent) == self.recent.maxlen and self.mean >= self.target


@dataclass(kw_only=True, slots=True)
class WarmStartResult:
    """What the warm start did."""

    steps: int
    """SFT steps taken."""
    accuracy: float
    """Last measured sampled accuracy."""
    reached_target: bool
    """Whether accuracy reached the target before max_steps."""


async def sampled_accuracy(episode_fn: Any, n: int) -> float:
    """Mean reward of ``n`` fresh episodes on held-out task seeds.

    An episode that fails (a tool call the model garbled so badly that a wrapped
    agent's framework gives up, a timeout) counts as reward 0, as an unscored
    episode would: a failure stays in its episode and never ends the warm start.
    Each episode samples with its own seed (the same at every check), so the check
    does not depend on timing and two checks differ only by the weights.
    """

    async def seeded(i: int) -> Any:
        with episode_seed(mix(EVAL_SEED_OFFSET, i)):
            attempt = functools.partial(episode_fn, EVAL_SEED_OFFSET + i, 0)
            return await run_with_retries(attempt, max_retries=0)

    outcomes = await asyncio.gather(*(seeded(i) for i in range(n)))
    failed = sum(not o.ok for o in outcomes)
    if failed:
        logger.info("warm start accuracy check: %d of %d episodes failed (counted 0)", failed, n)
    return sum(o.trajectory.reward for o in outcomes if o.trajectory is not None) / n


WARM_STARTED_BASE = "warm_start_model"
"""Folder under ``output_dir`` that keeps the warm-started model of a LoRA run."""


def save_warm_started_base(model: torch.nn.Module, output_dir: str | Path) -> Path:
    """Keep the warm-started weights: a LoRA checkpoint holds adapters only.

    On resume the warm start is skipped, so the adapters of the checkpoint need
    this base back under them (the backend checks its fingerprint).
    """
    from safetensors.torch import save_file

    folder = Path(output_dir) / WARM_STARTED_BASE
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(_untied(state), str(folder / "model.safetensors"))
    return folder


def restore_warm_started_base(model: torch.nn.Module, output_dir: str | Path) -> bool:
    """Load the weights :func:`save_warm_started_base` kept, if any; True when loaded."""
    from safetensors.torch import load_file

    file = Path(output_dir) / WARM_STARTED_BASE / "model.safetensors"
    if not file.exists():
        return False
    device = next(model.parameters()).device
    state = load_file(str(file), device=str(device))
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k not in _aliases(model) for k in missing):
        raise ValueError(
            f"{file} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return True


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One name per tensor: safetensors refuses shared storage."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            out[name] = tensor
    return out


def _aliases(model: torch.nn.Module) -> set[str]:
    """Names that alias another parameter's storage (tied weights), safe to skip."""
    first: dict[int, str] = {}
    aliases = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in first:
            aliases.add(name)
        else:
            first[tensor.data_ptr()] = name
    return aliases


async def warm_start(
    cfg: WarmStartConfig,
    model: torch.nn.Module,
    *,
    engine: Any,
    client: Any,
    env_factory: Any,
    agent: Any,
    episode_fn: Any,
    seed: int,
    progress: bool = True,
    weights_dir: str | Path | None = None,
) -> WarmStartResult:
    """Fine-tune ``model`` in place until sampled accuracy reaches the target.

    ``weights_dir``: where pushes to an engine that loads from disk (a server) go.
    """
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
    seeds = range(DEMO_SEED_OFFSET, DEMO_SEED_OFFSET + cfg.num_demos)
    pool, built = await build_demonstrations(env_factory, agent, client, seeds=seeds)
    if built.dropped:
        logger.warning(
            "warm start: %d of %d demonstrations missed their reward and were dropped",
            built.dropped,
            cfg.num_demos,
        )
    rng = random.Random(seed)
    accuracy, step = 0.0, 0
    check = TargetCheck(cfg.target_accuracy, cfg.accuracy_window)
    bar = progress_bar(total=cfg.max_steps, desc="warm start", enabled=progress)
    try:
        while step < cfg.max_steps:
            demos = rng.sample(pool, min(cfg.batch_size, len(pool)))
            stats = await asyncio.to_thread(sft_step, sft, demos)
            step += 1
            bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                await push_weights(
                    sft, engine, None, version=engine.version, weights_dir=weights_dir
                )
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
                if check.add(accuracy):
                    return WarmStartResult(steps=step, accuracy=check.mean, reached_target=True)
    finally:
        bar.close()
    return WarmStartResult(steps=step, accuracy=accuracy, reached_target=False)
