"""Train backends chosen by config: ``train.backend`` names a class here.

Example:
    >>> sorted(BACKEND_CLASSES) == sorted(BACKENDS)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from areal_env.trainers.backends.base import BACKENDS, TrainBackend, TrainConfig
from areal_env.trainers.backends.fsdp import FSDPBackend
from areal_env.trainers.backends.torch_single import TorchBackend


def _megatron_backend(*args: Any, **kwargs: Any) -> TrainBackend:
    """Import megatron-core only when asked for: it is an optional extra."""
    from areal_env.trainers.backends.megatron import MegatronBackend

    return MegatronBackend(*args, **kwargs)


BACKEND_CLASSES: dict[str, Callable[..., TrainBackend]] = {
    "torch": TorchBackend,
    "fsdp": FSDPBackend,
    "megatron": _megatron_backend,
}
"""``train.backend`` name -> backend class ``(model, config, *, pad_id, ref_model)``."""


def make_backend(
    model: torch.nn.Module,
    config: TrainConfig,
    *,
    pad_id: int,
    ref_model: torch.nn.Module | None = None,
) -> TrainBackend:
    """Build the backend ``config.backend`` names around ``model``."""
    if config.backend not in BACKEND_CLASSES:  # BACKENDS and this table must agree
        raise ValueError(f"train.backend {config.backend!r} has no class; known: {BACKENDS}")
    return BACKEND_CLASSES[config.backend](model, config, pad_id=pad_id, ref_model=ref_model)
