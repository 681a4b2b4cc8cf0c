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

The outer "mean" divides by a count: by default the counts of the tensors given,
but a micro-batch passes the counts of its whole minibatch (``num_tokens``,
``num_sequences``), so that the micro-batch losses add up to the minibatch loss
and any split gives the same gradient. Rows with no masked token are left out
of the sequence means, and a batch with no masked token gives 0 (never NaN).

Example:
    >>> import torch
    >>> v, m = torch.tensor([[1.0, 3.0], [2.0, 0.0]]), torch.tensor([[1, 1], [1, 0]])
    >>> aggregate(v, m, "token_mean").item(), aggregate(v, m, "seq_mean_token_mean").item()
    (2.0, 2.0)
    >>> halves = [aggregate(v[i : i + 1], m[i : i + 1], "token_mean", num_tokens=3) for i in (0, 1)]
    >>> sum(halves).item()
    2.0
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
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    max_len: int | None = None,
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> torch.Tensor:
    """Reduce masked per-token values to a scalar.

    Args:
        values: [B, T] per-token values (e.g. the policy-gradient loss).
        mask: [B, T] 1 (or True) on tokens to count, 0 elsewhere.
        mode: one of ``AGGREGATIONS``.
        max_len: the constant divisor of ``seq_mean_token_sum_norm``, normally the
            generation budget. Defaults to ``T``, which changes with padding, so pass
            it to get Dr.GRPO's batch-independent scale.
        num_tokens: divisor of ``token_mean``: the trained tokens of the whole batch
            this slice belongs to; default: those of ``mask``.
        num_sequences: divisor of the ``seq_mean_*`` modes: the trained rows of the
            whole batch; default: those of ``mask``.

    Returns:
        [] scalar, differentiable in ``values``.

    Raises:
        ValueError: if ``mode`` is not a known name, shapes disagree or a count is bad.
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
    for name, count in (("num_tokens", num_tokens), ("num_sequences", num_sequences)):
        if count is not None and count < 0:
            raise ValueError(f"{name} must be >= 0, got {count}")
    keep = mask.bool()
    # where() rather than values * mask: padding may hold inf/NaN and inf * 0 is NaN.
    masked = torch.where(keep, values, torch.zeros_like(values))
    counts = keep.sum(dim=-1).to(values.dtype)
    if mode == "token_mean":
        total = counts.sum() if num_tokens is None else num_tokens
        return masked.sum() / max(float(total), 1.0)
    row_sum = masked.sum(dim=-1)
    if mode == "seq_mean_token_mean":
        per_seq = row_sum / counts.clamp(min=1.0)
    elif mode == "seq_mean_token_sum":
        per_seq = row_sum
    else:
        per_seq = row_sum / float(values.shape[-1] if max_len is None else max_len)
    n_seq = (counts > 0).sum() if num_sequences is None else num_sequences
    return per_seq.sum() / max(float(n_seq), 1.0)
