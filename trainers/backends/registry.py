"""Train backends chosen by config: ``train.backend`` names a class here.

Example:
    >>> sorted(BACKEND_CLASSES) == sorted(BACKENDS)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from areal_env.trainers.backends.base import BACKENDS, TrainBackend, TrainConfig
from areal_env.trainers.backends.fsdp import FSDPBackend
from areal_env.trainers.backends.torch_single import TorchBackend

BACKEND_CLASSES: dict[str, Callable[..., TrainBackend]] = {
    "torch": TorchBackend,
    "fsdp": FSDPBackend,
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
