"""Which backends run as one process per rank, and what the ranks other than 0 do.

The trainers' entry points (``trainers/grpo.py``, ``trainers/sft.py``) are the same
script under ``torchrun``: rank 0 runs the trainer, every other rank only holds its
part of the model and follows rank 0's backend calls. This module is the one place
that maps ``train.backend`` to that plumbing, so an entry point needs three calls.
Importing it imports neither megatron-core nor anything distributed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from areal_env.config import to_yaml
from areal_env.trainers import distributed
from areal_env.trainers.backends import fsdp
from areal_env.trainers.backends import megatron as megatron_backend
from areal_env.trainers.backends.base import TrainConfig

MULTI_RANK_BACKENDS = ("fsdp", "megatron")
"""Backends launched with one process per rank (torchrun, accelerate launch, Ray)."""


def check_train_config(train: TrainConfig) -> None:
    """Config-time checks of the multi-rank backends (no model needed).

    Raises:
        ValueError: naming the ``train.*`` setting the backend does not support.
    """
    if train.backend == "fsdp":
        fsdp.check_supported(train)
    elif train.backend == "megatron":
        megatron_backend.check_config(train, int(os.environ.get("WORLD_SIZE", "1")))


def init_ranks(cfg: Any) -> None:
    """Join the process group when ``cfg.train.backend`` runs one process per rank."""
    backend = cfg.train.backend
    if backend in MULTI_RANK_BACKENDS:
        options = cfg.train.fsdp if backend == "fsdp" else cfg.train.megatron
        distributed.init(timeout_s=options.timeout_s, device=cfg.model.device)


def run_on_ranks(cfg: Any, run_main: Callable[[], Path]) -> Path | None:
    """Run a trainer entry point on this rank: rank 0 trains, the others follow it.

    Rank 0 writes ``output_dir/config.yaml`` and calls ``run_main`` (the whole run,
    returning the final model's folder); any other rank only serves rank 0's
    backend calls and writes nothing. The process group is torn down on every path.

    Returns:
        The final model's folder on rank 0; None on the other ranks.
    """
    init_ranks(cfg)
    clean = False
    try:
        if not distributed.is_main():
            if cfg.torch_threads > 0:
                torch.set_num_threads(cfg.torch_threads)
            serve_main_rank(cfg)
            clean = True
            return None
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
        final = run_main()
        clean = True
        return final
    finally:
        distributed.shutdown(clean=clean)


def serve_main_rank(cfg: Any) -> None:
    """What a rank other than 0 runs for the whole run: follow rank 0's backend calls."""
    if cfg.train.backend == "megatron":
        megatron_backend.serve_main_rank(cfg)
    else:
        fsdp.serve_main_rank(cfg)
