"""examples/camel/tiny.yaml end to end: a CAMEL ChatAgent warm-started, then trained by GRPO.

Every episode runs the whole wrapped path: CAMEL's OpenAI-compatible model calls
a session of our HTTP server, the search tool steps the env, the env scores the
answer. One invented entity keeps it to seconds (as the search e2e test does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("camel", reason="camel-ai is tested in .venv-camel (docs/camel.md)")


from areal_env.testing import run_agent_end_to_end

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "camel" / "tiny.yaml"


def test_camel_config_warm_starts_then_grpo_changes_the_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config names its factory by a path from the repo root
    rows = run_agent_end_to_end(CONFIG, tmp_path / "run", monkeypatch)
    assert [r["train/version"] for r in rows] == [1, 2, 3]  # the weight version advances
    assert all("rollout/reward_mean" in r for r in rows), rows[0].keys()
