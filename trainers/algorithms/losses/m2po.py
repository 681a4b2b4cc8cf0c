"""M2PO: a second-moment trust region that drops only the extreme stale tokens.

The problem: with stale samples (asynchronous RL) PPO's per-token clip either lets
outliers through or, tightened, clips away most informative tokens. M2PO (Zheng et
al. 2025, "Prosperity before Collapse", https://arxiv.org/abs/2510.01161) bounds the
batch's second moment of the log importance ratio instead,

    M2 = mean_t (log pi_train(y_t) / pi_behav(y_t)) ** 2,

masking the tokens with the largest squared log ratio, one by one, until the mean of
the remaining ones is below ``m2_threshold`` (0.04 in the paper and AReaL). The kept
tokens then train on the *unclipped* surrogate ``-w * r * A``; masked tokens give no
gradient but still count in the token normaliser, as in the paper's ``1 / sum |o_i|``.

Where ours departs, as AReaL does: the mask is computed over the micro-batch the loss
sees, not the whole batch; ``pi_train`` is the proximal policy when there is one and
the current policy (detached) otherwise. As in AReaL, at least one token is always kept.
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


def second_moment_mask(
    log_ratio: torch.Tensor, keep: torch.Tensor, threshold: float
) -> torch.Tensor:
    """``keep`` minus the fewest largest-``log_ratio**2`` tokens that bring their mean under bound.

    Args:
        log_ratio: [B, T] log importance ratios (detached).
        keep: [B, T] bool, the tokens being trained.
        threshold: the bound on the mean squared log ratio of the kept tokens, > 0.

    Returns:
        [B, T] bool mask, a subset of ``keep`` with at least one token when ``keep`` has one.

    Example:
        >>> lr = torch.tensor([[0.0, 0.1, 0.5]])  # squares 0, 0.01, 0.25: mean 0.0867
        >>> second_moment_mask(lr, torch.ones(1, 3, dtype=torch.bool), 0.04).tolist()
        [[True, True, False]]
    """
    m2 = log_ratio.detach().square()[keep]
    n = m2.numel()
    if n == 0:
        return keep
    ordered, order = torch.sort(m2, descending=True, stable=True)
    # Mean of the tokens kept when the first i (largest) are dropped, for i = 0..n-1.
    suffix_mean = ordered.flip(0).cumsum(0).flip(0) / torch.arange(n, 0, -1, dtype=m2.dtype)
    below = torch.nonzero(suffix_mean < threshold)
    n_drop = int(below[0]) if below.numel() else n - 1
    kept_sorted = torch.arange(n) >= n_drop
    kept = torch.empty_like(kept_sorted)
    kept[order] = kept_sorted.to(kept.device)
    out = torch.zeros_like(keep)
    out[keep] = kept.to(out.device)
    return out


def m2po_loss(
    inputs: LossInputs,
    *,
    m2_threshold: float = 0.04,
    aggregation: str = "token_mean",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Second-moment-masked, unclipped policy-gradient loss (see the module docstring).

    Args:
        inputs: the micro-batch (see ``LossInputs``).
        m2_threshold: bound on the mean squared log ratio of the kept tokens, > 0.
        aggregation: a mode of ``aggregation.AGGREGATIONS``.
        kl_coef: weight of the per-token KL to the reference model.
        kl_estimator: one of ``kl.KL_ESTIMATORS``.
        max_len: constant divisor of ``seq_mean_token_sum_norm``.

    Returns:
        ([] loss, metrics): the ``ppo_clip_loss`` names and ``loss/m2_masked_frac``, the
        fraction of trained tokens the second-moment mask dropped.
    """
    if m2_threshold <= 0.0:
        raise ValueError(f"m2_threshold must be > 0, got {m2_threshold}")
    p = prepare(inputs)
    train_lp = p.prox if inputs.proximal_logprobs is not None else p.lp.detach()
    kept = second_moment_mask(train_lp - p.behav, p.keep, m2_threshold)
    pg = -p.weight * p.adv * torch.exp(p.log_ratio)
    pg = torch.where(kept, pg, torch.zeros_like(pg))
    per_token, kl = with_kl(pg, p, inputs, kl_coef, kl_estimator)
    agg = aggregator(inputs, aggregation, max_len, mask=kept)
    loss = agg(per_token)
    with torch.no_grad():
        stats = base_stats(loss, pg, kl, p, agg)
        dropped = (p.keep & ~kept).to(pg.dtype)
        stats["loss/m2_masked_frac"] = aggregator(inputs, "token_mean", max_len)(dropped)
    return loss, to_floats(stats)
