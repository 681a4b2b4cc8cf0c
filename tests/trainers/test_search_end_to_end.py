"""The search config end to end on CPU: warm start on gold traces, then GRPO on
multi-turn tool-calling episodes whose weights change.

One invented entity keeps it to seconds: the warm start reaches a sampled
accuracy the groups can be mixed at within a few hundred tiny steps, and the
episodes still run the whole path (tool call parsed, search run, passage
appended as prompt tokens, answer scored).
"""

from __future__ import annotations

from pathlib import Path

from areal_env.metrics import read_metrics
from areal_env.testing import TINY_MODEL_OVERRIDES, changed_weights, snapshot_warm_start
from areal_env.trainers import grpo

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "search" / "tiny.yaml"


def test_search_config_warm_starts_then_grpo_changes_the_weights(tmp_path, monkeypatch):
    snapshots = snapshot_warm_start(monkeypatch)
    out = tmp_path / "run"
    argv = [
        "--config",
        str(CONFIG),
        *TINY_MODEL_OVERRIDES,
        "env.kwargs.num_entities=1",
        "warm_start.num_demos=16",
        "warm_start.batch_size=16",
        "warm_start.lr=4e-3",
        "warm_start.eval_every=10",
        "warm_start.accuracy_window=1",  # the agent pipeline is under test, not the stop rule
        "warm_start.eval_episodes=16",
        "warm_start.target_accuracy=0.25",
        "warm_start.max_steps=400",
        "rollout.batch_size=2",
        "rollout.n_samples=8",
        "train.steps=3",
        "metrics.wandb_mode=disabled",
        "metrics.progress=false",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    assert snapshots["result"].reached_target, snapshots["result"]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("num_turns_mean", "tool_calls_mean", "tool_errors", "template_split_rate"):
        assert all(f"rollout/{key}" in r for r in rows), key
    # Multi-turn episodes happened: some searched, then answered in a second turn.
    assert max(r["rollout/num_turns_mean"] for r in rows) > 1.0
    assert max(r["rollout/tool_calls_mean"] for r in rows) > 0.0
    assert sum(r.get("train/rows", 0) for r in rows) > 0, "no step had a mixed group to train on"
    changed = changed_weights(out / "final_model", snapshots["after_warm_start"])
    assert changed, "the GRPO steps left every weight as the warm start did"
