"""Push the trainer's weights to inference: pause -> load -> version+1 -> resume.

The order matters. The engine interrupts (or drains) in-flight work before it
loads, so no token is sampled from half-updated weights, and interrupted
requests continue on the new weights, each token labelled with its version; the
weights are written (for disk transports) before the pause, so generation stops
only for the load itself. The scheduler learns the new
version only after the engine has it, so the staleness bound is never
computed against a version the engine does not serve yet.

The transport is the engine's choice (``engine.weight_transports``, preferred
first): an in-process engine takes the backend's state dict (shared tensors,
no copy); an engine in another process takes a folder of HF-format weights
that the backend writes (``save_weights``) under ``weights_dir``. A server engine
with ``inference.lora_adapters`` offers ``lora_adapter`` first: a LoRA backend then
writes only its adapter (``save_adapter``, megabytes instead of the model) and the
servers apply it on their unchanged base; a backend without LoRA falls through to
``disk``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from areal_env.inference.engine import InferenceEngine
from areal_env.types import WeightUpdate

KEEP_WEIGHT_FOLDERS = 2
"""Disk pushes keep this many version folders (a server may still be reading the last)."""


def make_update(
    backend: Any, engine: InferenceEngine, *, version: int, weights_dir: str | Path | None
) -> WeightUpdate:
    """The ``WeightUpdate`` for ``engine``, in the first transport both sides support.

    ``lora_adapter`` is taken only when the backend trains LoRA adapters
    (``backend.lora``); otherwise the next transport is tried.

    Raises:
        ValueError: when the engine takes only disk updates and no ``weights_dir``
            is given, a LoRA backend cannot write its adapter alone, or the engine
            names no transport this trainer knows.
    """
    transports = tuple(getattr(engine, "weight_transports", ("state_dict",)))
    for transport in transports:
        if transport == "state_dict":
            return WeightUpdate(version=version, state_dict=backend.weights_for_sync())
        if transport == "lora_adapter":
            if not getattr(backend, "lora", False):
                continue  # full fine-tuning: there is no adapter to push
            save_adapter = getattr(backend, "save_adapter", None)
            if save_adapter is None:
                raise ValueError(
                    f"inference.lora_adapters=true: {type(backend).__name__} cannot write its "
                    "LoRA adapter alone; use train.backend=torch or inference.lora_adapters=false"
                )
            folder = _folder(weights_dir, version)
            base = None
            if getattr(engine, "needs_base", False):  # once a run: the servers' base may differ
                base = folder.parent / "base"  # outside the pruned v* folders
                shutil.rmtree(base, ignore_errors=True)
                backend.save_base(str(base))
            shutil.rmtree(folder, ignore_errors=True)  # e.g. full weights of a warm start
            save_adapter(str(folder))
            _prune(Path(folder).parent, keep=KEEP_WEIGHT_FOLDERS)
            return WeightUpdate(
                version=version,
                path=str(folder),
                adapter=True,
                base_path=None if base is None else str(base),
            )
        if transport == "disk":
            folder = _folder(weights_dir, version)
            backend.save_weights(str(folder))
            _prune(Path(folder).parent, keep=KEEP_WEIGHT_FOLDERS)
            return WeightUpdate(version=version, path=str(folder))
    raise ValueError(f"no weight transport in common: the engine takes {transports}")


def _folder(weights_dir: str | Path | None, version: int) -> Path:
    if weights_dir is None:
        raise ValueError("this engine loads weights from disk: give push_weights a weights_dir")
    return Path(weights_dir) / f"v{version:06d}"


async def push_weights(
    backend: Any,
    engine: InferenceEngine,
    scheduler: Any | None,
    *,
    version: int,
    weights_dir: str | Path | None = None,
) -> None:
    """Load the backend's current weights into ``engine`` as ``version``.

    Args:
        backend: a TrainBackend.
        engine: the inference engine to update.
        scheduler: a RolloutScheduler to tell about the new version, or None.
        version: the weight version after the update.
        weights_dir: where disk updates are written (needed by disk-only engines).
    """
    update = make_update(backend, engine, version=version, weights_dir=weights_dir)
    await engine.pause()
    try:
        await engine.update_weights(update)
    finally:
        await engine.resume()
    if scheduler is not None:
        scheduler.set_version(version)


def _prune(root: Path, *, keep: int) -> None:
    for old in sorted(p for p in root.glob("v*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
