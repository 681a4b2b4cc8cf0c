"""The rollout watchdog's report: which part of the system the episodes wait on.

When no batch has come for ``rollout.watchdog_s``, the scheduler asks for this
report and logs it before it applies ``rollout.watchdog_action``. It groups the
running episodes by phase (see :mod:`areal_env.rollout.activity`) and names the
phase that holds the most episodes as the stuck part, so the first line of the
log says "inference" or "tool (python)" rather than "no batch".

Example:
    >>> from areal_env.rollout.activity import EpisodeActivity
    >>> stuck = [EpisodeActivity(label=f"group 0 sample {i}", phase="inference", since=0.0,
    ...                          started=0.0) for i in range(3)]
    >>> stuck.append(EpisodeActivity(label="group 1 sample 0", phase="tool", detail="python",
    ...                              since=50.0, started=0.0))
    >>> print(stall_report(stuck, now=100.0, waited_s=100.0, buffered=1, batch_size=4))
    ... # doctest: +NORMALIZE_WHITESPACE
    no batch for 100s (1 of 4 groups buffered); 4 episode attempts running.
    Stuck part: inference (3 of 4 episodes, the longest for 100s).
    By phase: inference: 3 (longest 100s); tool (python): 1 (longest 50s)
      group 0 sample 0: in inference for 100.0s (episode running 100.0s)
      group 0 sample 1: in inference for 100.0s (episode running 100.0s)
      group 0 sample 2: in inference for 100.0s (episode running 100.0s)
      group 1 sample 0: in tool (python) for 50.0s (episode running 100.0s)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from areal_env.rollout.activity import EpisodeActivity

MAX_LISTED = 20
"""Episodes listed one per line (longest-waiting first); the rest are only counted."""


def stall_report(
    activities: Iterable[EpisodeActivity],
    *,
    now: float,
    waited_s: float,
    buffered: int,
    batch_size: int,
    staleness_note: str = "",
) -> str:
    """A multi-line report of what every running episode waits on.

    Args:
        activities: the running episode attempts.
        now: the current monotonic time.
        waited_s: seconds since the last batch (or the start).
        buffered: finished groups waiting in the buffer.
        batch_size: groups a batch needs.
        staleness_note: why no group is admitted, when that is why nothing runs.
    """
    running = sorted(activities, key=lambda a: a.since)
    head = (
        f"no batch for {waited_s:.0f}s ({buffered} of {batch_size} groups buffered); "
        f"{len(running)} episode attempts running."
    )
    if not running:
        cause = staleness_note or (
            "no episode is running and none is admitted: the rollout producer is not running"
        )
        return f"{head}\nStuck part: {cause}."
    by_phase: dict[str, list[EpisodeActivity]] = defaultdict(list)
    for activity in running:
        key = f"{activity.phase} ({activity.detail})" if activity.detail else activity.phase
        by_phase[key].append(activity)
    ranked = sorted(
        by_phase.items(), key=lambda kv: (-len(kv[1]), min(a.since for a in kv[1]), kv[0])
    )
    top, members = ranked[0]
    lines = [
        head,
        f"Stuck part: {top} ({len(members)} of {len(running)} episodes, the longest for "
        f"{now - min(a.since for a in members):.0f}s).",
        "By phase: "
        + "; ".join(
            f"{key}: {len(group)} (longest {now - min(a.since for a in group):.0f}s)"
            for key, group in ranked
        ),
    ]
    lines += [f"  {a.describe(now)}" for a in running[:MAX_LISTED]]
    if len(running) > MAX_LISTED:
        lines.append(f"  ... and {len(running) - MAX_LISTED} more")
    return "\n".join(lines)
