"""A live terminal panel of a training run (rich ``Live``), redrawn while it waits.

A progress bar moves once per step, but an asynchronous RL step can wait minutes
for rollouts (the first batch above all), and a bar then looks frozen. The panel
redraws every ``refresh_s`` seconds from an asyncio task on the trainer's own
event loop, so it shows rollouts progressing while the trainer waits:

* **step** and **ETA** (mean wall time of the recent steps times the steps left),
  the phase the trainer is in (waiting for rollouts, training, evaluating);
* **episodes** running now, finished and failed since the panel started, and
  groups buffered, dropped or filtered; live, read from
  ``scheduler.live_stats()`` (see :func:`live_counts`);
* **staleness** mean and max, **reward** of the last batch with a sparkline of
  the recent ones, **tokens/s** and the last **eval** results, from the metrics
  of each step (:meth:`LivePanel.on_step`).

It never ends a run: an exception while polling or rendering is logged once,
with its traceback, and the panel turns itself off (the step loop goes on;
``metrics.jsonl`` still has everything). :func:`live_panel_enabled` decides
whether a run gets it (``metrics.live_panel``; by default only on a terminal
outside CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Protocol

from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table

from areal_env.config import MetricsConfig
from areal_env.rollout.scheduler import RolloutLiveStats

__all__ = ["LiveCounts", "LivePanel", "live_counts", "live_panel_enabled", "sparkline"]

logger = logging.getLogger(__name__)

SPARKS = "▁▂▃▄▅▆▇█"


class LiveStatsSource(Protocol):
    """What the panel reads from a rollout scheduler."""

    def live_stats(self) -> RolloutLiveStats:
        """The scheduler's counters now."""
        ...


def live_panel_enabled(config: MetricsConfig, stream: IO[str] | None = None) -> bool:
    """Whether a run shows the live panel: ``metrics.live_panel``, else auto.

    Auto means on when ``stream`` (stdout by default) is a terminal, ``metrics.progress``
    is on and the ``CI`` environment variable is not set: redirected to a file, a
    redrawn panel would fill the log with frames, which the throttled bar avoids.
    """
    if config.live_panel is not None:
        return config.live_panel
    out = sys.stdout if stream is None else stream
    is_tty = bool(getattr(out, "isatty", lambda: False)())
    in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    return is_tty and config.progress and not in_ci


@dataclass(frozen=True, slots=True)
class LiveCounts:
    """Episode counts of the panel: running now, the rest since it started."""

    running: int
    """Episode attempts running now."""
    finished: int
    """Episodes that ended with a trajectory."""
    failed: int
    """Episodes that failed after their retries."""
    dropped_groups: int
    """Groups dropped for a failed member."""
    filtered_groups: int
    """Groups dropped by a filter (all rewards equal)."""
    buffered_groups: int
    """Accepted groups waiting for the trainer, now."""


def live_counts(now: RolloutLiveStats, baseline: RolloutLiveStats) -> LiveCounts:
    """The panel's counts: ``now``'s running and buffered, the totals since ``baseline``.

    Example:
        >>> base = RolloutLiveStats(0, 0, finished_episodes=8, failed_episodes=1,
        ...     accepted_groups=2, dropped_groups=0, filtered_groups=0, stale_groups=0)
        >>> now = RolloutLiveStats(12, 1, finished_episodes=30, failed_episodes=2,
        ...     accepted_groups=7, dropped_groups=1, filtered_groups=0, stale_groups=0)
        >>> c = live_counts(now, base)
        >>> c.running, c.finished, c.failed, c.buffered_groups, c.dropped_groups
        (12, 22, 1, 1, 1)
    """
    return LiveCounts(
        running=now.running_episodes,
        finished=now.finished_episodes - baseline.finished_episodes,
        failed=now.failed_episodes - baseline.failed_episodes,
        dropped_groups=now.dropped_groups - baseline.dropped_groups,
        filtered_groups=now.filtered_groups - baseline.filtered_groups,
        buffered_groups=now.buffered_groups,
    )


