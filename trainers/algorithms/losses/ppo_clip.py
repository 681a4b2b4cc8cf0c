"""Token-level PPO clipped surrogate, with clip-higher, dual-clip and a reference KL.

The problem: episodes are sampled by an older policy ``pi_old``, and an unconstrained
importance-weighted policy gradient lets one update push the new policy far from it,
where the sampled advantages no longer say anything. PPO (Schulman et al. 2017,
https://arxiv.org/abs/1707.06347) clips the ratio ``r = pi / pi_old`` so a token
stops pulling once it has moved ``clip`` away. Three refinements used for LLMs:

- Clip-higher (DAPO, Yu et al. 2025, https://arxiv.org/abs/2503.14476): a separate,
  larger ``clip_high`` lets low-probability tokens with positive advantage grow, which
  slows entropy collapse.
- Dual-clip (Ye et al. 2020, https://arxiv.org/abs/1912.09729): for negative
  advantages the clipped objective is unbounded in ``r``; capping the loss at
  ``-c * A`` keeps very stale tokens (common in asynchronous RL) from dominating.
- KL to a reference model added per token (GRPO, Shao et al. 2024,
  https://arxiv.org/abs/2402.03300), estimated as in ``trainers/algorithms/kl.py``.
"""

from __future__ import annotations

import torch

from areal_env.trainers.algorithms.kl import KL_ESTIMATORS, kl_penalty
from areal_env.trainers.algorithms.losses.aggregation import aggregate

_MAX_LOG_RATIO = 20.0


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    dual_clip_c: float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss, aggregated over masked tokens.

    Per token, with ``r = exp(logprobs - old_logprobs)`` and advantage ``A``::

        pg = max(-A * r, -A * clamp(r, 1 - clip_low, 1 + clip_high))
        pg = min(pg, -A * dual_clip_c)         where A < 0, if dual_clip_c is set
        loss_t = pg + kl_coef * KL(pi || pi_ref)

    and the loss is ``aggregate(loss_t, mask, aggregation)``. Clipped tokens get no
    gradient from ``pg``.

    Args:
        logprobs: [B, T] log-probabilities of the sampled tokens under the current
            policy; the only input that carries gradient.
        old_logprobs: [B, T] the same under the policy that sampled them.
        advantages: [B] one per sequence (broadcast over tokens) or [B, T].
        mask: [B, T] 1 on tokens to train, 0 on prompt and padding.
        clip_low: ratio lower bound is ``1 - clip_low``.
        clip_high: ratio upper bound is ``1 + clip_high`` (DAPO uses 0.28).
        aggregation: a mode of ``aggregation.AGGREGATIONS``.
        ref_logprobs: [B, T] the same under the reference model; needed when
            ``kl_coef != 0``, and reported as ``loss/kl_ref`` whenever given.
        kl_coef: weight of the per-token KL penalty.
        kl_estimator: one of ``kl.KL_ESTIMATORS``.
        dual_clip_c: dual-clip constant, > 1; None disables dual-clip.
        max_len: constant divisor for ``seq_mean_token_sum_norm``.

    Returns:
        ([] loss, metrics), metrics being python floats: ``loss/total``, ``loss/pg``
        and ``loss/kl_ref`` (aggregated like the loss, so total = pg + kl_coef * kl_ref),
        and token means ``loss/clip_frac``, ``loss/dual_clip_frac``, ``loss/ratio_mean``,
        ``loss/approx_kl_old`` (k3 estimate of KL(pi_old || pi)).

    Raises:
        ValueError: on bad shapes, names or clip values.
    """
    advantages = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    _check_inputs(logprobs, old_logprobs, advantages, clip_low, clip_high, dual_clip_c)
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kl_estimator!r}; valid: {list(KL_ESTIMATORS)}")
    if kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs ref_logprobs")

    keep = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Padding may hold -inf or garbage logprobs; zeroing it keeps forward and backward finite.
    lp = torch.where(keep, logprobs, zero)
    old = torch.where(keep, old_logprobs.detach(), zero)
    adv = advantages.detach().to(logprobs.dtype).expand_as(logprobs)

    ratio = torch.exp((lp - old).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    is_clipped = pg_clipped > pg_unclipped
    pg = torch.where(is_clipped, pg_clipped, pg_unclipped)
    is_dual = torch.zeros_like(keep)
    if dual_clip_c is not None:
        bound = -adv * dual_clip_c
        is_dual = (adv < 0) & (pg > bound)
        pg = torch.where(is_dual, bound, pg)

    kl_ref = None
    if ref_logprobs is not None:
        ref = torch.where(keep, ref_logprobs.detach(), zero)
        kl_ref = kl_penalty(lp, ref, kl_estimator)
    per_token = pg if kl_coef == 0.0 else pg + kl_coef * kl_ref
    loss = aggregate(per_token, mask, aggregation, max_len=max_len)

    with torch.no_grad():
        stats = {
            "loss/total": loss,
            "loss/pg": aggregate(pg, mask, aggregation, max_len=max_len),
            "loss/kl_ref": (
                zero if kl_ref is None else aggregate(kl_ref, mask, aggregation, max_len=max_len)
            ),
            "loss/clip_frac": aggregate(is_clipped.to(zero.dtype), mask, "token_mean"),
            "loss/dual_clip_frac": aggregate(is_dual.to(zero.dtype), mask, "token_mean"),
            "loss/ratio_mean": aggregate(ratio, mask, "token_mean"),
            "loss/approx_kl_old": aggregate(kl_penalty(old, lp, "k3"), mask, "token_mean"),
        }
        # One device-to-host copy for all metrics instead of one sync per .item().
        values = torch.stack([v.detach().float() for v in stats.values()]).tolist()
    return loss, dict(zip(stats, values, strict=True))


def _check_inputs(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip_c: float | None,
) -> None:
    if logprobs.dim() != 2 or old_logprobs.shape != logprobs.shape:
        raise ValueError(
            f"logprobs and old_logprobs must both be [B, T], got {tuple(logprobs.shape)} "
            f"and {tuple(old_logprobs.shape)}"
        )
    if advantages.shape not in (logprobs.shape, (logprobs.shape[0], 1)):
        raise ValueError(f"advantages must be [B] or [B, T], got {tuple(advantages.shape)}")
    if not (0.0 <= clip_low < 1.0 and clip_high >= 0.0):
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
