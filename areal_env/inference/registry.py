"""Inference engines chosen by config: ``inference.backend`` names a factory here.

Each factory builds an engine from the loaded policy copy, its tokenizer and
the ``inference`` config section. Remote engines (vLLM, SGLang servers) register
here too; until then a name that is not registered fails at start-up.

Example:
    >>> sorted(ENGINES)
    ['local']
    >>> InferenceConfig(backend="vllm")
    Traceback (most recent call last):
    ...
    ValueError: inference.backend must be one of ['local'], got 'vllm'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from areal_env.inference.chat_client import SamplingConfig
from areal_env.inference.engine import InferenceEngine
from areal_env.inference.local import LocalEngine, LocalEngineConfig


@dataclass(kw_only=True, slots=True)
class InferenceConfig:
    """How rollouts are generated."""

    backend: str = "local"
    """Key of ``ENGINES``; 'local' is the in-process transformers engine."""
    local: LocalEngineConfig = field(default_factory=LocalEngineConfig)
    """Settings of the local engine."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Default sampling of every completion."""

    def __post_init__(self) -> None:
        if self.backend not in ENGINES:
            raise ValueError(
                f"inference.backend must be one of {sorted(ENGINES)}, got {self.backend!r}"
            )


EngineFactory = Callable[[torch.nn.Module, Any, InferenceConfig], InferenceEngine]
"""``(model, tokenizer, config) -> engine``."""


def _local(model: torch.nn.Module, tokenizer: Any, config: InferenceConfig) -> InferenceEngine:
    return LocalEngine(model, tokenizer, config.local)


ENGINES: dict[str, EngineFactory] = {"local": _local}
"""``inference.backend`` name -> engine factory."""


def make_engine(model: torch.nn.Module, tokenizer: Any, config: InferenceConfig) -> InferenceEngine:
    """Build the engine ``config.backend`` names (the config was validated on creation)."""
    return ENGINES[config.backend](model, tokenizer, config)
