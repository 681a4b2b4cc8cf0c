"""examples/camel/tiny.yaml end to end: a CAMEL ChatAgent warm-started, then trained by GRPO.

Every episode runs the whole wrapped path: CAMEL's OpenAI-compatible model calls
a session of our HTTP server, the search tool steps the env, the env scores the
answer. One invented entity keeps it to seconds (as the search e2e test does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("camel", reason="camel-ai is tested in .venv-camel (docs/camel.md)")


from areal_env.metrics import read_metrics
from areal_env.testing import TINY_MODEL_OVERRIDES, changed_weights, snapshot_warm_start
from areal_env.trainers import grpo

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "camel" / "tiny.yaml"


def test_camel_config_warm_starts_then_grpo_changes_the_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config names its factory by a path from the repo root
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
    assert [r["train/version"] for r in rows] == [1, 2, 3]  # the weight version advances
    assert all("rollout/reward_mean" in r for r in rows), rows[0].keys()
    assert max(r["rollout/tool_calls_mean"] for r in rows) > 0.0, "the agent never searched"
    assert sum(r.get("train/rows", 0) for r in rows) > 0, "no step had a mixed group to train on"
    changed = changed_weights(out / "final_model", snapshots["after_warm_start"])
    assert changed, "the GRPO steps left every weight as the warm start did"
