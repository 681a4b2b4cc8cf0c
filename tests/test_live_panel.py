"""The live panel: what it shows, that it redraws while the trainer waits, that it never crashes."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest
from rich.console import Console

from areal_env.config import MetricsConfig
from areal_env.live_panel import LivePanel, live_panel_enabled
from areal_env.rollout.scheduler import RolloutLiveStats

STATS = {
    "rollout/reward_mean": 0.625,
    "rollout/staleness_mean": 0.5,
    "rollout/staleness_max": 1.0,
    "throughput/gen_tokens_per_s": 123.4,
    "eval/greedy_pass@1": 0.25,
    "eval/pass@4": 0.75,
    "eval/time_s": 2.0,
}


def live(running=0, buffered=0, finished=0, failed=0, accepted=0, dropped=0, filtered=0):
    return RolloutLiveStats(
        running_episodes=running,
        buffered_groups=buffered,
        finished_episodes=finished,
        failed_episodes=failed,
        accepted_groups=accepted,
        dropped_groups=dropped,
        filtered_groups=filtered,
        stale_groups=0,
    )


class FakeScheduler:
    """Serves ``live_stats()`` the test changes, as the real ones change while groups run."""

    def __init__(self) -> None:
        self.stats = live()
        self.calls = 0

    def live_stats(self) -> RolloutLiveStats:
        self.calls += 1
        return self.stats


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _console(*, terminal: bool = False) -> Console:
    return Console(file=io.StringIO(), record=True, width=140, force_terminal=terminal)


def _text(panel: LivePanel) -> str:
    console = _console()
    console.print(panel.render())
    return console.export_text()


def test_the_panel_renders_progress_episodes_staleness_reward_throughput_and_eval():
    clock, scheduler = Clock(), FakeScheduler()
    scheduler.stats = live(finished=40, failed=2, accepted=5)  # before this run (resumed)
    panel = LivePanel(total_steps=10, start_step=2, scheduler=scheduler, clock=clock)
    panel.poll()  # baseline
    scheduler.stats = live(running=20, finished=56, failed=5, accepted=9, dropped=1)
    for step, reward in ((3, 0.25), (4, 0.625)):
        clock.now += 30.0
        panel.on_step(step, {**STATS, "rollout/reward_mean": reward})
    text = _text(panel)
    assert "step 4/10 (40%)" in text
    assert "ETA 0:03:00" in text  # 30 s a step, 6 steps left
    assert "running 20  finished 16  failed 3" in text
    assert "buffered 0, dropped 1, filtered 0" in text
    assert "mean 0.50  max 1" in text
    assert "last 0.625" in text and "▁█" in text  # the trend of 0.25 then 0.625
    assert "123.4" in text
    assert "greedy_pass@1 0.250" in text and "pass@4 0.750 (step 4)" in text
    assert "time_s" not in text


def test_before_the_first_step_it_says_what_it_waits_for_and_has_no_eta():
    panel = LivePanel(total_steps=5, clock=Clock())
    text = _text(panel)
    assert "step 0/5" in text and "ETA ?" in text
    assert "waiting for the first batch" in text
    assert "reward" not in text  # nothing to show yet


async def test_the_panel_redraws_while_the_trainer_waits_for_rollouts():
    scheduler = FakeScheduler()
    console = _console(terminal=True)
    panel = LivePanel(total_steps=3, scheduler=scheduler, console=console, refresh_s=0.01)
    async with panel.running():
        before = panel.refreshes
        scheduler.stats = live(running=6, failed=1)  # episodes start, no step happens
        await asyncio.sleep(0.15)  # the trainer awaits next_batch() meanwhile
        assert panel.refreshes >= before + 3
        assert panel.counts is not None and panel.counts.running == 6
        assert panel.counts.failed == 1
    assert "running 6  finished 0  failed 1" in console.export_text()
    calls = scheduler.calls
    await asyncio.sleep(0.05)
    assert scheduler.calls == calls, "the redraw task must stop with the panel"


async def test_a_rendering_error_turns_the_panel_off_logged_once_without_crashing(caplog):
    console = _console(terminal=True)
    panel = LivePanel(total_steps=3, scheduler=FakeScheduler(), console=console, refresh_s=0.01)
    with caplog.at_level(logging.ERROR, logger="areal_env.live_panel"):
        async with panel.running():
            panel.on_step(1, {"rollout/staleness_mean": "not a number"})  # format fails
            assert not panel.enabled
            panel.on_step(2, {"rollout/staleness_mean": "still not"})
            await asyncio.sleep(0.05)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "panel is off" in errors[0].getMessage()
    assert errors[0].exc_info is not None  # the traceback is kept


async def test_a_scheduler_that_raises_while_polled_turns_the_panel_off(caplog):
    class Broken(FakeScheduler):
        def live_stats(self) -> RolloutLiveStats:
            raise RuntimeError("boom")

    panel = LivePanel(total_steps=3, scheduler=Broken(), console=_console(), refresh_s=0.01)
    with caplog.at_level(logging.ERROR, logger="areal_env.live_panel"):
        async with panel.running():
            await asyncio.sleep(0.03)
    assert not panel.enabled
    assert sum(r.levelno >= logging.ERROR for r in caplog.records) == 1


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("live_panel", "progress", "tty", "ci", "want"),
    [
        (None, True, True, "", True),
        (None, True, False, "", False),  # redirected: the throttled bar
        (None, True, True, "true", False),  # CI
        (None, False, True, "", False),  # progress off
        (True, False, False, "true", True),  # explicit wins
        (False, True, True, "", False),
    ],
)
def test_the_panel_is_on_by_default_only_on_a_terminal_outside_ci(
    monkeypatch, live_panel, progress, tty, ci, want
):
    monkeypatch.setenv("CI", ci)
    config = MetricsConfig(live_panel=live_panel, progress=progress)
    stream = _Tty() if tty else io.StringIO()
    assert live_panel_enabled(config, stream) is want
