"""Run metrics: metrics.jsonl always, wandb (offline by default), TensorBoard, a plot.

Every training step logs one flat dict of floats. JSONL is the source of truth
(one object per line, ``step`` first); wandb mirrors it when installed and not
disabled, TensorBoard event files (``output_dir/tensorboard``, ``metrics.tensorboard``)
mirror it for ``tensorboard --logdir``; :meth:`MetricsLogger.close` draws reward and
loss curves to PNG.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from areal_env.config import MetricsConfig

logger = logging.getLogger(__name__)

PLOT_KEYS = ("rollout/reward_mean", "loss/pg", "loss/kl_ref")
"""Curves drawn in the end-of-run plot, one panel each, when present."""


class MetricsLogger:
    """Writes per-step metrics to ``output_dir/metrics.jsonl`` and wandb.

    ``resume_after_step`` keeps the rows up to that step from an earlier run of
    the same output_dir and appends after them.
    """

    def __init__(
        self,
        output_dir: str | Path,
        config: MetricsConfig,
        *,
        run_config: dict[str, Any] | None = None,
        resume_after_step: int | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / "metrics.jsonl"
        self.config = config
        if resume_after_step is None:
            self.path.unlink(missing_ok=True)
        else:
            drop_rows_after_step(self.path, resume_after_step)
        self._file = self.path.open("a")
        self._wandb = self._init_wandb(run_config or {}, resume_after_step is not None)
        self._tensorboard = self._init_tensorboard()

    def _init_tensorboard(self) -> Any:
        if not self.config.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run appends to a new event file; TensorBoard merges them by step.
        return SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))

    def _init_wandb(self, run_config: dict[str, Any], resume: bool) -> Any:
        if self.config.wandb_mode == "disabled":
            return None
        try:
            import wandb
        except ImportError:
            logger.warning("wandb is not installed; metrics go to metrics.jsonl only")
            return None
        # An explicit WANDB_MODE in the environment wins over our default.
        mode = os.environ.get("WANDB_MODE", self.config.wandb_mode)
        return wandb.init(
            project=self.config.wandb_project,
            dir=str(self.output_dir),
            mode=mode,  # type: ignore[arg-type]  # validated by MetricsConfig
            config=run_config,
            resume="allow" if resume else None,
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one step's metrics (NaN/inf are written as null)."""
        row = {"step": step, **{k: _clean(v) for k, v in sorted(metrics.items())}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if v is not None}, step=step)
        if self._tensorboard is not None:
            for key, value in row.items():
                if key != "step" and value is not None:
                    self._tensorboard.add_scalar(key, value, global_step=step)

    def close(self) -> Path | None:
        """Flush, finish wandb, and write the plot; returns the PNG path if drawn."""
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        return plot_metrics(self.path) if self.config.plot else None


def drop_rows_after_step(path: str | Path, step: int) -> None:
    """Keep only the rows of a step-keyed JSONL file (``"step"`` in each) up to ``step``.

    On resume the steps after the checkpoint run again, so their rows from the
    interrupted run would otherwise appear twice. A missing file is left missing.
    """
    path = Path(path)
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(path: str | Path, keys: tuple[str, ...] = PLOT_KEYS) -> Path | None:
    """Draw each of ``keys`` against step into ``curves.png`` beside ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    present = [k for k in keys if any(r.get(k) is not None for r in rows)]
    if not rows or not present:
        return None
    fig, axes = plt.subplots(len(present), 1, figsize=(7, 2.6 * len(present)), squeeze=False)
    for ax, key in zip(axes[:, 0], present, strict=True):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    out = Path(path).with_name("curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