def sparkline(values: list[float]) -> str:
    """Values as block characters scaled between their min and max.

    Example:
        >>> sparkline([0.0, 0.5, 1.0])
        '▁▅█'
    """
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        return SPARKS[len(SPARKS) // 2] * len(values)
    return "".join(SPARKS[round((v - low) / span * (len(SPARKS) - 1))] for v in values)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class LivePanel:
    """The panel of one run; :meth:`start` it inside ``scheduler.running()``.

    Args:
        total_steps: the run's last step.
        start_step: the step it starts after (non-zero on resume).
        scheduler: read for live episode counts (anything with ``live_stats()``);
            None shows only what :meth:`on_step` reports.
        console: where to draw; a new stdout console by default.
        refresh_s: seconds between redraws.
        title: the first word of the panel (the trainer's name).
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        *,
        total_steps: int,
        start_step: int = 0,
        scheduler: LiveStatsSource | None = None,
        console: Console | None = None,
        refresh_s: float = 0.5,
        title: str = "grpo",
        trend: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_steps = total_steps
        self.start_step = start_step
        self.step = start_step
        self.scheduler = scheduler
        self.console = console or Console()
        self.refresh_s = refresh_s
        self.title = title
        self.clock = clock
        self.enabled = True
        self.phase = "waiting for the first batch"
        self.stats: dict[str, float] = {}
        self.eval: dict[str, float] = {}
        self.eval_step: int | None = None
        self.rewards: deque[float] = deque(maxlen=trend)
        self.step_times: deque[float] = deque(maxlen=10)
        self.counts: LiveCounts | None = None
        self.refreshes = 0
        self._baseline: RolloutLiveStats | None = None
        self._started_at = clock()
        self._phase_since = self._started_at
        self._last_step_at = self._started_at
        self._live: Live | None = None
        self._task: asyncio.Task[None] | None = None
        self._log_streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    # ------------------------------------------------------------------ inputs

    def set_phase(self, phase: str) -> None:
        """What the trainer does now (shown with how long it has been at it)."""
        self.phase, self._phase_since = phase, self.clock()

    def on_step(self, step: int, stats: Mapping[str, float]) -> None:
        """Record a finished step's metrics (the dict the trainer logs) and redraw."""
        now = self.clock()
        self.step_times.append(now - self._last_step_at)
        self._last_step_at = now
        self.step = step
        self.stats = dict(stats)
        if "rollout/reward_mean" in stats:
            self.rewards.append(float(stats["rollout/reward_mean"]))
        evals = {k: v for k, v in stats.items() if k.startswith("eval/")}
        if evals:
            self.eval, self.eval_step = evals, step
        self.refresh()

    # ------------------------------------------------------------------ output

    def eta_s(self) -> float | None:
        """Seconds to the last step at the recent steps' pace; None before a step."""
        if not self.step_times:
            return None
        mean = sum(self.step_times) / len(self.step_times)
        return mean * max(0, self.total_steps - self.step)

    def render(self) -> RenderableType:
        """The panel as a rich table (two columns: what, values)."""
        now = self.clock()
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        done = self.step / self.total_steps if self.total_steps else 1.0
        eta = self.eta_s()
        table.add_row(
            self.title,
            f"step {self.step}/{self.total_steps} ({done:.0%})  "
            f"ETA {'?' if eta is None else _duration(eta)}  "
            f"elapsed {_duration(now - self._started_at)}",
        )
        table.add_row("now", f"{self.phase} ({now - self._phase_since:.1f} s)")
        c = self.counts
        if c is not None:
            table.add_row(
                "episodes",
                f"running {c.running}  finished {c.finished}  failed {c.failed}  "
                f"(groups buffered {c.buffered_groups}, dropped {c.dropped_groups}, "
                f"filtered {c.filtered_groups})",
            )
        s = self.stats
        if "rollout/staleness_mean" in s:
            table.add_row(
                "staleness",
                f"mean {s['rollout/staleness_mean']:.2f}  "
                f"max {s.get('rollout/staleness_max', float('nan')):.0f}",
            )
        if self.rewards:
            table.add_row(
                "reward",
                f"last {self.rewards[-1]:.3f}  trend {sparkline(list(self.rewards))} "
                f"(last {len(self.rewards)} steps)",
            )
        if "throughput/gen_tokens_per_s" in s:
            table.add_row("tokens/s", f"{s['throughput/gen_tokens_per_s']:.1f}")
        if self.eval:
            shown = "  ".join(
                f"{k.removeprefix('eval/')} {v:.3f}"
                for k, v in sorted(self.eval.items())
                if "pass" in k
            )
            table.add_row("eval", f"{shown} (step {self.eval_step})")
        return table

    def poll(self) -> None:
        """Read the scheduler's live counts (nothing without a scheduler)."""
        if self.scheduler is None:
            return
        now = self.scheduler.live_stats()
        if self._baseline is None:
            self._baseline = now
        self.counts = live_counts(now, self._baseline)

    def refresh(self) -> None:
        """Poll and redraw; the first error turns the panel off, logged."""
        if not self.enabled:
            return
        try:
            self.poll()
            renderable = self.render()
            if self._live is not None:
                self._live.update(renderable, refresh=True)
            self.refreshes += 1
        except Exception:
            self._fail("refresh")

    # ------------------------------------------------------------------ lifetime

    def start(self) -> None:
        """Start drawing, and the redraw task on the running event loop.

        Call it inside ``scheduler.running()``: its state is the baseline of the counts.
        """
        if not self.enabled:
            return
        try:
            self.poll()  # the baseline, before anything finished
            self._live = Live(
                self.render(), console=self.console, auto_refresh=False, transient=False
            )
            self._live.start(refresh=True)
            self._route_logs()
            self._task = asyncio.get_running_loop().create_task(self._redraw(), name="live_panel")
        except Exception:
            self._fail("start")

    async def stop(self) -> None:
        """Stop the redraw task and leave the last frame on screen."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.set_phase("finished" if self.step >= self.total_steps else "stopped")
        self.refresh()
        self._close_live()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LivePanel]:
        """:meth:`start` on entry, :meth:`stop` on exit, whatever ends the block."""
        self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def _redraw(self) -> None:
        while self.enabled:
            await asyncio.sleep(self.refresh_s)
            self.refresh()

    def _route_logs(self) -> None:
        """Send console log handlers through rich's redirect, so lines print above the panel."""
        proxies = {id(sys.__stdout__): sys.stdout, id(sys.__stderr__): sys.stderr}
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and id(handler.stream) in proxies:
                proxy = proxies[id(handler.stream)]
                if proxy is not handler.stream:  # rich redirects only on a terminal
                    self._log_streams.append((handler, handler.setStream(proxy)))

    def _close_live(self) -> None:
        for handler, stream in self._log_streams:
            handler.setStream(stream)
        self._log_streams.clear()
        live, self._live = self._live, None
        if live is not None:
            try:
                live.stop()
            except Exception:
                logger.debug("the live panel did not stop cleanly", exc_info=True)

    def _fail(self, where: str) -> None:
        self.enabled = False
        logger.exception("live panel %s failed; the panel is off for the rest of the run", where)
        self._close_live()
