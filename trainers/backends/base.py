"""The TrainBackend protocol and the shared token-logprob computation.

A backend owns the trainable model and its optimizer on some device layout
(one device, FSDP2 shards, Megatron). The trainer only sees this surface.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from areal_env.trainers.algorithms.losses.base import LossFn, LossInputs
from areal_env.trainers.backends.fsdp_config import FSDPConfig
from areal_env.trainers.backends.lora import LoRAConfig
from areal_env.trainers.backends.megatron_config import MegatronConfig
from areal_env.types import EpisodeBatch, PaddedBatch

BACKENDS = ("torch", "fsdp", "megatron")
"""Valid values of ``train.backend``."""


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """Optimisation settings shared by every backend."""

    backend: str = "torch"
    """Which backend trains the model: one of BACKENDS."""
    steps: int = 100
    """Number of RL training steps (weight versions to produce)."""
    lr: float = 5e-4
    """Peak AdamW learning rate."""
    warmup_steps: int = 20
    """Linear learning-rate warm-up, in optimizer steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    ppo_minibatches: int = 2
    """Optimizer steps per batch: the trained rows are split into this many minibatches."""
    micro_batch_size: int = 256
    """Rows per forward/backward pass; gradients accumulate across micro-batches."""
    share_prompt_prefix: bool = True
    """Run a group's common prompt once per forward and reuse its KV cache for every
    sample (same logits and gradients as the plain forward, fewer FLOPs)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters instead of full fine-tuning (rank 0, the default, is off)."""
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    """FSDP2 options, read when ``backend`` is fsdp."""
    megatron: MegatronConfig = field(default_factory=MegatronConfig)
    """Megatron-core tensor/pipeline-parallel options, read when ``backend`` is megatron."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"train.backend must be one of {BACKENDS}, got {self.backend!r}")
        for key in ("steps", "ppo_minibatches", "micro_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")


@runtime_checkable
class TrainBackend(Protocol):
    """What the trainer needs from a model + optimizer holder."""

    def train_step(self, batch: EpisodeBatch, loss_fn: LossFn, rows: list[int]) -> dict[str, float]:
        """One PPO-style update on ``rows`` (indices into ``batch.row_refs()``); metrics."""
        ...

    def weights_for_sync(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) state dict to push to in-process inference engines."""
        ...

    def save_weights(self, path: str) -> None:
        """Write the policy's full weights in HF format under ``path`` (for servers)."""
        ...

    def save(self, path: str) -> None:
        """Write model (HF format) and optimizer state under ``path``."""
        ...

    def load(self, path: str) -> None:
        """Restore what :meth:`save` wrote."""
        ...


def make_optimizer(
    params: Iterable[torch.nn.Parameter], config: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over ``params`` and its linear warm-up schedule, as every backend uses them."""
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    warm = max(config.warmup_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
    return optimizer, schedule


def needs_proximal_logprobs(loss_fn: LossFn) -> bool:
    """True when ``loss_fn`` needs the backend to compute the proximal logprobs.

    Decoupled PPO with ``proximal_policy=recompute``: the policy's own logprobs
    before this step's first update, from a no-grad pass.
    """
    return bool(getattr(loss_fn, "needs_proximal_logprobs", False))


def _scaled_log_softmax(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits[:, :-1] / T)`` with T a float or one value per row ``[B]``."""
    t = torch.as_tensor(temperature, dtype=torch.float32, device=logits.device)
    t = torch.where(t > 0, t, torch.ones_like(t))  # greedy (T=0) is scored at 1
    if t.dim() == 1:
        t = t.view(-1, 1, 1)
    return torch.log_softmax(logits[:, :-1].float() / t, dim=-1)


def gather_token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """Logprob of each token under the model's prediction from the previous position.

    Args:
        logits: [B, L, V] model outputs.
        input_ids: [B, L] the tokens.
        temperature: the temperature each row was sampled at: a float, or [B] (a
            row of 0, greedy, is scored at 1).

    Returns:
        [B, L] with 0 at position 0 (nothing predicts the first token).
    """
    logp = _scaled_log_softmax(logits, temperature)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(picked, (1, 0), value=0.0)


def masked_entropy_sum(
    logits: torch.Tensor, mask: torch.Tensor, temperature: float | torch.Tensor
) -> float:
    """Summed entropy of the sampling distribution at the generated positions.

    Args:
        logits: [B, L, V]; position t-1 predicts token t.
        mask: [B, L] 1 on generated tokens.
        temperature: as in :func:`gather_token_logprobs`.

    Returns:
        The entropy in nats summed over masked tokens; divide by the token count.
        A falling entropy is RL sharpening the policy; a rising one often means
        negative advantages are spreading probability onto junk tokens.
    """
    with torch.no_grad():
        logp = _scaled_log_softmax(logits, temperature)
        ent = -(logp.exp() * logp).sum(-1)
        return float((ent * mask[:, 1:].to(ent.device)).sum())


def micro_batch_inputs(
    padded: PaddedBatch,
    part: slice | torch.Tensor,
    logits: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None,
    num_tokens: float,
    num_sequences: float,
    device: torch.device,
    proximal_logprobs: torch.Tensor | None = None,
) -> LossInputs:
    """The loss inputs of rows ``part`` of ``padded`` scored by ``logits`` (with gradient).

    Every backend builds them the same way: position ``t`` scores token ``t`` at the
    temperature its row was sampled with; the normalisers are the whole minibatch's.
    """
    ids = padded.input_ids[part].to(device)
    temps = padded.temperatures[part].to(device)
    return LossInputs(
        logprobs=gather_token_logprobs(logits, ids, temps),
        behaviour_logprobs=padded.logprobs[part].to(device),
        advantages=padded.advantages[part].to(device),
        loss_mask=padded.loss_mask[part].to(device),
        ref_logprobs=None if ref_logprobs is None else ref_logprobs[part].to(device),
        proximal_logprobs=(
            None if proximal_logprobs is None else proximal_logprobs[part].to(device)
        ),
        versions=padded.versions[part].to(device),
        num_tokens=num_tokens,
        num_sequences=num_sequences,
    )
