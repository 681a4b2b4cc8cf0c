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

from areal_env.testing import run_agent_end_to_end

pytest.importorskip("agents")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openai_agents"


def test_sdk_agent_warm_starts_then_grpo_changes_the_weights(tmp_path, monkeypatch):
    factory = f"agent.kwargs.factory={EXAMPLE / 'search_agent.py'}:make_agent"
    rows = run_agent_end_to_end(EXAMPLE / "tiny.yaml", tmp_path / "run", monkeypatch, factory)
    assert max(r["rollout/reward_mean"] for r in rows) > 0.0  # the env scored SDK outputs
    assert rows[-1]["train/version"] > rows[0]["train/version"]  # the weight version advances
