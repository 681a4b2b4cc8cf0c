"""CISPO: clip the importance weight, never the gradient.

The problem: in PPO a clipped token gets no gradient at all. In long reasoning the
rare low-probability tokens that fork a chain of thought ("However", "Wait") are
exactly the ones whose ratio leaves the range first, so clipping keeps deleting the
most informative updates. CISPO (MiniMax-M1, MiniMax 2025,
https://arxiv.org/abs/2506.13585) clips the importance-sampling weight instead and
uses it as a *stop-gradient coefficient* on the REINFORCE term:

    loss_t = -sg(min(r_t, 1 + clip_high)) * w * A * log pi(y_t)

so every token keeps a gradient ``-clip(r) * w * A * grad log pi``: a large ratio only
bounds the step size, it never drops the token. Aggregation is token-level, as in the
paper.

Where ours departs: MiniMax-M1 sets the lower bound ``eps_low`` "to a large value" (no
lower clip) and tunes only the upper one without publishing it; we have no lower clip
at all and bound the weight at ``1 + clip_high`` (the preset uses 5, i.e. clip_high 4).
With a proximal policy the clipped ratio is ``pi / pi_prox`` and the behaviour weight
``w = pi_prox / pi_behav`` multiplies it, as in ``ppo_clip_loss``; without one ``w = 1``.
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


def cispo_loss(
    inputs: LossInputs,
    *,
    clip_high: float = 4.0,
    aggregation: str = "token_mean",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-IS-weight REINFORCE loss (see the module docstring for the formula).

    Args:
        inputs: the micro-batch (see ``LossInputs``).
        clip_high: the weight is capped at ``1 + clip_high`` (>= 0).
        aggregation: a mode of ``aggregation.AGGREGATIONS``.
        kl_coef: weight of the per-token KL to the reference model.
        kl_estimator: one of ``kl.KL_ESTIMATORS``.
        max_len: constant divisor of ``seq_mean_token_sum_norm``.

    Returns:
        ([] loss, metrics): the ``ppo_clip_loss`` names (``loss/pg`` is the value of the
        REINFORCE term, not a surrogate near ``-A``) and ``loss/clip_frac``, the token
        fraction whose weight was capped (they still get a gradient).

    Example:
        >>> lp = torch.log(torch.tensor([[8.0]])).requires_grad_()  # r = 8 vs behaviour 1
        >>> inputs = LossInputs(logprobs=lp, behaviour_logprobs=torch.zeros(1, 1),
        ...                     advantages=torch.ones(1, 1), loss_mask=torch.ones(1, 1))
        >>> loss, m = cispo_loss(inputs, clip_high=4.0)
        >>> torch.autograd.grad(loss, lp)[0].item(), m["loss/clip_frac"]  # -min(8, 5) * A
        (-5.0, 1.0)
    """
    if clip_high < 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    p = prepare(inputs)
    ratio = torch.exp(p.log_ratio.detach())
    coef = ratio.clamp(max=1.0 + clip_high)
    pg = -(coef * p.weight * p.adv).detach() * p.lp
    per_token, kl = with_kl(pg, p, inputs, kl_coef, kl_estimator)
    agg = aggregator(inputs, aggregation, max_len)
    loss = agg(per_token)
    with torch.no_grad():
        stats = base_stats(loss, pg, kl, p, agg)
        stats["loss/clip_frac"] = agg((ratio > 1.0 + clip_high).to(ratio.dtype), "token_mean")
    return loss, to_floats(stats)
