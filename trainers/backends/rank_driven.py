"""The TrainBackend surface of a backend whose ranks all take part in every call.

Sharded backends (FSDP, Megatron) run one process per rank, but only rank 0 runs
the trainer. Each public call on rank 0 first sends its name and arguments to the
other ranks (``trainers/distributed.py``), which sit in :meth:`follow`, then runs
the collective work itself, so every rank enters the same collectives in the
same order. A subclass implements the collective halves (``_train_step``,
``_full_state_dict``, ``_save_weights``, ``_save``, ``_load``) and sets
``self._lockstep`` (True when every rank calls every method itself, as SPMD
scripts and tests do, so nothing is sent).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from areal_env.trainers import distributed
from areal_env.trainers.algorithms.losses.base import LossFn
from areal_env.types import EpisodeBatch

OPS = ("train_step", "weights_for_sync", "save_weights", "save", "load")
"""The calls rank 0 forwards; each runs ``_<name>`` (``weights_for_sync``: ``_full_state_dict``)."""


class RankZeroDriven:
    """Mixin: rank 0's public calls bring the other ranks along (see the module docstring)."""

    _lockstep: bool

    # --- collective halves, run by every rank (the subclass implements them) ---

    def _train_step(
        self, batch: EpisodeBatch, loss_fn: LossFn, rows: list[int]
    ) -> dict[str, float]:
        raise NotImplementedError

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _save_weights(self, path: str) -> None:
        raise NotImplementedError

    def _save(self, path: str) -> None:
        raise NotImplementedError

    def _load(self, path: str) -> None:
        raise NotImplementedError

    # --- the TrainBackend surface ---

    def train_step(self, batch: EpisodeBatch, loss_fn: LossFn, rows: list[int]) -> dict[str, float]:
        """One update over ``rows`` (indices into ``batch.row_refs()``), as ``TorchBackend``."""
        self._send("train_step", batch, loss_fn, rows)
        return self._train_step(batch, loss_fn, rows)

    def weights_for_sync(self) -> dict[str, torch.Tensor]:
        """Full HF-named state dict on rank 0 (new tensors); {} on the other ranks."""
        self._send("weights_for_sync")
        return self._full_state_dict()

    def save_weights(self, path: str) -> None:
        """Rank 0 writes the full weights as an HF folder (safetensors + config)."""
        self._send("save_weights", path)
        self._save_weights(path)

    def save(self, path: str) -> None:
        """Checkpoint model and optimizer state under ``path`` (every rank writes its part)."""
        self._send("save", path)
        self._save(path)

    def load(self, path: str) -> None:
        """Restore what :meth:`save` wrote."""
        self._send("load", path)
        self._load(path)

    def follow(self) -> None:
        """Ranks other than 0: run rank 0's calls until it sends STOP."""
        ops: dict[str, Any] = {
            "train_step": self._train_step,
            "weights_for_sync": self._full_state_dict,
            "save_weights": self._save_weights,
            "save": self._save,
            "load": self._load,
        }
        while True:
            op, args = distributed.receive()
            if op == distributed.STOP:
                return
            ops[op](*args)

    def _send(self, op: str, *args: Any) -> None:
        if not self._lockstep:
            distributed.send(op, *args)


def follow_rank_zero(cfg: Any, backend_cls: Callable[..., RankZeroDriven]) -> None:
    """What a rank other than 0 runs for a whole trainer run.

    It waits for rank 0's ``setup`` (sent when rank 0 builds its backend, after
    the warm start), loads the same model (its weights are then replaced by rank
    0's), builds its part of ``backend_cls`` and follows rank 0's calls until
    STOP. No engine, env, scheduler or output file exists here.

    Args:
        cfg: the run's config (``model``, ``train``, ``output_dir``).
        backend_cls: the sharded backend rank 0 built.
    """
    from areal_env.config import resolve_device
    from areal_env.models.load import model_dir
    from areal_env.models.tiny import load_model_and_tokenizer

    op, args = distributed.receive()
    if op == distributed.STOP:
        return
    if op != "setup":
        raise RuntimeError(f"rank {distributed.rank()}: expected setup from rank 0, got {op!r}")
    setup = args[0]
    path = model_dir(cfg.model, cfg.output_dir)  # rank 0 built it before sending setup
    model, _ = load_model_and_tokenizer(
        path, dtype=cfg.model.dtype, device=resolve_device(cfg.model.device)
    )
    ref = copy.deepcopy(model).eval().requires_grad_(False) if setup["ref_model"] else None
    backend = backend_cls(model, cfg.train, pad_id=setup["pad_id"], ref_model=ref)
    del model  # the backend holds what this rank needs (Megatron: only its converted shard)
    backend.follow()
