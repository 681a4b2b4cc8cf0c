"""Evaluate a model without training: ``python -m areal_env.eval [--config F.yaml] [k=v ...]``.

Users measure a model before they train it (and after). Every task is played
``eval.samples_per_task`` times through the trainer's own rollout path (engine
-> ChatClient -> agent -> env), at most ``eval.max_concurrent`` episodes at
once, and the run prints the mean reward, pass@k, the failures and the mean
number of turns. It writes one JSON line per episode (``eval.output_jsonl``,
default ``<output_dir>/eval.jsonl``) and a summary beside it
(``eval.summary.json``).

Config: the same tree as the trainer's (``model``, ``env``, ``agent``,
``inference``, ``seed``, ``output_dir``, ``torch_threads``) plus an ``eval``
section (:class:`EvalSettings`). A trainer's config file (``examples/*/grpo.yaml``
or a run's saved ``config.yaml``) loads as it is: :class:`EvalConfig` carries
each trainer-only section (:data:`TRAINER_ONLY_KEYS`: ``train``, ``algorithm``,
``warm_start``, ``rollout``, ``checkpoint``, ``metrics``, ``recover``) as an
optional untyped field that accepts anything and is ignored (a log line names
the ones that were set). So the same file and the same dotted overrides work for
both entry points, while a misspelt key anywhere else still fails at start-up.
In particular ``rollout.n_samples`` does not set the samples per task here;
``eval.samples_per_task`` does. The trainer's own ``eval`` section (evaluation
during training, :class:`~areal_env.config.TrainEvalConfig`) shares this one's
name: its keys with the same meaning (``seed_offset``, ``correct_threshold``,
``max_concurrent``, ``episode_timeout_s``) apply here too, its trainer-only keys
(:data:`TRAINER_ONLY_EVAL_KEYS`) are accepted and ignored.

During training, :func:`evaluate_in_training` plays the held-out tasks with
the run's engine at its current weights, greedy and sampled, and returns the
``eval/...`` metrics the trainer logs (docs/monitoring.md).

Task choice: task ``i`` (``0 <= i < eval.num_tasks``) resets the env with seed
``eval.seed_offset + i``, whatever ``seed`` is, so two models evaluated with the
same settings see the same tasks. The default offset (30,000,000) lies apart
from the warm start's seed ranges (10M and 20M); the trainer's RL task seeds are
31-bit hashes, so one of them equals an eval seed only by rare chance.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"):
for a task with ``n`` samples of which ``c`` are correct, the unbiased estimate
is ``1 - C(n - c, k) / C(n, k)``, the chance that ``k`` of the ``n`` samples
drawn without replacement hold at least one correct one; the reported value is
its mean over tasks. An episode is correct when its reward is
``>= eval.correct_threshold`` (default 1.0: the full reward, which for the 0/1
rewards of Math-v0 and Search-v0 (EM) is the same as ``> 0``, and for partial
credit such as F1 means a fully correct answer, as "passes all tests" does in
the paper). A failed episode (it raised, or ran past ``eval.episode_timeout_s``,
after ``eval.max_retries`` retries) counts as a sample that is not correct: an
eval never looks better because episodes crashed. The mean reward and mean
turns are over the finished episodes (a failed one has no reward).

pass^k (tau2-bench, Yao et al. 2024, "tau-bench"): the chance that all ``k``
of ``k`` samples drawn without replacement are correct, ``C(c, k) / C(n, k)``,
averaged over tasks: how reliably a model solves a task every time, where pass@k
measures whether it solves it at least once. It is reported for the same k as
pass@k (``pass^k`` keys and lines); ``pass^1`` equals ``pass@1``. When
``env.kwargs.domain`` is set (tau2's envs), the summary's ``domain`` names it:
one eval runs one env, so its pass^k is that domain's.

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
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import torch

from areal_env.agents.registry import make_agent
from areal_env.config import EVAL_SEED_OFFSET, EnvConfig, ModelConfig, TrainEvalConfig, load_config
from areal_env.inference.chat_client import ChatClient, SamplingConfig
from areal_env.inference.registry import InferenceConfig, load_engine, start_engine
from areal_env.models.load import model_dir
from areal_env.progress import progress_bar
from areal_env.resources import ResourceRegistry
from areal_env.rollout.episode import EpisodeFn, EpisodeOutcome, make_episode_fn, run_with_retries
from areal_env.trainers.build import (
    POLICY_CLIENT_KEY,
    Components,
    make_env_factory,
    seed_everything,
)
from areal_env.trainers.config import AgentConfig

__all__ = [
    "EvalConfig",
    "EvalSettings",
    "evaluate_in_training",
    "main",
    "mean_pass_at_k",
    "mean_pass_hat_k",
    "pass_at_k",
    "pass_hat_k",
    "run",
    "setup",
    "training_eval_episode_fns",
]

logger = logging.getLogger("areal_env.eval")


TRAINER_ONLY_KEYS = (
    "recover",
    "train",
    "algorithm",
    "warm_start",
    "rollout",
    "checkpoint",
    "metrics",
)
"""Top-level keys of the trainer's config that eval accepts and ignores."""

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


