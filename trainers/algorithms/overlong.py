"""DAPO's soft overlong punishment: a length-aware reward penalty near the token budget.

DAPO (Yu et al. 2025, arXiv:2503.14476, eq. 13) adds to the reward of a response
of length ``|y|``, with budget ``L_max`` and buffer ``L_cache``::

    0                                  if |y| <= L_max - L_cache
    ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
    -1                                 if |y| > L_max

so a truncated answer is not scored like a finished one and the policy learns to
finish inside the budget rather than be cut. Where ours departs:

* the penalty is scaled by ``overlong_factor`` (1 in the paper) and the buffer
  is a fraction of the budget (``overlong_buffer_frac``; the paper's 4096 of
  20480 is 0.2), so the preset fits any ``inference.sampling.max_new_tokens``;
* a multi-turn episode is judged by its longest completion (each turn has the
  budget), and a completion can never exceed the budget here: the engine stops
  it at ``L_max``, where the penalty is -1 times the factor;
* the raw reward is kept in ``trajectory.info["reward_before_overlong"]``.

Example:
    >>> [overlong_penalty(n, max_len=10, buffer=4) for n in (5, 6, 8, 10)]
    [0.0, 0.0, -0.5, -1.0]
"""

from __future__ import annotations

import math

from areal_env.types import EpisodeBatch, Sample, Trajectory


def overlong_penalty(length: int, *, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's penalty for one response of ``length`` tokens (0, a linear ramp, or -factor)."""
    if buffer <= 0 or length <= max_len - buffer:
        return 0.0
    if length > max_len:
        return -factor
    return factor * ((max_len - buffer) - length) / buffer


def longest_completion(sample: Sample) -> int:
    """Tokens of the longest run of generated tokens (one completion) in ``sample``."""
    best = run = 0
    for flag in sample.loss_mask:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def episode_length(trajectory: Trajectory) -> int:
    """The length DAPO's penalty judges: the episode's longest completion."""
    return max((longest_completion(s) for s in trajectory.samples), default=0)


def apply_overlong_penalty(
    batch: EpisodeBatch, *, max_len: int, buffer_frac: float, factor: float
) -> dict[str, float]:
    """Add the penalty to every episode's reward in place; return metrics.

    Args:
        batch: the step's episodes (rewards are changed in place).
        max_len: the completion budget (``inference.sampling.max_new_tokens``).
        buffer_frac: ``L_cache / L_max``; 0 turns the penalty off.
        factor: the penalty at and beyond the budget.

    Returns:
        ``rollout/overlong_penalty_mean`` and ``rollout/overlong_penalized`` (episodes hit).
    """
    buffer = math.floor(buffer_frac * max_len)
    penalties = []
    for group in batch.groups:
        for trajectory in group:
            penalty = overlong_penalty(
                episode_length(trajectory), max_len=max_len, buffer=buffer, factor=factor
            )
            if penalty:
                trajectory.info.setdefault("reward_before_overlong", trajectory.reward)
                trajectory.reward += penalty
            penalties.append(penalty)
    n = max(len(penalties), 1)
    return {
        "rollout/overlong_penalty_mean": sum(penalties) / n,
        "rollout/overlong_penalized": float(sum(p != 0 for p in penalties)),
    }
