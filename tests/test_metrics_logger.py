"""MetricsLogger: JSONL is the truth; TensorBoard mirrors it; resume keeps earlier rows."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from areal_env.config import MetricsConfig
from areal_env.metrics import MetricsLogger, read_metrics


def _scalars(folder):
    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard_mirrors_every_logged_scalar(tmp_path):
    config = MetricsConfig(wandb_mode="disabled", plot=False)
    logger = MetricsLogger(tmp_path, config)
    logger.log(1, {"rollout/reward_mean": 0.25, "loss/pg": -0.5, "bad": float("nan")})
    logger.log(2, {"rollout/reward_mean": 0.75, "loss/pg": -0.25})
    logger.close()
    scalars = _scalars(tmp_path / "tensorboard")
    assert scalars["rollout/reward_mean"] == [(1, 0.25), (2, 0.75)]
    assert scalars["loss/pg"] == [(1, -0.5), (2, -0.25)]
    assert "bad" not in scalars  # NaN is null in JSONL and left out of TensorBoard
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_tensorboard_can_be_turned_off(tmp_path):
    logger = MetricsLogger(tmp_path, MetricsConfig(wandb_mode="disabled", tensorboard=False))
    logger.log(1, {"x": 1.0})
    logger.close()
    assert not (tmp_path / "tensorboard").exists()


def test_resume_keeps_rows_up_to_the_checkpoint(tmp_path):
    config = MetricsConfig(wandb_mode="disabled", plot=False, tensorboard=False)
    first = MetricsLogger(tmp_path, config)
    for step in (1, 2, 3):
        first.log(step, {"x": float(step)})
    first.close()
    again = MetricsLogger(tmp_path, config, resume_after_step=2)
    again.log(3, {"x": 30.0})
    again.close()
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]


def test_bad_wandb_mode_names_the_key():
    with pytest.raises(ValueError, match="metrics.wandb_mode"):
        MetricsConfig(wandb_mode="cloud")
