"""GRPO-family trainer: ``python trainers/grpo.py [--config F.yaml] [--resume] [k=v ...]``.

With ``train.backend=fsdp`` (or ``megatron``) it also runs as ``torchrun
--nproc-per-node N trainers/grpo.py ...``: rank 0 runs everything below, the other
ranks only hold model shards and follow rank 0's backend calls (docs/distributed.md).

The algorithm (GRPO, Shao et al. 2024, with AReaL's asynchronous rollouts):

1. The rollout scheduler keeps episodes running in the background: each task is
   played ``n_samples`` times (a group), and no episode starts more than
   ``max_head_offpolicyness`` weight versions ahead of the trainer.
2. Each step takes ``batch_size`` finished groups; advantages are group-relative
   ((r - mean) / (std + eps) for GRPO; the preset picks the estimator).
3. Rows of groups whose rewards are all equal have zero advantage and are
   skipped in the train pass (no gradient, so only wasted compute).
4. Token-level clipped PPO loss against the *behaviour* logprobs recorded by
   the engine at sampling time, plus an optional KL penalty to the frozen
   warm-start model; ``train.ppo_minibatches`` optimizer steps per batch.
5. New weights go to the engine (pause -> load -> version+1 -> resume).

Departures from the paper: the KL term defaults to k3 against the warm-start
model, not the pretrained model (the embedded run starts from scratch); the
loss is token-mean, as in AReaL and DAPO; with ``max_head_offpolicyness > 0``
samples may be a version or more stale, and the clipped ratio against the
behaviour logprobs bounds how far such samples can pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import gc
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from areal_env.checkpoint import (
    Saveable,
    TrainerState,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from areal_env.config import load_config
from areal_env.episode_dump import EpisodeDumper
from areal_env.evaluation import evaluate_in_training
from areal_env.inference.registry import start_engine
from areal_env.live_panel import LivePanel, live_panel_enabled
from areal_env.metrics import MetricsLogger, drop_rows_after_step
from areal_env.progress import progress_bar
from areal_env.rollout.scheduler import RolloutScheduler
from areal_env.trainers.algorithms.advantages import compute_advantages
from areal_env.trainers.algorithms.overlong import apply_overlong_penalty
from areal_env.trainers.algorithms.presets import critic_preset_hint
from areal_env.trainers.backends.base import TrainBackend
from areal_env.trainers.backends.ranks import check_train_config, run_on_ranks
from areal_env.trainers.backends.registry import make_backend
from areal_env.trainers.build import Components, build_components, seed_everything
from areal_env.trainers.config import GRPOConfig
from areal_env.trainers.training_eval import training_eval_episode_fns
from areal_env.trainers.warm_start import (
    restore_warm_started_base,
    save_warm_started_base,
    warm_start,
)
from areal_env.trainers.weight_sync import push_weights
from areal_env.types import EpisodeBatch

logger = logging.getLogger("areal_env.grpo")

GC_THRESHOLDS = (50_000, 50, 100)
"""``gc.set_threshold`` while a run lasts (Python's default: 700, 10, 10); measured in
benchmarks/scheduler_scale.py (``--gc-threshold 50000``)."""

EVAL_EPISODES_FILE = "eval_episodes.jsonl"
"""Under ``output_dir``: one line per episode of each evaluation during training."""


class StepHooks:
    """Where a trainer built on this loop adds a model (trainers/ppo.py's critic).

    The defaults are GRPO's own behaviour, so ``StepHooks()`` changes nothing; a
    subclass overrides what it adds instead of copying the step loop.
    """

    def setup(self, cfg: GRPOConfig, parts: Components, backend: TrainBackend) -> None:
        """Called once the policy is warm-started and its backend built, before resume."""

    def advantages(self, batch: EpisodeBatch, estimator: str) -> EpisodeBatch:
        """Fill the batch's advantages (default: the preset's reward-only estimator)."""
        return compute_advantages(batch, estimator)

    def after_policy_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """An extra update after the policy's (in a worker thread); its metrics."""
        return {}

    def checkpointed(self, backend: TrainBackend) -> Saveable:
        """What checkpoints save and resume loads: the backend, plus what a hook adds."""
        return backend


def make_scheduler(cfg: GRPOConfig, parts: Components, version: int) -> RolloutScheduler:
    """The rollout scheduler, with the preset's group filter (DAPO's dynamic sampling)."""
    preset = cfg.algorithm.resolved()
    rollout = dataclasses.replace(
        cfg.rollout, filter_all_equal=cfg.rollout.filter_all_equal or preset.filter_all_equal_groups
    )
    return RolloutScheduler(rollout, parts.episode_fn, version=version)


def trainable_rows(batch: EpisodeBatch) -> list[int]:
    """Rows (indices into ``batch.row_refs()``) with a non-zero advantage somewhere.

    All-equal groups have zero advantage: no gradient, only wasted compute.
    """
    refs = batch.row_refs()
    if batch.token_advantages is not None:
        return [
            i for i, adv in enumerate(batch.token_advantages) if any(abs(a) > 1e-8 for a in adv)
        ]
    flat = [a for g in batch.advantages or [] for a in g]
    return [i for i, ref in enumerate(refs) if flat and abs(flat[ref.episode]) > 1e-8]


async def train(
    cfg: GRPOConfig,
    parts: Components,
    backend: TrainBackend,
    scheduler: RolloutScheduler,
    metrics: MetricsLogger,
    start_step: int,
    hooks: StepHooks | None = None,
    *,
    resumed: bool = False,
) -> None:
    """The step loop: batch -> advantages -> train -> push weights -> eval -> log -> checkpoint.

    Progress shows as the live panel (``metrics.live_panel``) or the tqdm bar.
    Evaluation (``eval.every_steps``) runs after the weight push, beside the
    rollouts but outside the scheduler, so versions and staleness are untouched;
    its ``eval/...`` metrics join the step's row. ``resumed`` keeps the episode
    dump's rows up to ``start_step``, as the metrics file does.
    """
    hooks = hooks or StepHooks()
    preset = cfg.algorithm.resolved()
    loss_fn = preset.loss_fn(max_len=cfg.inference.sampling.max_new_tokens)
    out = Path(cfg.output_dir)
    weights_dir = out / "weights"
    panel = None
    if live_panel_enabled(cfg.metrics):
        panel = LivePanel(
            total_steps=cfg.train.steps,
            start_step=start_step,
            scheduler=scheduler,
        )
    bar = progress_bar(
        total=cfg.train.steps,
        initial=start_step,
        desc="grpo",
        enabled=cfg.metrics.progress and panel is None,
    )
    dumper = EpisodeDumper(
        out,
        every=cfg.metrics.dump_episodes_every,
        count=cfg.metrics.dump_episodes,
        tokenizer=parts.tokenizer,
        resume_after_step=start_step if resumed else None,
    )
    eval_fns = None
    if cfg.eval.every_steps:
        eval_fns = training_eval_episode_fns(parts, cfg.eval, cfg.env, cfg.inference.sampling)
        if resumed:  # the steps after the checkpoint evaluate again
            drop_rows_after_step(out / EVAL_EPISODES_FILE, start_step)
        else:  # a fresh run in an old folder starts a fresh file
            (out / EVAL_EPISODES_FILE).unlink(missing_ok=True)
    phase = panel.set_phase if panel is not None else (lambda _: None)
    async with scheduler.running(), panel.running() if panel else contextlib.nullcontext():
        for step in range(start_step, cfg.train.steps):
            t0 = time.perf_counter()
            phase("waiting for rollouts" if step > start_step else "waiting for the first batch")
            batch = await scheduler.next_batch()
            t_wait = time.perf_counter() - t0
            phase("training")
            shaped = {}
            if preset.overlong_buffer_frac > 0:  # DAPO: before advantages, after filtering
                shaped = apply_overlong_penalty(
                    batch,
                    max_len=cfg.inference.sampling.max_new_tokens,
                    buffer_frac=preset.overlong_buffer_frac,
                    factor=preset.overlong_factor,
                )
            batch = hooks.advantages(batch, preset.advantage)
            rows = trainable_rows(batch)
            num_rows = len(batch.row_refs())
            stats = {}
            if rows:  # a batch of only all-equal groups carries no gradient
                step_loss = cfg.algorithm.step_loss(loss_fn, version=step)  # decoupled PPO
                stats = await asyncio.to_thread(backend.train_step, batch, step_loss, rows)
            stats |= await asyncio.to_thread(hooks.after_policy_step, batch)
            version = step + 1
            await push_weights(
                backend, parts.engine, scheduler, version=version, weights_dir=weights_dir
            )
            step_s = time.perf_counter() - t0
            gen_tokens = batch.stats.get("rollout/gen_tokens", 0.0)
            evals: dict[str, float] = {}
            if eval_fns is not None and cfg.eval.due(version, cfg.train.steps):
                phase("evaluating")  # at weights `version`, pushed above
                with (out / EVAL_EPISODES_FILE).open("a") as lines:
                    evals = await evaluate_in_training(
                        cfg.eval,
                        sampled_fn=eval_fns[0],
                        greedy_fn=eval_fns[1],
                        out=lines,
                        line_fields={"step": version},
                    )
            row = {
                **batch.stats,
                **shaped,
                **stats,
                **evals,
                "time/step_s": step_s,
                "time/wait_rollout_s": t_wait,
                "throughput/gen_tokens_per_s": gen_tokens / max(step_s, 1e-9),
                "train/trained_fraction": len(rows) / max(num_rows, 1),
                "train/version": float(version),
            }
            metrics.log(version, row)
            dumper.maybe_dump(batch, step=version, version=version)
            if panel is not None:
                panel.on_step(version, row)
            bar.update(1)
            bar.set_postfix(
                reward=f"{batch.stats.get('rollout/reward_mean', 0):.3f}", refresh=False
            )
            every = cfg.checkpoint.every_steps
            if version == cfg.train.steps or (every and version % every == 0):
                state = TrainerState(
                    step=version, version=version, scheduler=scheduler.state_dict()
                )
                saved = hooks.checkpointed(backend)
                save_checkpoint(cfg.output_dir, state, saved, keep_last=cfg.checkpoint.keep_last)
    bar.close()


async def run(cfg: GRPOConfig, hooks: StepHooks | None = None) -> Path:
    """Build everything, warm-start or resume, train, save the final model."""
    seed_everything(cfg.seed)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    parts = build_components(cfg)
    thresholds = gc.get_threshold()
    # Each episode in flight keeps ~80 GC-tracked objects alive, and with the default
    # thresholds every full collection walks all of them: 25-68% of the rollout driver's
    # CPU at 100-10,000 episodes in flight, 3x less per episode with these
    # (benchmarks/scheduler_scale.py). Cycles are still collected, only less often.
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        return await _run(cfg, parts, hooks or StepHooks())
    finally:  # the engine's worker and what envs shared are released on every path
        gc.set_threshold(*thresholds)
        await parts.engine.close()
        await parts.resources.aclose()


async def _run(cfg: GRPOConfig, parts: Components, hooks: StepHooks) -> Path:
    out = Path(cfg.output_dir)
    await start_engine(parts.engine)  # a wrong or dead server stops the run here, named
    checkpoints = list_checkpoints(out) if cfg.recover else []
    if cfg.recover and not checkpoints:
        logger.warning("recover=true but no checkpoint in %s: starting fresh", out)
    if cfg.warm_start.enabled and not checkpoints:
        result = await warm_start(
            cfg.warm_start,
            parts.policy,
            engine=parts.engine,
            client=parts.client,
            env_factory=parts.env_factory,
            agent=parts.agent,
            episode_fn=parts.episode_fn,
            seed=cfg.seed,
            progress=cfg.metrics.progress,
            weights_dir=out / "weights",
        )
        logger.info("warm start: %s", result)
        if cfg.train.lora.rank > 0:  # adapter-only checkpoints need this base on resume
            save_warm_started_base(parts.policy, out)
    elif checkpoints and cfg.train.lora.rank > 0 and restore_warm_started_base(parts.policy, out):
        logger.info("resume: the warm-started base of the LoRA adapters is back")
    ref_model = None
    if cfg.algorithm.resolved().kl_coef:  # the frozen warm-start model, for the KL term
        ref_model = copy.deepcopy(parts.policy).eval().requires_grad_(False)
    backend = make_backend(
        parts.policy, cfg.train, pad_id=parts.tokenizer.pad_token_id, ref_model=ref_model
    )
    hooks.setup(cfg, parts, backend)
    start_step = 0
    scheduler = make_scheduler(cfg, parts, version=0)
    if checkpoints:
        state = load_checkpoint(checkpoints[-1], hooks.checkpointed(backend))
        scheduler = make_scheduler(cfg, parts, version=state.version)
        scheduler.load_state_dict(state.scheduler)
        start_step = state.step
        logger.info("resumed from %s (step %d)", checkpoints[-1], start_step)
    await push_weights(
        backend, parts.engine, scheduler, version=start_step, weights_dir=out / "weights"
    )
    metrics = MetricsLogger(
        out,
        cfg.metrics,
        run_config=asdict(cfg),
        resume_after_step=start_step if checkpoints else None,
    )
    try:
        await train(
            cfg, parts, backend, scheduler, metrics, start_step, hooks, resumed=bool(checkpoints)
        )
    finally:
        metrics.close()
    final = out / "final_model"
    backend.save_weights(str(final))  # plain HF weights (LoRA: adapters merged in)
    parts.tokenizer.save_pretrained(final)
    return final


def main(argv: list[str] | None = None) -> int:
    """Entry point: config from argv, run, report where the results are."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(GRPOConfig, argv)
        check_train_config(cfg.train)
    except ValueError as e:
        print(f"config error: {e}{critic_preset_hint(str(e))}", file=sys.stderr)
        return 2
    # fsdp / megatron under torchrun: one process per rank, the others follow rank 0
    final = run_on_ranks(cfg, lambda: asyncio.run(run(cfg)))
    if final is None:
        return 0
    print(f"done: metrics in {Path(cfg.output_dir) / 'metrics.jsonl'}, final model in {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
