"""Conformance across the registry: every areal/* id passes check_env and is seeded."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import areal_env

ENV_IDS = list(areal_env.ENV_IDS)
NEEDS_SANDBOX = {"areal/PythonTool-v0"}
"""Ids whose envs start a bubblewrap sandbox (skipped locally without one, never in CI)."""
NEEDS_TAU2_DATA = {
    "areal/Tau2-v0",
    "areal/Tau2Airline-v0",
    "areal/Tau2Retail-v0",
    "areal/Tau2Telecom-v0",
    "areal/Tau2Mock-v0",
}
"""Ids whose envs read tau2's data (TAU2_DATA_DIR, set here from the shared_data fixture)."""


@pytest.fixture(autouse=True)
def _sandbox_if_needed(request: pytest.FixtureRequest) -> None:
    params = getattr(request.node, "callspec", None)
    if params is not None and params.params.get("env_id") in NEEDS_SANDBOX:
        request.getfixturevalue("sandbox_available")


@pytest.fixture(autouse=True)
def _tau2_data_if_needed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    params = getattr(request.node, "callspec", None)
    if params is not None and params.params.get("env_id") in NEEDS_TAU2_DATA:
        monkeypatch.setenv("TAU2_DATA_DIR", str(request.getfixturevalue("shared_data")))


@pytest.mark.parametrize("env_id", ENV_IDS, ids=ENV_IDS)
def test_check_env_passes_without_warnings(env_id: str) -> None:
    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS, ids=ENV_IDS)
def test_same_seed_gives_same_episode(env_id: str) -> None:
    env_a, env_b = gym.make(env_id), gym.make(env_id)
    for seed in (0, 1, 12345):
        obs_a, info_a = env_a.reset(seed=seed)
        obs_b, info_b = env_b.reset(seed=seed)
        assert obs_a == obs_b
        assert info_a["task_id"] == info_b["task_id"]
        step_a = env_a.step({"role": "assistant", "content": "42"})
        step_b = env_b.step({"role": "assistant", "content": "42"})
        assert step_a == step_b
    env_a.close()
    env_b.close()


@pytest.mark.parametrize("env_id", ENV_IDS, ids=ENV_IDS)
def test_different_seeds_give_different_tasks(env_id: str) -> None:
    env = gym.make(env_id)
    task_ids = {env.reset(seed=seed)[1]["task_id"] for seed in range(8)}
    assert len(task_ids) > 1
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS, ids=ENV_IDS)
def test_unseeded_resets_continue_the_seeded_stream(env_id: str) -> None:
    env = gym.make(env_id)
    env.reset(seed=3)
    after_first = [env.reset()[0] for _ in range(3)]
    env.reset(seed=3)
    after_second = [env.reset()[0] for _ in range(3)]
    assert after_first == after_second
    env.close()


def test_import_areal_env_stays_light() -> None:
    heavy = ("torch", "transformers", "math_verify", "sympy")
    code = (
        "import sys, areal_env, gymnasium as gym\n"
        "assert 'areal/Math-v0' in gym.registry\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
