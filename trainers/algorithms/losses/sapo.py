"""SAPO: a smooth, sign-dependent sigmoid gate instead of PPO's hard clip.

The problem: PPO's clip is a cliff. A token just inside the range gets its full
gradient, one just outside gets none, so a few noisy ratios switch gradients on and
off, and a sequence-level clip (GSPO) throws away a whole answer for one bad token.
SAPO (Soft Adaptive Policy Optimization, Gao et al. 2025,
https://arxiv.org/abs/2511.20347) replaces the clipped surrogate by

    f(r) = (4 / tau) * sigmoid(tau * (r - 1)),    loss_t = -w * A * f(r_t)

whose gradient is ``-w * A * 4 p (1 - p) * r * grad log pi`` with ``p = sigmoid(tau(r-1))``:
exactly the policy gradient at ``r = 1`` (``4 p (1 - p) = 1``) and fading smoothly as the
ratio drifts. ``tau`` is ``tau_neg`` for ``A <= 0`` and ``tau_pos`` for ``A > 0``; the paper
makes the negative gate sharper (1.05 vs 1.0) because pushing down a token spreads its
mass over the whole vocabulary and destabilises faster than pushing one up.

Where ours departs: the paper and AReaL refuse a proximal policy (AReaL raises
with ``use_decoupled_loss``); we take the ratio against it and weight by
``w = pi_prox / pi_behav`` exactly as ``ppo_clip_loss`` does, so the preset keeps
working once the trainer passes proximal log-probabilities. Without one, ``w = 1``
and this is the paper's token-level SAPO.
"""

from __future__ import annotations

import torch

from areal_env.trainers.algorithms.losses.base import LossInputs
from areal_env.trainers.algorithms.losses.common import (
    aggregator,
    base_stats,
    prepare,
    to_floats,
    with_kl,
)


def sapo_loss(
    inputs: LossInputs,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    aggregation: str = "token_mean",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Soft-gated policy-gradient loss (see the module docstring for the formula).

    Args:
        inputs: the micro-batch (see ``LossInputs``).
        tau_pos: gate temperature for positive advantages, > 0 (larger = sharper).
        tau_neg: gate temperature for zero or negative advantages, > 0.
        aggregation: a mode of ``aggregation.AGGREGATIONS``.
        kl_coef: weight of the per-token KL to the reference model.
        kl_estimator: one of ``kl.KL_ESTIMATORS``.
        max_len: constant divisor of ``seq_mean_token_sum_norm``.

    Returns:
        ([] loss, metrics): ``loss/total``, ``loss/pg``, ``loss/kl_ref``, ``loss/ratio_mean``,
        ``loss/approx_kl_old`` as ``ppo_clip_loss`` names them, and ``loss/sapo_gate_mean``,
        the token mean of the gradient weight ``4 p (1 - p)`` (1 on-policy, towards 0 gated).

    Raises:
        ValueError: if a temperature is not positive.

    Example:
        >>> lp = torch.zeros(1, 1, requires_grad=True)
        >>> inputs = LossInputs(logprobs=lp, behaviour_logprobs=torch.zeros(1, 1),
        ...                     advantages=torch.ones(1, 1), loss_mask=torch.ones(1, 1))
        >>> loss, _ = sapo_loss(inputs, tau_pos=2.0)
        >>> loss.item(), torch.autograd.grad(loss, lp)[0].item()  # -(4/2)*sigmoid(0); -A
        (-1.0, -1.0)
    """
    if tau_pos <= 0.0 or tau_neg <= 0.0:
        raise ValueError(f"SAPO temperatures must be > 0, got tau_pos={tau_pos}, tau_neg={tau_neg}")
    p = prepare(inputs)
    ratio = torch.exp(p.log_ratio)
    tau = torch.where(p.adv > 0, tau_pos, tau_neg).to(ratio.dtype)
    gate = torch.sigmoid(tau * (ratio - 1.0))
    pg = -p.weight * p.adv * (4.0 / tau) * gate
    per_token, kl = with_kl(pg, p, inputs, kl_coef, kl_estimator)
    agg = aggregator(inputs, aggregation, max_len)
    loss = agg(per_token)
    with torch.no_grad():
        stats = base_stats(loss, pg, kl, p, agg)
        stats["loss/sapo_gate_mean"] = agg(4.0 * gate * (1.0 - gate), "token_mean")
    return loss, to_floats(stats)
