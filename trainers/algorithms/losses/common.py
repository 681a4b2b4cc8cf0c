"""Pieces every policy-gradient loss shares: masked inputs, aggregation, KL, metrics.

The losses beside ``ppo_clip.py`` (SAPO, CISPO, M2PO) differ only in the per-token
surrogate; reading the inputs the same way (padding zeroed so -inf never reaches
backward, the ratio taken against the proximal policy when there is one, the
behaviour policy as a detached importance weight) keeps them comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from areal_env.trainers.algorithms.kl import kl_penalty
from areal_env.trainers.algorithms.losses.aggregation import aggregate
from areal_env.trainers.algorithms.losses.base import LossInputs

MAX_LOG_RATIO = 20.0
"""Log ratios are clamped to +-20 so exp() stays finite on wildly stale tokens."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """The masked tensors of one micro-batch, all ``[B, T]``; only ``lp`` has gradient."""

    keep: torch.Tensor
    """Bool: tokens to train."""
    lp: torch.Tensor
    """Current log-probabilities, 0 on padding."""
    behav: torch.Tensor
    """Behaviour (engine) log-probabilities, detached, 0 on padding."""
    prox: torch.Tensor
    """Proximal log-probabilities (the behaviour ones when there is none), detached."""
    adv: torch.Tensor
    """Advantages, detached."""
    weight: torch.Tensor
    """Detached behaviour importance weight ``pi_prox / pi_behav`` (1 without proximal)."""
    log_ratio: torch.Tensor
    """``lp - prox`` clamped to +-20: the log of the ratio the loss optimises."""


def prepare(inputs: LossInputs) -> Prepared:
    """Mask and detach the inputs as every loss needs them."""
    keep = inputs.loss_mask.bool()
    zero = torch.zeros((), dtype=inputs.logprobs.dtype, device=inputs.logprobs.device)
    lp = torch.where(keep, inputs.logprobs, zero)
    behav = torch.where(keep, inputs.behaviour_logprobs.detach(), zero)
    prox = behav if inputs.proximal_logprobs is None else inputs.proximal_logprobs.detach()
    prox = torch.where(keep, prox, zero)
    weight = behaviour_weight(prox, behav, inputs.behaviour_weight_cap)
    log_ratio = (lp - prox).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    adv = inputs.advantages.detach().to(lp.dtype)
    return Prepared(keep, lp, behav, prox, adv, weight, log_ratio)


def behaviour_weight(
    prox: torch.Tensor, behav: torch.Tensor, cap: float | None = None
) -> torch.Tensor:
    """Detached ``pi_prox / pi_behav`` per token, 0 where it exceeds ``cap`` (dropped).

    Decoupled PPO (AReaL) corrects stale samples with this weight; a token whose
    weight is huge was sampled where the behaviour policy put almost no mass that
    the proximal policy now puts much on, and one such token would dominate the
    gradient, so it is dropped instead (``behav_imp_weight_cap`` in AReaL).
    """
    weight = torch.exp((prox - behav).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    if cap is None:
        return weight
    return torch.where(weight > cap, torch.zeros_like(weight), weight)


def aggregator(
    inputs: LossInputs, aggregation: str, max_len: int | None, mask: torch.Tensor | None = None
) -> Callable[..., torch.Tensor]:
    """``agg(values, mode=aggregation)`` over ``mask`` (default: the loss mask).

    The normalisers are always the minibatch-wide counts of the *original* mask, so a
    loss that drops tokens (M2PO, IcePop) still divides by every trained token and
    micro-batch losses keep adding up to the minibatch loss.
    """
    mask = inputs.loss_mask if mask is None else mask

    def agg(values: torch.Tensor, mode: str = aggregation) -> torch.Tensor:
        return aggregate(
            values,
            mask,
            mode,
            max_len=max_len,
            num_tokens=inputs.token_count,
            num_sequences=inputs.sequence_count,
        )

    return agg


def with_kl(
    pg: torch.Tensor, p: Prepared, inputs: LossInputs, kl_coef: float, kl_estimator: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(pg + kl_coef * KL(pi || pi_ref), KL)`` per token; KL is None without a reference."""
    if kl_coef != 0.0 and inputs.ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs ref_logprobs")
    if inputs.ref_logprobs is None:
        return pg, None
    ref = torch.where(p.keep, inputs.ref_logprobs.detach(), torch.zeros_like(p.lp))
    kl = kl_penalty(p.lp, ref, kl_estimator)
    return (pg if kl_coef == 0.0 else pg + kl_coef * kl), kl


def base_stats(
    loss: torch.Tensor,
    pg: torch.Tensor,
    kl: torch.Tensor | None,
    p: Prepared,
    agg: Callable[..., torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The metrics every loss reports, named as ``ppo_clip_loss`` names them."""
    ratio = torch.exp(p.log_ratio)
    return {
        "loss/total": loss,
        "loss/pg": agg(pg),
        "loss/kl_ref": torch.zeros_like(loss) if kl is None else agg(kl),
        "loss/ratio_mean": agg(ratio, "token_mean"),
        "loss/approx_kl_old": agg(kl_penalty(p.behav, p.lp, "k3"), "token_mean"),
    }


def to_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Metrics as python floats with one device-to-host copy."""
    values = torch.stack([v.detach().float() for v in stats.values()]).tolist()
    return dict(zip(stats, values, strict=True))
