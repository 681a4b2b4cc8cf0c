"""Groups of episodes: task seeds, filters, and packing into an EpisodeBatch.

A group is the ``n_samples`` episodes run on one task (one task seed), so
group-relative advantages (GRPO, RLOO, ...) need no other bookkeeping. Filters
are named predicates over a group: True means "drop this group".

Example:
    >>> from areal_env.types import Trajectory
    >>> group = [Trajectory(reward=1.0, task_id="7"), Trajectory(reward=1.0, task_id="7")]
    >>> all_rewards_equal(group)
    True
    >>> batch = build_batch([group], version=0)
    >>> batch.stats["rollout/reward_mean"], batch.stats["rollout/all_equal_groups"]
    (1.0, 1.0)
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable, Sequence

from areal_env.rollout.staleness import trajectory_staleness
from areal_env.types import EpisodeBatch, Trajectory

Group = Sequence[Trajectory]
"""The episodes of one task, in sample order."""

GroupFilter = Callable[[Group], bool]
"""A named predicate over a group; True means the group is dropped."""


def task_seed_for(seed: int, group_index: int) -> int:
    """Deterministic task seed of group ``group_index`` in a run seeded with ``seed``.

    Seeds are hashed rather than ``seed + group_index`` so that runs with
    different seeds do not walk overlapping task streams. The result fits in
    31 bits, so any RNG (numpy, torch, random) accepts it.

    Example:
        >>> task_seed_for(0, 5) == task_seed_for(0, 5)
        True
        >>> task_seed_for(0, 5) == task_seed_for(1, 5)
        False
    """
    digest = hashlib.blake2b(f"{seed}:{group_index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


def all_rewards_equal(group: Group) -> bool:
    """True when every episode of ``group`` has the same reward (zero group advantage)."""
    return len({t.reward for t in group}) <= 1


def any_longer_than(max_tokens: int) -> GroupFilter:
    """A filter dropping groups with a sample (training row) longer than ``max_tokens`` tokens.

    Example:
        >>> too_long = any_longer_than(2)
        >>> from areal_env.types import Sample
        >>> too_long([Trajectory(samples=[Sample(input_ids=[1, 2, 3])])]), too_long.__name__
        (True, 'any_longer_than_2')
    """

    def predicate(group: Group) -> bool:
        return any(len(s) > max_tokens for t in group for s in t.samples)

    predicate.__name__ = f"any_longer_than_{max_tokens}"
    return predicate


def first_matching_filter(group: Group, filters: Sequence[GroupFilter]) -> str | None:
    """Name of the first filter that drops ``group``, or None when it is kept."""
    for keep_out in filters:
        if keep_out(group):
            return getattr(keep_out, "__name__", type(keep_out).__name__)
    return None


def batch_stats(groups: Sequence[Group], *, version: int) -> dict[str, float]:
    """Reward, staleness and length statistics of ``groups`` at trainer ``version``.

    Args:
        groups: [G][N] finished episodes; must hold at least one trajectory.
        version: the trainer's current weight version, for staleness.

    Returns:
        ``rollout/*`` metrics; ``reward_std`` is the population std over episodes.
        Each key of the episodes' ``Trajectory.metrics`` (turns, tool calls, drift
        events, tool-call parse errors, ...) becomes ``rollout/<key>_mean``: its
        mean over the episodes, an episode without the key counting 0. Two totals
        read better than means: ``rollout/tool_errors`` (malformed or failed tool
        calls in the batch) and ``rollout/template_split_rate`` (the fraction of
        episodes that the chat template's drift split into several rows).
    """
    trajs = [t for g in groups for t in g]
    if not trajs:
        raise ValueError("batch_stats needs at least one trajectory")
    rewards = [t.reward for t in trajs]
    staleness = [trajectory_staleness(t, version) for t in trajs]
    return {
        "rollout/reward_mean": statistics.fmean(rewards),
        "rollout/reward_std": statistics.pstdev(rewards),
        "rollout/staleness_mean": statistics.fmean(staleness),
        "rollout/staleness_max": float(max(staleness)),
        "rollout/gen_tokens": float(sum(t.num_generated for t in trajs)),
        "rollout/seq_len_mean": statistics.fmean(len(t) for t in trajs),
        "rollout/all_equal_groups": sum(map(all_rewards_equal, groups)) / len(groups),
        "rollout/samples_per_episode": statistics.fmean(len(t.samples) for t in trajs),
        "rollout/tool_errors": sum(t.metrics.get("tool_errors", 0.0) for t in trajs),
        "rollout/template_split_rate": statistics.fmean(
            float(t.metrics.get("template_splits", 0.0) > 0) for t in trajs
        ),
        **episode_metrics(trajs),
    }


def episode_metrics(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Mean of each ``Trajectory.metrics`` key over ``trajs`` (missing counts 0).

    Example:
        >>> episode_metrics([Trajectory(metrics={"drift_events": 2.0}), Trajectory()])
        {'rollout/drift_events_mean': 1.0}
    """
    keys = sorted({k for t in trajs for k in t.metrics})
    n = max(len(trajs), 1)
    return {f"rollout/{k}_mean": sum(t.metrics.get(k, 0.0) for t in trajs) / n for k in keys}


def build_batch(
    groups: Sequence[Group], *, version: int, extra_stats: dict[str, float] | None = None
) -> EpisodeBatch:
    """Pack finished groups into an ``EpisodeBatch`` with its rollout statistics.

    Args:
        groups: [G][N] finished episodes, one inner sequence per task.
        version: the trainer's current weight version, for staleness.
        extra_stats: counters from the producer (dropped groups, ...) merged in.
    """
    stats = batch_stats(groups, version=version) | (extra_stats or {})
    return EpisodeBatch(groups=[list(g) for g in groups], stats=stats)
