"""The tau2 config end to end on CPU, and the simulated user on the run's own engine.

The tiny config (mock domain, scripted user, no warm start) trains two GRPO
steps: episodes run, tau2's reward scores them (about 0 for the tiny model),
and the policy version advances. ``user={"kind": "llm", "engine": "policy"}``
resolves, through the run's registry, to the policy's ``ChatClient`` called
untracked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from areal_env.envs.tau2.env import Tau2Env
from areal_env.envs.tau2.user import ENGINE_KEYS
from areal_env.metrics import read_metrics
from areal_env.resources import ResourceRegistry
from areal_env.testing import TINY_MODEL_OVERRIDES
from areal_env.trainers import grpo
from areal_env.trainers.build import POLICY_CLIENT_KEY

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "tau2" / "tiny.yaml"


@pytest.fixture
def tau2_data(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``TAU2_DATA_DIR`` pointing at the shared tau2 data."""
    monkeypatch.setenv("TAU2_DATA_DIR", str(shared_data))
    return shared_data


def test_tau2_tiny_config_trains_two_steps(tau2_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        "--config",
        str(CONFIG),
        *TINY_MODEL_OVERRIDES,
        "rollout.batch_size=2",
        "rollout.n_samples=2",
        "train.steps=2",
        "metrics.wandb_mode=disabled",
        "metrics.progress=false",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["rollout/reward_mean"] <= 1.0 for r in rows)
    assert sum(r.get("rollout/failed_episodes", 0) for r in rows) == 0
    versions = [r["train/version"] for r in rows]
    assert versions[0] >= 1 and versions[1] > versions[0], versions
    assert all(r["rollout/num_turns_mean"] >= 1.0 for r in rows)
    assert (out / "final_model").is_dir()


class _FakeChatClient:
    """Stands in for the run's ChatClient: ``untracked()`` is what the user must call."""

    def __init__(self) -> None:
        self.untracked_calls = 0
        self.chat = object()  # the tracked client's chat: must never be used

    def untracked(self) -> Any:
        self.untracked_calls += 1
        return type("Untracked", (), {"chat": "untracked-chat"})()


def test_user_engine_policy_resolves_to_the_runs_untracked_client(tau2_data: Path) -> None:
    assert ENGINE_KEYS["policy"] == POLICY_CLIENT_KEY
    resources = ResourceRegistry(name="run")
    env = Tau2Env(domain="mock", user={"kind": "llm", "engine": "policy"}, resources=resources)
    fake = _FakeChatClient()
    resources.get(POLICY_CLIENT_KEY, lambda: fake)  # registered after the env: resolved lazily
    assert env.user.client.chat == "untracked-chat"  # type: ignore[attr-defined]
    assert fake.untracked_calls == 1
    env.close()
    resources.close()


def test_user_engine_policy_outside_a_run_says_what_is_missing(tau2_data: Path) -> None:
    env = Tau2Env(
        domain="mock", user={"kind": "llm", "engine": "policy"}, resources=ResourceRegistry()
    )
    with pytest.raises(RuntimeError, match="inference/policy_client"):
        _ = env.user.client.chat  # type: ignore[attr-defined]
    env.close()
    with pytest.raises(ValueError, match="unknown user engine"):
        Tau2Env(domain="mock", user={"kind": "llm", "engine": "judge"})
