"""Advantage estimators: one function per estimator, from episode rewards to advantages.

Every estimator maps a 1-D reward vector ``[N]`` to an advantage vector ``[N]``.
Group estimators (``group_mean_std``, ``group_mean``, ``rloo``) are applied to each
group of episodes that share a task; batch estimators (``batch_normalized``) to the
whole batch at once. ``compute_advantages`` does the dispatch and writes
``EpisodeBatch.advantages``; the loss broadcasts each episode's advantage over its
generated tokens.

Example:
    >>> group_mean([1.0, 0.0, 0.0, 1.0]).tolist()
    [0.5, -0.5, -0.5, 0.5]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from areal_env.types import EpisodeBatch

Rewards = list[float] | torch.Tensor
"""[N] Episode rewards, as a list or a 1-D tensor."""


def _as_vector(rewards: Rewards) -> torch.Tensor:
    r = torch.as_tensor(rewards)
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(r.shape)}")
    return r if r.is_floating_point() else r.float()


def group_mean_std(rewards: Rewards, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantage: ``(r - mean) / (std + eps)`` within one group.

    From DeepSeekMath (Shao et al. 2024, https://arxiv.org/abs/2402.03300).
    The std is the population std (``unbiased=False``): the group is the whole set
    being standardised, not a sample of a larger one, so a balanced binary group
    maps to exactly +-1 (up to eps) whatever its size, and a group of size 1 gets
    ``0 / eps = 0`` instead of the NaN that Bessel's ``N - 1`` would give.

    Args:
        rewards: [N] rewards of the episodes of one task.
        eps: added to the std so all-equal groups give 0, not NaN.

    Returns:
        [N] advantages.
    """
    r = _as_vector(rewards)
    return (r - r.mean()) / (r.std(unbiased=False) + eps)


def group_mean(rewards: Rewards) -> torch.Tensor:
    """Dr.GRPO advantage: ``r - mean`` within one group, with no std division.

    From "Understanding R1-Zero-Like Training" (Liu et al. 2025,
    https://arxiv.org/abs/2503.20783): dividing by the group std up-weights tasks that
    are nearly always solved or failed, a difficulty bias this estimator removes.

    Args:
        rewards: [N] rewards of the episodes of one task.

    Returns:
        [N] advantages.
    """
    r = _as_vector(rewards)
    return r - r.mean()


def rloo(rewards: Rewards) -> torch.Tensor:
    """REINFORCE leave-one-out: each reward minus the mean of the *other* rewards.

    From Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free") and
    Ahmadian et al. 2024 (https://arxiv.org/abs/2402.14740). The baseline does not
    depend on the episode it scores, so the estimate is unbiased; it equals
    ``N / (N - 1) * (r - mean)``. A group of size 1 has no other episode and gets 0.

    Args:
        rewards: [N] rewards of the episodes of one task.

    Returns:
        [N] advantages.
    """
    r = _as_vector(rewards)
    n = r.numel()
    if n < 2:
        return torch.zeros_like(r)
    return (r - r.mean()) * (n / (n - 1))


def batch_normalized(rewards: Rewards, eps: float = 1e-4) -> torch.Tensor:
    """REINFORCE++-style advantage: ``(r - mean) / (std + eps)`` over the whole batch.

    From REINFORCE++ (Hu 2025, https://arxiv.org/abs/2501.03262): normalising with
    global statistics instead of per-group ones avoids over-fitting the baseline to
    small groups. Population std, as in ``group_mean_std``.

    Args:
        rewards: [N] rewards of every episode in the batch.
        eps: added to the std so an all-equal batch gives 0, not NaN.

    Returns:
        [N] advantages.
    """
    r = _as_vector(rewards)
    return (r - r.mean()) / (r.std(unbiased=False) + eps)


def group_mean_batch_std(
    rewards: Rewards, group_sizes: list[int] | None = None, eps: float = 1e-4
) -> torch.Tensor:
    """LitePPO advantage: ``(r - mean of its group) / (std of the whole batch + eps)``.

    From "Tricks or Traps? A Deep Dive into RL for LLM Reasoning" (Liu et al. 2025,
    https://arxiv.org/abs/2508.08221): the group mean keeps the per-task baseline, but
    a per-group std blows up the advantages of nearly-solved or nearly-failed tasks
    (std near 0); the batch std is a steadier scale. Population std of the raw batch
    rewards, as the paper writes it and as ``batch_normalized`` does.

    Args:
        rewards: [N] rewards of every episode in the batch, group after group.
        group_sizes: sizes of the consecutive groups, summing to N; None: one group.
        eps: added to the std so an all-equal batch gives 0, not NaN.

    Returns:
        [N] advantages.
    """
    r = _as_vector(rewards)
    sizes = [r.numel()] if group_sizes is None else group_sizes
    if sum(sizes) != r.numel():
        raise ValueError(f"group_sizes {sizes} do not sum to {r.numel()} rewards")
    centred = torch.cat([g - g.mean() for g in r.split(sizes)]) if r.numel() else r
    return centred / (r.std(unbiased=False) + eps)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {
    "group_mean_std": group_mean_std,
    "group_mean": group_mean,
    "rloo": rloo,
    "batch_normalized": batch_normalized,
    "group_mean_batch_std": group_mean_batch_std,
}
"""Estimator name -> function from rewards [N] to advantages [N]."""

BATCH_ESTIMATORS: frozenset[str] = frozenset({"batch_normalized", "group_mean_batch_std"})
"""Estimators applied to the whole batch; the others are applied group by group."""

NEEDS_GROUP_SIZES: frozenset[str] = frozenset({"group_mean_batch_std"})
"""Batch estimators that also take the groups' sizes (``group_sizes=``)."""


def compute_advantages(batch: EpisodeBatch, estimator: str, **kw: float) -> EpisodeBatch:
    """Fill ``batch.advantages`` with one advantage per episode.

    Args:
        batch: the episodes; groups may differ in size.
        estimator: a key of ``ADVANTAGE_ESTIMATORS``.
        **kw: passed to the estimator (e.g. ``eps``).

    Returns:
        The same batch, with ``advantages`` [G][N_g] shaped like ``groups``.

    Raises:
        ValueError: if ``estimator`` is not a known name.
    """
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {estimator!r}; valid: {sorted(ADVANTAGE_ESTIMATORS)}"
        )
    fn = ADVANTAGE_ESTIMATORS[estimator]
    if estimator in BATCH_ESTIMATORS:
        sizes = [len(g) for g in batch.groups]
        extra: dict[str, object] = {"group_sizes": sizes} if estimator in NEEDS_GROUP_SIZES else {}
        flat = fn(batch.rewards, **kw, **extra).tolist() if len(batch) else []
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        batch.advantages = [flat[s : s + n] for s, n in zip(starts, sizes, strict=True)]
    else:
        batch.advantages = [
            fn([t.reward for t in g], **kw).tolist() if g else [] for g in batch.groups
        ]
    return batch