@dataclass(kw_only=True, slots=True)
class EvalConfig:
    """Root config of ``python -m areal_env.eval``: the trainer's tree plus ``eval``.

    The sections eval uses have the trainer's types and defaults. The trainer-only
    ones are untyped and ignored, so a trainer's config file loads unchanged.
    """

    seed: int = 1
    """Seeds torch, numpy and python (task seeds come from ``eval.seed_offset``)."""
    output_dir: str = "outputs/eval"
    """The embedded tiny model (when ``model.path`` is None) and, by default, the results."""
    torch_threads: int = 0
    """Intra-op CPU threads for torch; 0 keeps torch's default (one per core)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to evaluate; ``model.path`` may be a run's ``final_model`` folder."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """The env (``env.id``, ``env.kwargs``)."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """The agent that plays it (``agent.name``, ``agent.kwargs``)."""
    inference: InferenceConfig = field(
        default_factory=lambda: InferenceConfig(
            sampling=SamplingConfig(max_new_tokens=6, temperature=1.0)
        )
    )
    """Engine and sampling; the defaults are the trainer's."""
    eval: EvalSettings = field(default_factory=EvalSettings)
    """Tasks, samples per task, concurrency and output."""
    recover: Any = None
    """Trainer-only: accepted and ignored."""
    train: Any = None
    """Trainer-only: accepted and ignored."""
    algorithm: Any = None
    """Trainer-only: accepted and ignored."""
    warm_start: Any = None
    """Trainer-only: accepted and ignored."""
    rollout: Any = None
    """Trainer-only: accepted and ignored (``eval.samples_per_task`` sets the samples)."""
    checkpoint: Any = None
    """Trainer-only: accepted and ignored."""
    metrics: Any = None
    """Trainer-only: accepted and ignored (``eval.progress`` sets the progress bar)."""

    def ignored_keys(self) -> list[str]:
        """The trainer-only keys that were set (from a trainer's config or the command line)."""
        return [key for key in TRAINER_ONLY_KEYS if getattr(self, key) is not None]

    def used(self) -> dict[str, Any]:
        """The config without the ignored trainer-only keys (saved in the summary)."""
        used = {k: v for k, v in asdict(self).items() if k not in TRAINER_ONLY_KEYS}
        used["eval"] = {k: v for k, v in used["eval"].items() if k not in TRAINER_ONLY_EVAL_KEYS}
        return used


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


# --------------------------------------------------------------------------- running


@dataclass(kw_only=True, slots=True)
class EvalParts:
    """What an eval run builds: the rollout path and what must be closed after it."""

    episode_fn: EpisodeFn
    """``async (task_seed, sample_index) -> Trajectory`` on a fresh env and client."""
    close: Callable[[], Awaitable[None]]
    """``await close()`` releases the engine and the envs' shared resources."""
    start: Callable[[], Awaitable[None]] = field(default=lambda: _nothing())
    """``await start()`` launches or connects the engine's servers (if any)."""
    model: str
    """The model folder or hub id evaluated."""


def build_parts(cfg: EvalConfig) -> EvalParts:
    """Env, agent, model, engine and client, as the trainer builds them (one model copy).

    The env and agent are built first, so a bad ``env.*`` or ``agent.*`` fails
    before a model is loaded.

    Raises:
        ValueError: a bad env id, env kwargs, agent kwargs or model, naming the key.
    """
    resources = ResourceRegistry(name="eval")
    env_factory = make_env_factory(cfg.env.id, dict(cfg.env.kwargs), resources)
    agent = make_agent(cfg.agent.name, **cfg.agent.kwargs)
    engine, tokenizer = load_engine(cfg.model, cfg.inference, cfg.output_dir)
    client = ChatClient(engine, tokenizer, sampling=cfg.inference.sampling)
    resources.get(POLICY_CLIENT_KEY, lambda: client)  # envs that call the policy (tau2's user)

    async def close() -> None:
        await engine.close()
        await resources.aclose()

    async def start() -> None:
        await start_engine(engine)

    episode_fn = make_episode_fn(env_factory, agent, client.episode)
    return EvalParts(
        episode_fn=episode_fn, close=close, start=start, model=model_dir(cfg.model, cfg.output_dir)
    )


async def _nothing() -> None:
    return None


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


def training_eval_episode_fns(
    parts: Components, settings: TrainEvalConfig, env: EnvConfig, sampling: SamplingConfig
) -> tuple[EpisodeFn, EpisodeFn]:
    """``(sampled, greedy)`` episode functions for evaluation during training.

    Both play through the run's own engine, tokenizer, agent and shared env
    resources, so they measure the weights the engine holds now; the sampled one
    uses the run's sampling, the greedy one temperature 0. The env gets
    ``settings.env_kwargs`` over ``env.kwargs`` (a held-out split, if it has one).
    """
    env_factory = parts.env_factory
    if settings.env_kwargs:
        kwargs = {**env.kwargs, **settings.env_kwargs}
        env_factory = make_env_factory(env.id, kwargs, parts.resources)
    greedy = ChatClient(parts.engine, parts.tokenizer, sampling=replace(sampling, temperature=0.0))
    sampled = ChatClient(parts.engine, parts.tokenizer, sampling=sampling)
    return (
        make_episode_fn(env_factory, parts.agent, sampled.episode),
        make_episode_fn(env_factory, parts.agent, greedy.episode),
    )


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


