"""Supervised fine-tuning on chat JSONL.

Run as ``python trainers/sft.py [--config F.yaml] [--resume] [k=v ...]``.

Each line of ``data.train_path`` is one conversation (``{"messages": [...], "tools": [...]}``,
see :mod:`areal_env.data.chat_sft` and docs/sft.md); the tokenizer's chat
template renders it and only the assistant turns' tokens are trained, with
token-mean negative log-likelihood (:func:`nll_loss`) through the same train
backends as RL (``train.backend``: torch or fsdp, LoRA with ``train.lora.rank``).

A step is one optimizer update on ``batch_size`` conversations. The run makes
``epochs`` passes over the data, each in a fresh order drawn from ``seed`` and
the epoch number (so a resumed run replays the same order), or
``train.steps`` steps when ``epochs`` is 0. Train loss is logged every step,
eval loss (``data.eval_path``) at step 0, every ``eval_every`` steps and at the
end; checkpoints as in GRPO; the final HF model and tokenizer go to
``output_dir/final_model``.

:func:`sft_step` is the one SFT update on tokenized examples; the GRPO warm
start (``trainers/warm_start.py``) trains its demonstrations with it too.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from areal_env.checkpoint import TrainerState, list_checkpoints, load_checkpoint, save_checkpoint
from areal_env.config import (
    CheckpointConfig,
    MetricsConfig,
    ModelConfig,
    load_config,
    resolve_device,
)
from areal_env.data.chat_sft import TRUNCATION, load_chat_sft
from areal_env.metrics import MetricsLogger, plot_metrics
from areal_env.models.load import model_dir
from areal_env.models.tiny import load_model_and_tokenizer
from areal_env.progress import progress_bar
from areal_env.trainers.algorithms.losses.nll import nll_loss
from areal_env.trainers.backends.base import TrainBackend, TrainConfig, gather_token_logprobs
from areal_env.trainers.backends.ranks import check_train_config, run_on_ranks
from areal_env.trainers.backends.registry import make_backend
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.trainers.build import seed_everything
from areal_env.types import EpisodeBatch, Sample, Trajectory

logger = logging.getLogger("areal_env.sft")

PLOT_KEYS = ("sft/nll", "eval/nll")
"""Curves of the end-of-run plot of an SFT run."""


@dataclass(kw_only=True, slots=True)
class SFTDataConfig:
    """Which chat JSONL files to train and evaluate on."""

    train_path: str | None = None
    """Chat JSONL to train on, one ``{"messages": [...], "tools": [...]}`` per line (required)."""
    eval_path: str | None = None
    """Chat JSONL whose assistant-token NLL is logged as eval/nll; None: no eval."""


@dataclass(kw_only=True, slots=True)
class SFTConfig:
    """Root config of trainers/sft.py."""

    seed: int = 1
    """Seeds torch, numpy, python and the order of the examples."""
    output_dir: str = "outputs/sft"
    """Metrics, plot, checkpoints and the final model go here."""
    recover: bool = False
    """Continue from the last checkpoint in output_dir (also: --resume)."""
    torch_threads: int = 0
    """Intra-op CPU threads for torch; 0 keeps torch's default (one per core)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    max_length: int = 1024
    """Longest conversation in tokens; longer ones follow ``truncation``."""
    truncation: str = "drop"
    """Longer conversations are 'drop'ped or 'truncate'd to max_length (counted in metrics)."""
    batch_size: int = 8
    """Conversations per optimizer step."""
    epochs: int = 1
    """Passes over the training data; 0 runs train.steps steps instead."""
    eval_every: int = 0
    """Steps between eval losses (with data.eval_path); 0: only at step 0 and at the end."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=100, lr=2e-4, warmup_steps=10, ppo_minibatches=1, micro_batch_size=8
        )
    )
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        for key in ("max_length", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("epochs", "eval_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.truncation not in TRUNCATION:
            raise ValueError(f"truncation must be one of {TRUNCATION}, got {self.truncation!r}")


def sft_step(backend: TrainBackend, examples: Sequence[Sample | Trajectory]) -> dict[str, float]:
    """One optimizer update of token-mean NLL over the trained tokens of ``examples``.

    Every sample of every example is a row; the loss is the mean over all their
    ``loss_mask`` tokens together (a long answer weighs more than a short one, as
    in AReaL's SFT). The examples go into one group, so the backend's prompt
    sharing can run a prefix common to all of them (a system prompt) once.

    Args:
        backend: the model + optimizer; its ``ppo_minibatches`` splits the update.
        examples: tokenized examples: chat rows (Samples) or demonstrations (Trajectories).

    Returns:
        The backend's metrics, with ``sft/nll`` the batch's mean NLL.
    """
    if not examples:
        raise ValueError("sft_step needs at least one example")
    trajectories = [e if isinstance(e, Trajectory) else Trajectory(samples=[e]) for e in examples]
    batch = EpisodeBatch(groups=[trajectories])
    return backend.train_step(batch, nll_loss, list(range(len(batch.row_refs()))))


def eval_nll(
    model: torch.nn.Module, examples: Sequence[Sample], *, pad_id: int, micro_batch_size: int
) -> float:
    """Token-mean NLL of ``examples``' trained tokens under ``model``, without gradients."""
    batch = EpisodeBatch(groups=[[Trajectory(samples=[s]) for s in examples]])
    device = next(model.parameters()).device
    total, tokens = 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), micro_batch_size):
            rows = list(range(start, min(start + micro_batch_size, len(examples))))
            padded = batch.padded(pad_id, rows=rows)
            ids = padded.input_ids.to(device)
            logits = model(input_ids=ids, attention_mask=padded.attention_mask.to(device)).logits
            mask = padded.loss_mask.to(device)
            total -= float((gather_token_logprobs(logits, ids, 1.0) * mask).sum())
            tokens += float(mask.sum())
    return total / max(tokens, 1.0)


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The order of the ``n`` examples in ``epoch``: the same on every run and resume."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_examples(cfg: SFTConfig, step: int, n: int) -> tuple[list[int], int]:
    """Indices of the examples of ``step`` (0-based) and the epoch it falls in.

    Each epoch is cut into ``ceil(n / batch_size)`` batches, the last one
    shorter when ``batch_size`` does not divide ``n``: every example is seen once
    an epoch.
    """
    per_epoch = math.ceil(n / cfg.batch_size)
    epoch, k = divmod(step, per_epoch)
    order = epoch_order(cfg.seed, epoch, n)
    return order[k * cfg.batch_size : (k + 1) * cfg.batch_size], epoch


