"""Save and resume a run: model, optimizer, data position, RNG and weight version.

Layout under ``output_dir/checkpoints/step_000050/``::

    backend/          whatever the train backend writes (HF model, optimizer)
    trainer_state.pt  step, weight version, scheduler state, RNG states

A checkpoint folder is written under a temporary name and renamed when
complete, so an interruption mid-save never leaves a half checkpoint that
resume would pick up.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from areal_env import devices


class Saveable(Protocol):
    """Anything with ``save(path)`` / ``load(path)`` (train backends)."""

    def save(self, path: str) -> None:
        """Write state under ``path``."""
        ...

    def load(self, path: str) -> None:
        """Read state from ``path``."""
        ...


@dataclass(kw_only=True, slots=True)
class TrainerState:
    """The loop's own state, saved beside the backend's."""

    step: int
    """Number of finished training steps."""
    version: int
    """Weight version of the policy after that step."""
    scheduler: dict[str, Any] = field(default_factory=dict)
    """RolloutScheduler.state_dict(): data position and counters."""
    rng: dict[str, Any] = field(default_factory=dict)
    """Python, NumPy, torch CPU and accelerator RNG states."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else the trainer wants back (e.g. warm-start results)."""


def capture_rng() -> dict[str, Any]:
    """Snapshot of every global RNG we use."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        **devices.rng_state(),  # "torch" (CPU) and the accelerator's, under its type
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    devices.set_rng_state(state)


def checkpoint_dir(output_dir: str | Path) -> Path:
    """Folder that holds the step checkpoints of a run."""
    return Path(output_dir) / "checkpoints"


def save_checkpoint(
    output_dir: str | Path, state: TrainerState, backend: Saveable, *, keep_last: int = 2
) -> Path:
    """Write a complete checkpoint for ``state.step`` and prune older ones."""
    root = checkpoint_dir(output_dir)
    final = root / f"step_{state.step:06d}"
    tmp = root / f".tmp_step_{state.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    backend.save(str(tmp / "backend"))
    state.rng = capture_rng()
    torch.save(_as_dict(state), tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / "trainer_state.pt").exists()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def load_checkpoint(path: str | Path, backend: Saveable) -> TrainerState:
    """Restore ``backend`` and the global RNGs; return the trainer state."""
    path = Path(path)
    raw = torch.load(path / "trainer_state.pt", weights_only=False)
    backend.load(str(path / "backend"))
    state = TrainerState(**raw)
    restore_rng(state.rng)
    return state


def _as_dict(state: TrainerState) -> dict[str, Any]:
    return {k: getattr(state, k) for k in TrainerState.__slots__}  # type: ignore[attr-defined]
