"""IcePop: drop the tokens on which the trainer and the inference engine disagree.

The problem: the engine that samples (vLLM/SGLang kernels, another precision, MoE
routing) and the trainer compute different probabilities for the same policy. The
mismatch compounds over long rollouts and, on MoE models, collapses training. IcePop
(Ling Team, "Every Step Evolves" / Ring-1T, 2025, https://arxiv.org/abs/2510.18855)
keeps the train/inference ratio ``k = pi_train / pi_infer`` as an importance weight
where it is moderate and masks the token where it is not:

    M(k) = k if alpha <= k <= beta else 0,    loss_t = M(k_t) * ppo_clip_t

with ``alpha = 0.5, beta = 5`` in the paper. It is the ``rejection_sampling`` with
``action=mask, metric=ratio, level=token`` of AReaL.

Where ours departs: ``pi_train`` is the proximal policy when the trainer passes one
(as AReaL, which needs its decoupled loss for this); otherwise the current policy,
detached. Each row is trained once per step here, so that *is* the trainer's
probability of the sampled token, and the PPO ratio against it is 1 in value: the
clip does not act and the loss is IcePop's masked, ``k``-weighted policy gradient.
Masked tokens still count in the normaliser.
"""

from __future__ import annotations

import dataclasses

import torch

from areal_env.trainers.algorithms.losses.base import LossInputs
from areal_env.trainers.algorithms.losses.common import MAX_LOG_RATIO, aggregator
from areal_env.trainers.algorithms.losses.ppo_clip import ppo_clip_loss


def icepop_loss(
    inputs: LossInputs,
    *,
    icepop_low: float = 0.5,
    icepop_high: float = 5.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clip loss on the tokens whose train/inference ratio is in ``[low, high]``.

    Args:
        inputs: the micro-batch (see ``LossInputs``).
        icepop_low: ``alpha``, the lowest kept ratio ``pi_train / pi_infer`` (>= 0).
        icepop_high: ``beta``, the highest kept ratio (> ``icepop_low``).
        clip_low: as in ``ppo_clip_loss``.
        clip_high: as in ``ppo_clip_loss``.
        aggregation: as in ``ppo_clip_loss``.
        kl_coef: as in ``ppo_clip_loss``.
        kl_estimator: as in ``ppo_clip_loss``.
        max_len: as in ``ppo_clip_loss``.

    Returns:
        ([] loss, metrics): those of ``ppo_clip_loss`` plus ``loss/icepop_masked_frac``,
        the fraction of trained tokens masked.
    """
    if not 0.0 <= icepop_low < icepop_high:
        raise ValueError(f"need 0 <= icepop_low < icepop_high, got {icepop_low}, {icepop_high}")
    keep = inputs.loss_mask.bool()
    train = inputs.logprobs if inputs.proximal_logprobs is None else inputs.proximal_logprobs
    log_k = (train.detach() - inputs.behaviour_logprobs.detach()).clamp(
        -MAX_LOG_RATIO, MAX_LOG_RATIO
    )
    k = torch.where(keep, torch.exp(log_k), torch.ones_like(log_k))
    kept = keep & (k >= icepop_low) & (k <= icepop_high)
    masked = dataclasses.replace(
        inputs,
        loss_mask=kept.to(inputs.loss_mask.dtype),
        proximal_logprobs=train.detach(),
        num_tokens=inputs.token_count,
        num_sequences=inputs.sequence_count,
    )
    loss, metrics = ppo_clip_loss(
        masked,
        clip_low=clip_low,
        clip_high=clip_high,
        aggregation=aggregation,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        max_len=max_len,
    )
    dropped = (keep & ~kept).to(inputs.logprobs.dtype)
    frac = aggregator(inputs, "token_mean", max_len)(dropped)
    metrics["loss/icepop_masked_frac"] = float(frac)
    return loss, metrics
