"""PPO with a critic: ``python trainers/ppo.py [--config F.yaml] [--resume] [k=v ...]``.

PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347) as in its actor-critic
form: a learned value model ``V`` (``trainers/critic.py``) gives every generated token
an advantage by GAE (Schulman et al. 2016, https://arxiv.org/abs/1506.02438,
``algorithms/gae.py``), the policy takes the clipped surrogate step on it, and the
critic regresses on the GAE returns with PPO's clipped value loss. Each step:

1. The rollout scheduler delivers ``rollout.batch_size`` groups, as for GRPO.
2. The critic scores every row (before either model moves): values ``V_old``.
3. GAE over each row's generated tokens gives per-token advantages and returns
   (``EpisodeBatch.token_advantages``); optionally whitened over the batch.
4. The policy's clipped PPO step (``algorithm.preset=ppo``: ``ppo_clip``, token-mean),
   exactly GRPO's backend step with other advantages.
5. The critic's ``critic.minibatches`` steps on the clipped value loss.
6. New policy weights go to the engine; checkpoints hold the critic beside the policy.

The step loop, warm start, resume and weight sync are ``trainers/grpo.py``'s: this
module only plugs a ``StepHooks`` subclass into it (advantages from the critic, the
critic's update after the policy's, the critic in every checkpoint).

No groups needed: the baseline is the critic's value of each state, not the other
episodes of a task, so ``rollout.n_samples`` may be 1 (more samples per task still
help: more data per prompt).

Where ours departs from the papers:

- Token-level MDP on LLM tokens: a step is a generated token, the reward (the env's
  episode reward) comes on a row's last generated token, prompt and tool-output tokens
  are skipped (the next generated token's value bootstraps across them), and every row
  (sample) of an episode is its own sequence. See ``algorithms/gae.py``.
- The value model is a copy of the policy's transformer taken after the warm start,
  with a zero-initialised scalar head, not a separate network of the paper's control
  tasks; it shares nothing with the policy and has its own AdamW, so there is no joint
  loss and no value coefficient (InstructGPT-style separate critic).
- No per-token KL penalty in the reward (InstructGPT's); a KL to the warm-start model
  can still be added to the policy loss with ``algorithm.kl_coef`` (k3, as in GRPO).
- Advantages are whitened over the batch's tokens by default, returns are not.
- Asynchronous rollouts: with ``max_head_offpolicyness > 0`` the values are computed
  by the current critic on tokens sampled by an older policy, the same staleness the
  policy's clipped ratio already bounds.
- One device only (``train.backend=torch``, no LoRA): the critic is not sharded.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from areal_env.checkpoint import Saveable
from areal_env.config import load_config
from areal_env.trainers import grpo
from areal_env.trainers.algorithms.gae import gae_advantages, whiten
from areal_env.trainers.algorithms.presets import CRITIC_PRESETS
from areal_env.trainers.backends.base import TrainBackend
from areal_env.trainers.backends.ranks import run_on_ranks
from areal_env.trainers.build import Components
from areal_env.trainers.config import AlgorithmConfig, GRPOConfig
from areal_env.trainers.critic import Critic, CriticConfig
from areal_env.types import EpisodeBatch

logger = logging.getLogger("areal_env.ppo")


@dataclass(kw_only=True, slots=True)
class PPOAlgorithmConfig(AlgorithmConfig):
    """The policy loss of PPO: a critic preset plus optional overrides of its choices."""

    preset: str = "ppo"
    """Key of trainers/algorithms/presets.CRITIC_PRESETS."""

    def __post_init__(self) -> None:
        self.check_decoupled()
        if self.preset not in CRITIC_PRESETS:
            raise ValueError(
                f"algorithm.preset must be one of {sorted(CRITIC_PRESETS)} for trainers/ppo.py, "
                f"got {self.preset!r} (critic-free presets run with trainers/grpo.py)"
            )
        try:
            self.resolved()
        except ValueError as e:
            raise ValueError(f"algorithm.{e}") from None


@dataclass(kw_only=True, slots=True)
class PPOConfig(GRPOConfig):
    """Root config of trainers/ppo.py: GRPO's tree plus the critic."""

    output_dir: str = "outputs/ppo"
    """Metrics, plots, checkpoints and the final model go here."""
    algorithm: PPOAlgorithmConfig = field(default_factory=PPOAlgorithmConfig)
    """The policy's loss: preset ppo (clipped surrogate, token-mean) and its overrides."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """The value model and GAE."""

    def __post_init__(self) -> None:
        GRPOConfig.__post_init__(self)
        if self.train.backend != "torch":
            raise ValueError(
                f"train.backend={self.train.backend!r}: trainers/ppo.py runs on one device only "
                "(train.backend=torch); the critic is not sharded with FSDP"
            )
        if self.train.lora.rank > 0:
            raise ValueError(
                "train.lora.rank > 0: trainers/ppo.py does not support LoRA (the critic "
                "copies the full transformer); set train.lora.rank=0"
            )


class _PolicyAndCritic:
    """The backend's checkpoint with the critic's beside it, in ``critic/``."""

    def __init__(self, backend: TrainBackend, critic: Critic) -> None:
        self.backend = backend
        self.critic = critic

    def save(self, path: str) -> None:
        self.backend.save(path)
        self.critic.save(str(Path(path) / "critic"))

    def load(self, path: str) -> None:
        self.backend.load(path)
        self.critic.load(str(Path(path) / "critic"))


class CriticHooks(grpo.StepHooks):
    """GRPO's step loop with a critic: GAE advantages, a value update, critic checkpoints.

    Args:
        config: the critic's settings.
    """

    def __init__(self, config: CriticConfig) -> None:
        self.config = config
        self.critic: Critic | None = None
        self._targets: tuple[EpisodeBatch, list[int], torch.Tensor, torch.Tensor] | None = None

    def setup(self, cfg: GRPOConfig, parts: Components, backend: TrainBackend) -> None:
        """Build the critic from the policy as it is now (warm-started, before resume)."""
        self.critic = Critic(
            parts.policy, self.config, pad_id=parts.tokenizer.pad_token_id, betas=cfg.train.betas
        )

    def _ready(self) -> Critic:
        if self.critic is None:
            raise RuntimeError("CriticHooks.setup() must run before the step loop")
        return self.critic

    def advantages(self, batch: EpisodeBatch, estimator: str) -> EpisodeBatch:
        """Per-token GAE advantages from the critic's values (``estimator`` is ``gae``)."""
        critic = self._ready()
        rows = list(range(len(batch.row_refs())))
        if not rows:
            return batch
        padded = batch.padded(critic.pad_id)
        values = critic.values(batch, rows)
        adv, returns = gae_advantages(
            padded.rewards,
            values,
            padded.loss_mask,
            gamma=self.config.gamma,
            lam=self.config.lam,
        )
        if self.config.whiten_advantages:
            adv = whiten(adv, padded.loss_mask)
        lengths = padded.attention_mask.sum(-1).tolist()
        batch.token_advantages = [adv[i, :n].tolist() for i, n in enumerate(lengths)]
        self._targets = (batch, rows, returns, values)
        return batch

    def after_policy_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """The critic's regression on this batch's returns; its metrics."""
        critic = self._ready()
        if self._targets is None or self._targets[0] is not batch:
            return {}
        _, rows, returns, values = self._targets
        self._targets = None
        stats = critic.train_step(batch, rows, returns, values)
        mask = batch.padded(critic.pad_id).loss_mask.bool()
        ret, val = returns[mask], values[mask]
        var = float(ret.var(unbiased=False)) if ret.numel() else 0.0
        # 1 when V_old explained the returns, 0 when it did no better than their mean.
        explained = 1.0 - float((ret - val).var(unbiased=False)) / var if var > 0 else 0.0
        stats["critic/explained_variance"] = explained
        stats["critic/value_mean"] = float(val.mean()) if val.numel() else 0.0
        stats["critic/return_mean"] = float(ret.mean()) if ret.numel() else 0.0
        return stats

    def checkpointed(self, backend: TrainBackend) -> Saveable:
        """The backend and the critic: checkpoints keep both, resume restores both."""
        return _PolicyAndCritic(backend, self._ready())


def main(argv: list[str] | None = None) -> int:
    """Entry point: config from argv, run GRPO's loop with the critic hooks."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(PPOConfig, argv)
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    final = run_on_ranks(cfg, lambda: asyncio.run(grpo.run(cfg, CriticHooks(cfg.critic))))
    if final is None:
        return 0
    print(f"done: metrics in {Path(cfg.output_dir) / 'metrics.jsonl'}, final model in {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
