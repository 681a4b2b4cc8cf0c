"""What each running episode is waiting on, for the watchdog to name a stuck part.

A run that stops producing batches is the worst failure of an RL trainer: it
costs hours before anyone notices, and "no batch for 10 minutes" says nothing
about why. So every episode carries an :class:`EpisodeActivity` record, and the
code an episode waits on marks the phase it is in with :func:`phase`:

=================  ==========================================================
phase              marked by
=================  ==========================================================
``inference``      the per-episode chat client, around each generation call
``env reset``      ``AsyncEnv.areset``
``env step``       ``AsyncEnv.astep``
``tool``           tool envs, around one tool call (detail: the tool's name)
``reward``         envs, around the reward verifier
``agent``          the episode started and no inner phase is active
=================  ==========================================================

The record travels in a ``contextvars.ContextVar``: the scheduler sets it in the
episode's task, and tasks that the episode creates inherit it, so nothing has to
be passed through agent or env signatures (wrapped third-party agents included).
Outside a scheduled episode :func:`phase` does nothing.

Example:
    >>> activity = EpisodeActivity(label="group 3 sample 1")
    >>> token = CURRENT.set(activity)
    >>> with phase("env step", "MathEnv"):
    ...     with phase("reward"):
    ...         inner = activity.phase
    ...     outer = activity.phase
    >>> CURRENT.reset(token)
    >>> inner, outer, activity.phase
    ('reward', 'env step', 'agent')
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

AGENT = "agent"
"""Phase of an episode between marked phases: the agent's own code runs or awaits."""

WATCHDOG_CANCEL = "cancelled by the rollout watchdog"
"""Cancel message that makes ``run_with_retries`` count the attempt as failed ("stuck")."""


@dataclass(kw_only=True, slots=True, eq=False)  # eq=False: hashed by identity, kept in a set
class EpisodeActivity:
    """The live state of one running episode attempt."""

    label: str
    """Which episode: group index, sample index (for the watchdog's report)."""
    phase: str = AGENT
    """What the episode waits on now (see the module table)."""
    detail: str = ""
    """More about the phase: the env class, the tool name."""
    started: float = field(default_factory=time.monotonic)
    """When the episode attempt started (monotonic seconds)."""
    since: float = field(default_factory=time.monotonic)
    """When the current phase began (monotonic seconds)."""
    attempt: asyncio.Task | None = None
    """The attempt's task, so the watchdog can cancel a stuck episode."""

    def describe(self, now: float) -> str:
        """One line: label, phase (detail) and for how long."""
        what = f"{self.phase} ({self.detail})" if self.detail else self.phase
        return (
            f"{self.label}: in {what} for {now - self.since:.1f}s "
            f"(episode running {now - self.started:.1f}s)"
        )

    def cancel_stuck(self) -> bool:
        """Cancel this attempt as stuck: it fails (kind "stuck"), the run goes on.

        Returns:
            False when there is no attempt task to cancel (or it already ended).
        """
        if self.attempt is None or self.attempt.done():
            return False
        return self.attempt.cancel(msg=WATCHDOG_CANCEL)


CURRENT: ContextVar[EpisodeActivity | None] = ContextVar("areal_episode_activity", default=None)
"""The activity of the episode whose task (or child task) is running, if any."""


@contextlib.contextmanager
def phase(name: str, detail: str = "") -> Iterator[None]:
    """Mark the current episode as waiting on ``name`` for the ``with`` block.

    The previous phase comes back on exit, so phases nest (a tool call inside an
    env step). Outside a scheduled episode it only runs the block.
    """
    activity = CURRENT.get()
    if activity is None:
        yield
        return
    before = (activity.phase, activity.detail, activity.since)
    activity.phase, activity.detail, activity.since = name, detail, time.monotonic()
    try:
        yield
    finally:
        # An outer phase (an env step around a tool call) has lasted since it began;
        # the agent's own code has only had control back since now.
        activity.phase, activity.detail = before[0], before[1]
        activity.since = time.monotonic() if before[0] == AGENT else before[2]