def output_paths(cfg: EvalConfig) -> tuple[Path, Path]:
    """(episodes JSONL, summary JSON) of this eval."""
    jsonl = Path(cfg.eval.output_jsonl or Path(cfg.output_dir) / "eval.jsonl")
    return jsonl, jsonl.with_name(jsonl.name.removesuffix(".jsonl") + ".summary.json")


def setup(cfg: EvalConfig) -> EvalParts:
    """Seed, set torch threads, name the ignored trainer keys, and build the parts.

    Raises:
        ValueError: a bad env id, env kwargs, agent kwargs or model, naming the key.
    """
    if cfg.ignored_keys():
        logger.info("ignoring trainer-only config keys: %s", ", ".join(cfg.ignored_keys()))
    seed_everything(cfg.seed)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    return build_parts(cfg)


async def run(cfg: EvalConfig, parts: EvalParts) -> dict[str, Any]:
    """Play every episode, write the JSONL and the summary; return the summary.

    ``parts`` (from :func:`setup`) are closed at the end, on every path.
    """
    jsonl, summary_path = output_paths(cfg)
    start = time.perf_counter()
    try:
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        await parts.start()
        with jsonl.open("w", encoding="utf-8") as out:
            records = await play(parts.episode_fn, cfg.eval, out)
    finally:  # the engine's worker and what envs shared are released on every path
        await parts.close()
    summary = {
        **summarize(records, cfg.eval),
        "env": cfg.env.id,
        "domain": cfg.env.kwargs.get("domain"),
        "agent": cfg.agent.name,
        "model": parts.model,
        "elapsed_s": round(time.perf_counter() - start, 3),
        "episodes_jsonl": str(jsonl),
        "config": to_jsonable(cfg.used()),
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The lines printed at the end of an eval.

    Example:
        >>> s = {"env": "areal/Math-v0", "agent": "single_turn", "model": "m", "tasks": 2,
        ...      "samples_per_task": 2, "episodes": 4, "failed": 1, "mean_reward": 0.5,
        ...      "pass@1": 0.25, "pass@2": 0.5, "mean_turns": 1.0, "correct_threshold": 1.0}
        >>> print(format_summary(s))
        eval of m on areal/Math-v0 (agent single_turn): 2 tasks x 2 samples
          episodes      4 (failed 1)
          mean reward   0.5000
          pass@1        0.2500
          pass@2        0.5000
          mean turns    1.00
        correct: reward >= 1.0; failed episodes count as not correct
    """
    lines = [
        f"eval of {summary['model']} on {summary['env']} (agent {summary['agent']}): "
        f"{summary['tasks']} tasks x {summary['samples_per_task']} samples",
        f"  {'episodes':<13} {summary['episodes']} (failed {summary['failed']})",
        f"  {'mean reward':<13} {_fmt(summary['mean_reward'], 4)}",
    ]
    ks = sorted(int(key.removeprefix("pass@")) for key in summary if key.startswith("pass@"))
    lines += [f"  {f'pass@{k}':<13} {_fmt(summary[f'pass@{k}'], 4)}" for k in ks]
    hat_ks = sorted(int(key.removeprefix("pass^")) for key in summary if key.startswith("pass^"))
    domain = f" ({summary['domain']})" if summary.get("domain") else ""
    lines += [f"  {f'pass^{k}':<13} {_fmt(summary[f'pass^{k}'], 4)}{domain}" for k in hat_ks]
    lines.append(f"  {'mean turns':<13} {_fmt(summary['mean_turns'], 2)}")
    lines.append(
        f"correct: reward >= {summary['correct_threshold']}; failed episodes count as not correct"
    )
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: config from argv, evaluate, print the summary.

    Returns:
        0 when at least one episode finished; 1 when every episode failed (the
        setup is likely broken: the first error is printed); 2 for a config error.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(EvalConfig, argv)
        parts = setup(cfg)  # env, agent and model errors are config errors too
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    summary = asyncio.run(run(cfg, parts))
    print(format_summary(summary))
    jsonl, summary_path = output_paths(cfg)
    print(f"episodes in {jsonl}, summary in {summary_path}")
    if summary["failed"] == summary["episodes"]:
        first = next(_errors(jsonl), "?")
        print(f"every episode failed; first error: {first}", file=sys.stderr)
        return 1
    return 0


def _errors(jsonl: Path) -> Iterator[str]:
    with jsonl.open(encoding="utf-8") as f:
        for line in f:
            if error := json.loads(line).get("error"):
                yield error


if __name__ == "__main__":
    sys.exit(main())