def total_steps(cfg: SFTConfig, n: int) -> int:
    """Steps of the run: ``epochs`` passes over ``n`` examples, or ``train.steps``."""
    if cfg.epochs == 0:
        return cfg.train.steps
    return cfg.epochs * math.ceil(n / cfg.batch_size)


def run(cfg: SFTConfig) -> Path:
    """Load model and data, train, evaluate, checkpoint, save the final model."""
    seed_everything(cfg.seed)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    if not cfg.data.train_path:
        raise ValueError("data.train_path is required: a chat JSONL file to train on")
    out = Path(cfg.output_dir)
    path = model_dir(cfg.model, cfg.output_dir)
    policy, tokenizer = load_model_and_tokenizer(
        path, dtype=cfg.model.dtype, device=resolve_device(cfg.model.device)
    )
    train_rows, train_stats = load_chat_sft(
        cfg.data.train_path, tokenizer, max_length=cfg.max_length, truncation=cfg.truncation
    )
    eval_rows: list[Sample] = []
    data_stats = train_stats.as_metrics("data/train")
    if cfg.data.eval_path:
        eval_rows, eval_stats = load_chat_sft(
            cfg.data.eval_path, tokenizer, max_length=cfg.max_length, truncation=cfg.truncation
        )
        data_stats |= eval_stats.as_metrics("data/eval")
    logger.info("data: %s", data_stats)
    pad_id = tokenizer.pad_token_id
    # FSDP shards the policy and only its collective calls reach the other ranks:
    # the eval loss is taken on a plain copy refreshed from the gathered weights.
    fsdp_eval_copy = None
    if eval_rows and cfg.train.backend != "torch":
        fsdp_eval_copy = copy.deepcopy(policy).eval().requires_grad_(False)
    backend = make_backend(policy, cfg.train, pad_id=pad_id)

    def evaluate() -> float:
        if isinstance(backend, TorchBackend):
            scorer = backend.model
        else:
            assert fsdp_eval_copy is not None
            fsdp_eval_copy.load_state_dict(backend.weights_for_sync())
            scorer = fsdp_eval_copy
        return eval_nll(
            scorer, eval_rows, pad_id=pad_id, micro_batch_size=cfg.train.micro_batch_size
        )

    checkpoints = list_checkpoints(out) if cfg.recover else []
    if cfg.recover and not checkpoints:
        logger.warning("recover=true but no checkpoint in %s: starting fresh", out)
    start_step = 0
    if checkpoints:
        start_step = load_checkpoint(checkpoints[-1], backend).step
        logger.info("resumed from %s (step %d)", checkpoints[-1], start_step)
    metrics = MetricsLogger(
        out,
        cfg.metrics,
        run_config=asdict(cfg),
        resume_after_step=start_step if checkpoints else None,
    )
    try:
        if not checkpoints:
            first = dict(data_stats)
            if eval_rows:
                first["eval/nll"] = evaluate()
            metrics.log(0, first)
        train(cfg, backend, train_rows, metrics, start_step, evaluate if eval_rows else None)
    finally:
        metrics.close()
    if cfg.metrics.plot:
        plot_metrics(metrics.path, PLOT_KEYS)
    final = out / "final_model"
    backend.save_weights(str(final))  # plain HF weights (LoRA: adapters merged in)
    tokenizer.save_pretrained(final)
    return final


