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

Two choices of the importance ratio, named by the preset:

- ``ratio_level="token"``: ``r_t = pi(y_t) / pi_old(y_t)`` per token (PPO, GRPO).
- ``ratio_level="sequence"``: every token of a row gets the row's length-normalised
  sequence ratio ``exp(mean_t log r_t)`` as its value, with the gradient of its own
  token (GSPO, Zheng et al. 2025, https://arxiv.org/abs/2507.18071, the GSPO-token
  form), so one outlier token cannot be clipped alone.

With ``proximal_logprobs`` (decoupled PPO, AReaL: Fu et al. 2025,
https://arxiv.org/abs/2505.24298) the ratio is taken against the proximal policy
and the behaviour policy that sampled the tokens enters only as the detached
importance weight ``pi_prox / pi_behav``.
"""

from __future__ import annotations

import torch

from areal_env.trainers.algorithms.kl import KL_ESTIMATORS, kl_penalty
from areal_env.trainers.algorithms.losses.aggregation import AGGREGATIONS, aggregate
from areal_env.trainers.algorithms.losses.base import LossInputs
from areal_env.trainers.algorithms.losses.common import MAX_LOG_RATIO, prepare

RATIO_LEVELS = ("token", "sequence")
"""Valid ``ratio_level`` values."""


def ppo_clip_loss(
    inputs: LossInputs,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    ratio_level: str = "token",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    dual_clip_c: float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss, aggregated over masked tokens.

    Per token, with ``r`` the ratio of the current policy to the proximal one
    (the behaviour policy unless ``inputs.proximal_logprobs`` is set), ``w`` the
    detached behaviour importance weight (1 without a proximal policy) and
    advantage ``A``::

        pg = w * max(-A * r, -A * clamp(r, 1 - clip_low, 1 + clip_high))
        pg = min(pg, -w * A * dual_clip_c)     where A < 0, if dual_clip_c is set
        loss_t = pg + kl_coef * KL(pi || pi_ref)

    and the loss is ``aggregate(loss_t, mask, aggregation)`` with the minibatch-wide
    counts of ``inputs``. Clipped tokens get no gradient from ``pg``.

    Args:
        inputs: the micro-batch (see ``LossInputs``).
        clip_low: ratio lower bound is ``1 - clip_low``.
        clip_high: ratio upper bound is ``1 + clip_high`` (DAPO uses 0.28).
        aggregation: a mode of ``aggregation.AGGREGATIONS``.
        ratio_level: ``"token"`` or ``"sequence"`` (GSPO).
        kl_coef: weight of the per-token KL penalty; needs ``inputs.ref_logprobs``.
        kl_estimator: one of ``kl.KL_ESTIMATORS``.
        dual_clip_c: dual-clip constant, > 1; None disables dual-clip.
        max_len: constant divisor of ``seq_mean_token_sum_norm`` (the token budget).

    Returns:
        ([] loss, metrics), metrics being python floats normalised like the loss:
        ``loss/total``, ``loss/pg`` and ``loss/kl_ref`` (total = pg + kl_coef * kl_ref),
        and token means ``loss/clip_frac``, ``loss/dual_clip_frac``, ``loss/ratio_mean``,
        ``loss/approx_kl_old`` (k3 estimate of KL(pi_behav || pi)).

    Raises:
        ValueError: on bad shapes, names or clip values.
    """
    check_ppo_choices(clip_low, clip_high, aggregation, ratio_level, kl_coef, kl_estimator)
    _check_inputs(inputs, dual_clip_c)
    if kl_coef != 0.0 and inputs.ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs ref_logprobs")
    mask = inputs.loss_mask
    # Padding may hold -inf or garbage logprobs; prepare() zeroes it so backward stays finite.
    p = prepare(inputs)
    keep, lp, behav, prox, adv, weight = p.keep, p.lp, p.behav, p.prox, p.adv, p.weight
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)

    ratio = _ratio(lp, prox, keep, ratio_level)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    is_clipped = pg_clipped > pg_unclipped
    pg = torch.where(is_clipped, pg_clipped, pg_unclipped)
    is_dual = torch.zeros_like(keep)
    if dual_clip_c is not None:
        bound = -adv * dual_clip_c
        is_dual = (adv < 0) & (pg > bound)
        pg = torch.where(is_dual, bound, pg)
    pg = weight * pg

    kl_ref = None
    if inputs.ref_logprobs is not None:
        ref = torch.where(keep, inputs.ref_logprobs.detach(), zero)
        kl_ref = kl_penalty(lp, ref, kl_estimator)
    per_token = pg if kl_coef == 0.0 else pg + kl_coef * kl_ref

    def agg(values: torch.Tensor, mode: str = aggregation) -> torch.Tensor:
        return aggregate(
            values,
            mask,
            mode,
            max_len=max_len,
            num_tokens=inputs.num_tokens,
            num_sequences=inputs.num_sequences,
        )

    loss = agg(per_token)
    with torch.no_grad():
        stats = {
            "loss/total": loss,
            "loss/pg": agg(pg),
            "loss/kl_ref": zero if kl_ref is None else agg(kl_ref),
            "loss/clip_frac": agg(is_clipped.to(zero.dtype), "token_mean"),
            "loss/dual_clip_frac": agg(is_dual.to(zero.dtype), "token_mean"),
            "loss/ratio_mean": agg(ratio, "token_mean"),
            "loss/approx_kl_old": agg(kl_penalty(behav, lp, "k3"), "token_mean"),
        }
        # One device-to-host copy for all metrics instead of one sync per .item().
        values = torch.stack([v.detach().float() for v in stats.values()]).tolist()
    return loss, dict(zip(stats, values, strict=True))


def _ratio(lp: torch.Tensor, old: torch.Tensor, keep: torch.Tensor, level: str) -> torch.Tensor:
    log_ratio = (lp - old).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    if level == "token":
        return torch.exp(log_ratio)
    # GSPO-token: value exp(mean log ratio of the row), gradient through each token.
    counts = keep.sum(-1, keepdim=True).clamp(min=1)
    seq = torch.where(keep, log_ratio, torch.zeros_like(log_ratio)).sum(-1, keepdim=True) / counts
    return torch.exp(seq.detach() + lp - lp.detach())


def check_ppo_choices(
    clip_low: float,
    clip_high: float,
    aggregation: str,
    ratio_level: str,
    kl_coef: float,
    kl_estimator: str,
) -> None:
    """Raise ValueError naming the first invalid choice (shared with config validation)."""
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low}")
    if clip_high < 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
    if kl_coef < 0.0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {list(KL_ESTIMATORS)}, got {kl_estimator!r}")


def _check_inputs(inputs: LossInputs, dual_clip_c: float | None) -> None:
    shape = inputs.logprobs.shape
    named = {
        "behaviour_logprobs": inputs.behaviour_logprobs,
        "advantages": inputs.advantages,
        "loss_mask": inputs.loss_mask,
        "proximal_logprobs": inputs.proximal_logprobs,
        "ref_logprobs": inputs.ref_logprobs,
    }
    if inputs.logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got {tuple(shape)}")
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != shape:
            raise ValueError(f"{name} must be [B, T] = {tuple(shape)}, got {tuple(tensor.shape)}")
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
