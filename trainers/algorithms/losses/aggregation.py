"""Reduce a per-token loss ``[B, T]`` to a scalar: how tokens and sequences are weighted.

The choice decides how much each token contributes to the gradient:

- ``token_mean``: every trained token in the batch counts the same (DAPO, AReaL).
- ``seq_mean_token_mean``: mean over each sequence, then over sequences (original
  GRPO); tokens of long answers weigh less, a length bias.
- ``seq_mean_token_sum``: sum over each sequence, then mean over sequences; long
  answers weigh more.
- ``seq_mean_token_sum_norm``: sum over each sequence divided by a constant
  ``max_len``, then mean over sequences (Dr.GRPO, https://arxiv.org/abs/2503.20783);
  every token weighs the same and the scale does not depend on the batch.

Rows with no masked token are left out of the sequence means, and a batch with no
masked token at all gives a loss of 0 (never NaN).
"""

from __future__ import annotations

import torch

AGGREGATIONS: tuple[str, ...] = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
)
"""Valid ``mode`` names for ``aggregate``."""


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: str, *, max_len: int | None = None
) -> torch.Tensor:
    """Reduce masked per-token values to a scalar.

    Args:
        values: [B, T] per-token values (e.g. the policy-gradient loss).
        mask: [B, T] 1 (or True) on tokens to count, 0 elsewhere.
        mode: one of ``AGGREGATIONS``.
        max_len: the constant divisor of ``seq_mean_token_sum_norm``, normally the
            generation budget. Defaults to ``T``, which changes with padding, so pass
            it to get Dr.GRPO's batch-independent scale.

    Returns:
        [] scalar, differentiable in ``values``.

    Raises:
        ValueError: if ``mode`` is not a known name or shapes disagree.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; valid: {list(AGGREGATIONS)}")
    if values.shape != mask.shape or values.dim() != 2:
        raise ValueError(
            f"values and mask must both be [B, T], got {tuple(values.shape)} "
            f"and {tuple(mask.shape)}"
        )
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    keep = mask.bool()
    # where() rather than values * mask: padding may hold inf/NaN and inf * 0 is NaN.
    masked = torch.where(keep, values, torch.zeros_like(values))
    counts = keep.sum(dim=-1).to(values.dtype)
    if mode == "token_mean":
        return masked.sum() / counts.sum().clamp(min=1.0)
    row_sum = masked.sum(dim=-1)
    if mode == "seq_mean_token_mean":
        per_seq = row_sum / counts.clamp(min=1.0)
    elif mode == "seq_mean_token_sum":
        per_seq = row_sum
    else:
        per_seq = row_sum / float(values.shape[-1] if max_len is None else max_len)
    return per_seq.sum() / (counts > 0).sum().clamp(min=1).to(values.dtype)
