"""The OpenAI Agents SDK example end to end on CPU: warm start through the adapter,
then GRPO on the SDK's episodes, whose weights change.

Every episode (demonstration, warm-start evaluation, rollout) runs the SDK's
Runner against a session of the run's shared HTTP server, so this is the whole
wrapped-agent path: SDK -> openai client -> server -> episode client -> engine.

Mutations tried: the adapter's final ``env.astep`` skipped (every reward 0: the
warm start never reaches its target, no demonstration kept) -> fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_env.metrics import read_metrics
from areal_env.testing import TINY_MODEL_OVERRIDES, changed_weights, snapshot_warm_start
from areal_env.trainers import grpo

pytest.importorskip("agents")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openai_agents"


def test_sdk_agent_warm_starts_then_grpo_changes_the_weights(tmp_path, monkeypatch):
    snapshots = snapshot_warm_start(monkeypatch)
    out = tmp_path / "run"
    argv = [
        "--config",
        str(EXAMPLE / "tiny.yaml"),
        *TINY_MODEL_OVERRIDES,
        f"agent.kwargs.factory={EXAMPLE / 'search_agent.py'}:make_agent",
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
    assert max(r["rollout/reward_mean"] for r in rows) > 0.0  # the env scored SDK outputs
    assert rows[-1]["train/version"] > rows[0]["train/version"]  # the weight version advances
    # SDK episodes searched (the env's tool through the SDK), then answered.
    assert max(r["rollout/tool_calls_mean"] for r in rows) > 0.0
    assert sum(r.get("train/rows", 0) for r in rows) > 0, "no step had a mixed group to train on"
    changed = changed_weights(out / "final_model", snapshots["after_warm_start"])
    assert changed, "the GRPO steps left every weight as the warm start did"
