"""Supervised loss: token-mean negative log-likelihood (SFT, warm starts)."""

from __future__ import annotations

import torch


def nll_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean of ``-logprobs`` over masked tokens, in the trainer's loss signature.

    Args:
        logprobs: [B, T] log-probabilities of the target tokens (carry gradient).
        old_logprobs: [B, T] ignored (same signature as the RL losses).
        advantages: [B] ignored.
        mask: [B, T] 1 on target tokens.
        ref_logprobs: ignored.

    Returns:
        (loss, {"sft/nll": value}); an all-zero mask gives loss 0, not NaN.
    """
    nll = -(logprobs * mask).sum() / mask.sum().clamp(min=1.0)
    return nll, {"sft/nll": float(nll.detach())}
