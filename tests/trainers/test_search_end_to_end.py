"""The search config end to end on CPU: warm start on gold traces, then GRPO on
multi-turn tool-calling episodes whose weights change.

One invented entity keeps it to seconds: the warm start reaches a sampled
accuracy the groups can be mixed at within a few hundred tiny steps, and the
episodes still run the whole path (tool call parsed, search run, passage
appended as prompt tokens, answer scored).
"""

from __future__ import annotations

from pathlib import Path

from areal_env.testing import run_agent_end_to_end

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "search" / "tiny.yaml"


def test_search_config_warm_starts_then_grpo_changes_the_weights(tmp_path, monkeypatch):
    rows = run_agent_end_to_end(CONFIG, tmp_path / "run", monkeypatch)
    for key in ("num_turns_mean", "tool_calls_mean", "tool_errors", "template_split_rate"):
        assert all(f"rollout/{key}" in r for r in rows), key
    # Multi-turn episodes happened: some searched, then answered in a second turn.
    assert max(r["rollout/num_turns_mean"] for r in rows) > 1.0
