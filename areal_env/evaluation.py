"""Evaluation as a library: settings, pass@k and pass^k, episode records, playing tasks.

``python -m areal_env.eval`` (a model before or after training) and the trainers'
evaluation during training (``eval.every_steps``) share this code, so both
measure the same way; the entry point itself lives in ``areal_env/eval.py`` and
builds model, env and agent, which a library module may not do. The metrics are
documented there: pass@k (Chen et al. 2021) and pass^k (tau-bench).

Example:
    >>> pass_at_k(n=4, c=1, k=2)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from areal_env.config import EVAL_SEED_OFFSET, TrainEvalConfig
from areal_env.progress import progress_bar
from areal_env.rollout.episode import EpisodeFn, EpisodeOutcome, run_with_retries

logger = logging.getLogger("areal_env.eval")

TRAINER_ONLY_EVAL_KEYS = ("every_steps", "episodes", "k", "env_kwargs")
"""Keys of the trainer's ``eval`` section (evaluation during training) ignored here."""


@dataclass(kw_only=True, slots=True)
class EvalSettings:
    """The ``eval`` section: which tasks, how many samples, where the results go."""

    num_tasks: int = 64
    """Tasks to evaluate; task i resets the env with seed ``seed_offset + i``."""
    samples_per_task: int = 4
    """Episodes per task: the n of pass@k (each an independent sample)."""
    seed_offset: int = EVAL_SEED_OFFSET
    """Seed of task 0; the same for every model, so their results compare."""
    pass_k: list[int] = field(default_factory=list)
    """Extra k of pass@k to report; pass@1 and pass@samples_per_task always are."""
    correct_threshold: float = 1.0
    """An episode counts as correct for pass@k when its reward is >= this."""
    max_concurrent: int = 64
    """Most episodes in flight at once."""
    max_retries: int = 0
    """Fresh attempts for an episode that raised before it is recorded as failed."""
    episode_timeout_s: float | None = None
    """Time limit per episode attempt in seconds (a timeout is a failure); None: no limit."""
    output_jsonl: str | None = None
    """One JSON line per episode; None: ``<output_dir>/eval.jsonl``. The summary goes
    beside it, ``.jsonl`` replaced by ``.summary.json``."""
    progress: bool = True
    """Show a progress bar."""
    every_steps: Any = None
    """Trainer-only (evaluation during training): accepted and ignored."""
    episodes: Any = None
    """Trainer-only: accepted and ignored (``num_tasks`` sets the tasks here)."""
    k: Any = None
    """Trainer-only: accepted and ignored (``samples_per_task`` and ``pass_k`` set k here)."""
    env_kwargs: Any = None
    """Trainer-only: accepted and ignored (``env.kwargs`` sets the env here)."""

    def __post_init__(self) -> None:
        for key in ("num_tasks", "samples_per_task", "max_concurrent"):
            if getattr(self, key) < 1:
                raise ValueError(f"eval.{key} must be >= 1, got {getattr(self, key)}")
        if self.seed_offset < 0:
            raise ValueError(f"eval.seed_offset must be >= 0, got {self.seed_offset}")
        if self.max_retries < 0:
            raise ValueError(f"eval.max_retries must be >= 0, got {self.max_retries}")
        if self.episode_timeout_s is not None and self.episode_timeout_s <= 0:
            raise ValueError(
                f"eval.episode_timeout_s must be > 0 or None, got {self.episode_timeout_s}"
            )
        if not math.isfinite(self.correct_threshold):
            raise ValueError(
                f"eval.correct_threshold must be a finite number, got {self.correct_threshold}"
            )
        bad = [k for k in self.pass_k if not 1 <= k <= self.samples_per_task]
        if bad:
            raise ValueError(
                f"eval.pass_k values must be in [1, eval.samples_per_task="
                f"{self.samples_per_task}], got {bad}"
            )
        if self.output_jsonl is not None and not self.output_jsonl.endswith(".jsonl"):
            raise ValueError(f"eval.output_jsonl must end in .jsonl, got {self.output_jsonl!r}")

    @property
    def ks(self) -> list[int]:
        """The k values of pass@k to report, ascending."""
        return sorted({1, self.samples_per_task, *self.pass_k})


# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task: ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021).

    The chance that ``k`` samples drawn without replacement from ``n``, of which
    ``c`` are correct, include a correct one. Exact integer binomials, so it is
    right for any ``n`` (the paper's product form avoids overflow in numpy only).

    Example:
        >>> pass_at_k(n=5, c=0, k=3), pass_at_k(n=5, c=3, k=3), pass_at_k(n=5, c=2, k=1)
        (0.0, 1.0, 0.4)

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(correct_per_task: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over tasks of :func:`pass_at_k`; each task's list holds its samples' correctness.

    Example:
        >>> mean_pass_at_k([[True, False], [False, False]], k=1)
        0.25
    """
    if not correct_per_task:
        raise ValueError("mean_pass_at_k needs at least one task")
    scores = [pass_at_k(len(t), sum(t), k) for t in correct_per_task]
    return sum(scores) / len(scores)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """tau2's pass^k of one task: ``C(c, k) / C(n, k)``, all ``k`` of ``k`` draws correct.

    The chance that ``k`` samples drawn without replacement from ``n``, of which
    ``c`` are correct, are all correct (exact integer binomials).

    Example:
        >>> pass_hat_k(n=4, c=2, k=2), pass_hat_k(n=5, c=5, k=3), pass_hat_k(n=5, c=2, k=3)
        (0.16666666666666666, 1.0, 0.0)

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_hat_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return math.comb(c, k) / math.comb(n, k)


def mean_pass_hat_k(correct_per_task: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over tasks of :func:`pass_hat_k`; each task's list holds its samples' correctness.

    Example:
        >>> mean_pass_hat_k([[True, True], [True, False]], k=2)
        0.5
    """
    if not correct_per_task:
        raise ValueError("mean_pass_hat_k needs at least one task")
    scores = [pass_hat_k(len(t), sum(t), k) for t in correct_per_task]
    return sum(scores) / len(scores)


# --------------------------------------------------------------------------- records


def episode_record(
    *,
    task_index: int,
    task_seed: int,
    sample_index: int,
    outcome: EpisodeOutcome,
    correct_threshold: float,
) -> dict[str, Any]:
    """The JSON line of one episode; a failed one has ``reward`` None and its ``error``."""
    traj = outcome.trajectory
    record: dict[str, Any] = {
        "task_index": task_index,
        "task_seed": task_seed,
        "sample_index": sample_index,
        "task_id": traj.task_id if traj is not None else None,
        "reward": traj.reward if traj is not None else None,
        "correct": traj is not None and traj.reward >= correct_threshold,
        "num_turns": traj.num_turns if traj is not None else None,
        "truncated": traj.truncated if traj is not None else None,
        "messages": to_jsonable(traj.messages) if traj is not None else None,
        "info": to_jsonable(traj.info) if traj is not None else None,
        "metrics": to_jsonable(traj.metrics) if traj is not None else None,
        "attempts": outcome.attempts,
        "error": None,
    }
    if outcome.error is not None:
        record["error"] = f"{type(outcome.error).__name__}: {outcome.error}"
        record["error_kinds"] = list(outcome.errors)
    return record


def to_jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot hold turned into something it can.

    Dict keys become strings, tuples and sets lists, numpy and torch scalars
    Python numbers, and anything else its ``repr``: an env may put any object
    in ``info``, and one odd value must not lose the line.

    Example:
        >>> import numpy as np
        >>> to_jsonable({1: (np.float32(0.5), {"a"}), "x": object}) == {"1": [0.5, ["a"]],
        ...     "x": "<class 'object'>"}
        True
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v) for v in items]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        return to_jsonable(item())
    return repr(value)


def summarize(records: Iterable[dict[str, Any]], settings: EvalSettings) -> dict[str, Any]:
    """The eval's numbers from its episode records (see the module docstring for pass@k)."""
    by_task: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_task[r["task_index"]].append(r)
    every = [r for task in by_task.values() for r in task]
    done = [r for r in every if r["error"] is None]
    correct = [[r["correct"] for r in task] for task in by_task.values()]
    errors = Counter(kind for r in every for kind in r.get("error_kinds", []))
    summary: dict[str, Any] = {
        "tasks": len(by_task),
        "samples_per_task": settings.samples_per_task,
        "episodes": len(every),
        "failed": len(every) - len(done),
        "mean_reward": _mean([r["reward"] for r in done]),
        "mean_turns": _mean([float(r["num_turns"]) for r in done]),
        "truncated_rate": _mean([float(bool(r["truncated"])) for r in done]),
        "correct_threshold": settings.correct_threshold,
        "errors": dict(sorted(errors.items())),
    }
    for k in settings.ks:  # every task has samples_per_task records, failures included
        summary[f"pass@{k}"] = mean_pass_at_k(correct, k) if correct else None
    for k in settings.ks:
        summary[f"pass^{k}"] = mean_pass_hat_k(correct, k) if correct else None
    return summary


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def jobs(settings: EvalSettings) -> Iterator[tuple[int, int, int]]:
    """``(task_index, task_seed, sample_index)`` of every episode, a task's samples together.

    Example:
        >>> list(jobs(EvalSettings(num_tasks=2, samples_per_task=2, seed_offset=5)))
        [(0, 5, 0), (0, 5, 1), (1, 6, 0), (1, 6, 1)]
    """
    for i in range(settings.num_tasks):
        for s in range(settings.samples_per_task):
            yield i, settings.seed_offset + i, s


async def play(
    episode_fn: EpisodeFn,
    settings: EvalSettings,
    out: TextIO,
) -> list[dict[str, Any]]:
    """Play every episode, ``settings.max_concurrent`` at a time; write each line as it ends.

    An episode that raises is retried ``settings.max_retries`` times and then
    recorded as failed; it never stops the others. Lines are written (and
    flushed) in the order episodes finish, so a long eval can be watched.
    """
    pending = jobs(settings)  # shared by the workers: each job is taken exactly once
    total = settings.num_tasks * settings.samples_per_task
    records: list[dict[str, Any]] = []
    reward_sum, finished = 0.0, 0  # running mean for the bar, O(1) per episode
    bar = progress_bar(total=total, desc="eval", enabled=settings.progress)

    async def worker() -> None:
        nonlocal reward_sum, finished
        for task_index, task_seed, sample_index in pending:
            outcome = await run_with_retries(
                functools.partial(episode_fn, task_seed, sample_index),
                max_retries=settings.max_retries,
                timeout_s=settings.episode_timeout_s,
            )
            record = episode_record(
                task_index=task_index,
                task_seed=task_seed,
                sample_index=sample_index,
                outcome=outcome,
                correct_threshold=settings.correct_threshold,
            )
            records.append(record)
            out.write(json.dumps(record) + "\n")
            out.flush()
            if outcome.trajectory is not None:
                reward_sum, finished = reward_sum + outcome.trajectory.reward, finished + 1
                bar.set_postfix(reward=f"{reward_sum / finished:.3f}", refresh=False)
            bar.update(1)

    try:
        # A TaskGroup: should a worker itself crash (a bug here, not a bad episode),
        # the others are cancelled and the error propagates.
        async with asyncio.TaskGroup() as group:
            for w in range(min(settings.max_concurrent, total)):
                group.create_task(worker(), name=f"eval_worker_{w}")
    finally:
        bar.close()
    return records


# --------------------------------------------------------------------------- during training


async def evaluate_in_training(
    settings: TrainEvalConfig,
    *,
    sampled_fn: EpisodeFn,
    greedy_fn: EpisodeFn,
    out: TextIO | None = None,
    line_fields: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Greedy pass@1 and sampled pass@k on the held-out tasks; the ``eval/...`` metrics.

    Task ``i`` has seed ``settings.seed_offset + i`` as in a standalone eval; it is
    played once with ``greedy_fn`` and ``settings.k`` times with ``sampled_fn``
    (through :func:`play`, so failures count as not correct). The trainer calls this
    between steps, after the weight push, and never touches the rollout scheduler:
    eval episodes carry no training data and change no version or staleness count.

    Args:
        settings: the trainer's ``eval`` section.
        sampled_fn: episodes at the run's sampling temperature.
        greedy_fn: episodes at temperature 0.
        out: when given, every episode's JSON line (with ``"mode"``) is written here.
        line_fields: added to every line written to ``out`` (the trainer adds ``step``).

    Returns:
        ``eval/greedy_pass@1``, ``eval/greedy_reward_mean``, ``eval/pass@1``,
        ``eval/pass@{k}``, ``eval/pass^{k}``, ``eval/reward_mean``, ``eval/failed``,
        ``eval/episodes`` and ``eval/time_s``; reward means are absent when every
        episode failed.
    """
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    failed = episodes = 0
    for mode, fn, n in (("greedy", greedy_fn, 1), ("sampled", sampled_fn, settings.k)):
        plan = EvalSettings(
            num_tasks=settings.episodes,
            samples_per_task=n,
            seed_offset=settings.seed_offset,
            correct_threshold=settings.correct_threshold,
            max_concurrent=settings.max_concurrent,
            episode_timeout_s=settings.episode_timeout_s,
            progress=False,
        )
        records = await play(fn, plan, io.StringIO())
        summary = summarize(records, plan)
        prefix = "eval/greedy_" if mode == "greedy" else "eval/"
        keys = ["pass@1"] if mode == "greedy" else [*{"pass@1", f"pass@{n}", f"pass^{n}"}]
        metrics |= {f"{prefix}{key}": float(summary[key]) for key in sorted(keys)}
        if summary["mean_reward"] is not None:
            metrics[f"{prefix}reward_mean"] = float(summary["mean_reward"])
        failed, episodes = failed + summary["failed"], episodes + summary["episodes"]
        if out is not None:
            for record in sorted(records, key=lambda r: (r["task_index"], r["sample_index"])):
                line = {**(line_fields or {}), "mode": mode, **record}
                out.write(json.dumps(line) + "\n")
    metrics["eval/failed"] = float(failed)
    metrics["eval/episodes"] = float(episodes)
    metrics["eval/time_s"] = time.perf_counter() - start
    return metrics