def train(
    cfg: SFTConfig,
    backend: TrainBackend,
    rows: list[Sample],
    metrics: MetricsLogger,
    start_step: int,
    evaluate: Callable[[], float] | None,
) -> None:
    """The step loop: batch -> :func:`sft_step` -> log -> eval -> checkpoint."""
    steps = total_steps(cfg, len(rows))
    bar = progress_bar(total=steps, initial=start_step, desc="sft", enabled=cfg.metrics.progress)
    try:
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            picked, epoch = step_examples(cfg, step, len(rows))
            batch = [rows[i] for i in picked]
            stats = sft_step(backend, batch)
            done = step + 1
            row = {
                **stats,
                "sft/epoch": float(epoch),
                "sft/tokens": float(sum(s.num_generated for s in batch)),
                "time/step_s": time.perf_counter() - t0,
            }
            if evaluate is not None and (
                done == steps or (cfg.eval_every and done % cfg.eval_every == 0)
            ):
                row["eval/nll"] = evaluate()
            metrics.log(done, row)
            bar.update(1)
            bar.set_postfix(nll=f"{stats['sft/nll']:.3f}", refresh=False)
            every = cfg.checkpoint.every_steps
            if done == steps or (every and done % every == 0):
                state = TrainerState(step=done, version=done, extra={"epoch": epoch})
                save_checkpoint(cfg.output_dir, state, backend, keep_last=cfg.checkpoint.keep_last)
    finally:
        bar.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: config from argv, run, report where the results are."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(SFTConfig, argv)
        if not cfg.data.train_path:
            raise ValueError("data.train_path is required: a chat JSONL file to train on")
        check_train_config(cfg.train)
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    # fsdp / megatron under torchrun: one process per rank, the others follow rank 0
    final = run_on_ranks(cfg, lambda: run(cfg))
    if final is None:
        return 0
    print(f"done: metrics in {Path(cfg.output_dir) / 'metrics.jsonl'}, final model in {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
