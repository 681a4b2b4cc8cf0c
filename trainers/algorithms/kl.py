"""Per-token estimators of the KL divergence from the policy to a reference policy."""

from __future__ import annotations

import torch

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
"""Valid ``estimator`` names for ``kl_penalty``."""

_MAX_LOG_RATIO = 20.0


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Estimate KL(pi || pi_ref) per token from the sampled tokens' log-probabilities.

    With ``log_ratio = logprobs - ref_logprobs`` (J. Schulman, "Approximating KL
    Divergence", http://joschu.net/blog/kl-approx.html):

    - ``k1 = log_ratio``: unbiased, high variance, can be negative.
    - ``k2 = 0.5 * log_ratio ** 2``: biased, low variance, never negative.
    - ``k3 = exp(-log_ratio) + log_ratio - 1``, i.e. ``exp(ref - lp) - (ref - lp) - 1``:
      unbiased, low variance, never negative (the default of GRPO).

    The log ratio is clamped to +-20 first so ``k3`` stays finite on padding or on
    tokens where the two policies disagree wildly; ``inf * 0`` would otherwise turn
    a masked loss into NaN.

    Args:
        logprobs: [B, T] log-probabilities of the sampled tokens under the policy.
        ref_logprobs: [B, T] the same tokens under the reference policy.
        estimator: one of ``KL_ESTIMATORS``.

    Returns:
        [B, T] per-token KL estimates (unmasked).

    Raises:
        ValueError: if ``estimator`` is not a known name.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; valid: {list(KL_ESTIMATORS)}")
    log_ratio = (logprobs - ref_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    return torch.exp(-log_ratio) + log_ratio - 1.0
