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
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from areal_env.agents.registry import make_agent
from areal_env.config import EnvConfig, ModelConfig, load_config
from areal_env.evaluation import (
    TRAINER_ONLY_EVAL_KEYS,
    EvalSettings,
    evaluate_in_training,
    mean_pass_at_k,
    mean_pass_hat_k,
    pass_at_k,
    pass_hat_k,
    play,
    summarize,
    to_jsonable,
)
from areal_env.inference.chat_client import ChatClient, SamplingConfig
from areal_env.inference.registry import InferenceConfig, load_engine, start_engine
from areal_env.models.load import model_dir
from areal_env.resources import ResourceRegistry
from areal_env.rollout.episode import EpisodeFn, make_episode_fn
from areal_env.trainers.build import (
    POLICY_CLIENT_KEY,
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
