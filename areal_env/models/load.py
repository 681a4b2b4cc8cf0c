"""Which model a run loads, and loading it for inference only.

Every entry point (trainer, eval, serve) takes ``model.path`` the same way: a
folder or hub id, or None for the embedded tiny model built offline under
``<output_dir>/tiny_model``. Eval and serve need no gradients, so their copy is
put in eval mode with gradients off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from areal_env.config import ModelConfig, resolve_device
from areal_env.models.tiny import build_tiny_model, load_model_and_tokenizer


def model_dir(cfg: ModelConfig, output_dir: str) -> str:
    """The folder or hub id to load; builds the embedded tiny model when path is None."""
    if cfg.path is not None:
        return cfg.path
    return str(build_tiny_model(Path(output_dir) / "tiny_model", cfg.tiny))


def load_for_inference(cfg: ModelConfig, output_dir: str) -> tuple[Any, Any]:
    """Model (eval mode, no gradients) and tokenizer named by ``cfg``.

    Raises:
        ValueError: a model that cannot be loaded, naming ``model.path``.
    """
    path = model_dir(cfg, output_dir)
    try:
        model, tokenizer = load_model_and_tokenizer(
            path, dtype=cfg.dtype, device=resolve_device(cfg.device)
        )
    except OSError as e:  # transformers' "not a folder, not a hub id" and download errors
        raise ValueError(f"model.path: cannot load {path!r}: {e}") from e
    model.eval().requires_grad_(False)
    return model, tokenizer
