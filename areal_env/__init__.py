"""areal-env: train LLM agents with fully asynchronous RL on async Gymnasium envs.

Importing the package registers every ``areal/*`` environment id with Gymnasium.
Registration names entry points as strings, so ``import areal_env`` stays light:
no torch model, retrieval index or domain database is loaded until an env is made.

Example:
    >>> import gymnasium as gym
    >>> import areal_env
    >>> "areal/Math-v0" in gym.registry
    True
"""

from __future__ import annotations

from pathlib import Path

import gymnasium

# agents/, envs/ and trainers/ live at the repository root and are installed as
# areal_env.agents/.envs/.trainers (package-dir in pyproject.toml). They have no
# __init__.py, so the top-level name `agents` stays the OpenAI Agents SDK's. In a
# source checkout (editable install or running from the root) we extend our own
# __path__ so that areal_env.agents resolves to ./agents.
_REPO_ROOT = Path(__file__).resolve().parent.parent
if (_REPO_ROOT / "pyproject.toml").exists() and (_REPO_ROOT / "envs").is_dir():
    __path__.append(str(_REPO_ROOT))  # type: ignore[name-defined]

__version__ = "0.1.0"

ENV_IDS: tuple[str, ...] = (
    "areal/Math-v0",
    "areal/MultiTurnMath-v0",
    "areal/Countdown-v0",
    "areal/Search-v0",
    "areal/PythonTool-v0",
    "areal/Calculator-v0",
    "areal/Tau2-v0",
    "areal/Tau2Airline-v0",
    "areal/Tau2Retail-v0",
    "areal/Tau2Telecom-v0",
    "areal/Tau2Mock-v0",
)
"""Every environment id this package registers."""


_ENTRY_POINTS = {
    "areal/Math-v0": "areal_env.envs.math.env:MathEnv",
    "areal/MultiTurnMath-v0": "areal_env.envs.math.multi_turn:MultiTurnMathEnv",
    "areal/Countdown-v0": "areal_env.envs.countdown.env:CountdownEnv",
    "areal/Search-v0": "areal_env.envs.search.env:SearchEnv",
    "areal/PythonTool-v0": "areal_env.envs.python_tool.env:PythonToolEnv",
    "areal/Calculator-v0": "areal_env.envs.calculator.env:CalculatorEnv",
    "areal/Tau2-v0": "areal_env.envs.tau2.env:Tau2Env",
    "areal/Tau2Airline-v0": "areal_env.envs.tau2.env:Tau2Env",
    "areal/Tau2Retail-v0": "areal_env.envs.tau2.env:Tau2Env",
    "areal/Tau2Telecom-v0": "areal_env.envs.tau2.env:Tau2Env",
    "areal/Tau2Mock-v0": "areal_env.envs.tau2.env:Tau2Env",
}

_KWARGS: dict[str, dict[str, str]] = {
    "areal/Tau2Airline-v0": {"domain": "airline"},
    "areal/Tau2Retail-v0": {"domain": "retail"},
    "areal/Tau2Telecom-v0": {"domain": "telecom"},
    "areal/Tau2Mock-v0": {"domain": "mock"},
}
"""Registration kwargs: the per-domain tau2 ids preset ``domain`` (callers may still override)."""


def _register_envs() -> None:
    for env_id, entry_point in _ENTRY_POINTS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point=entry_point,
                disable_env_checker=True,
                kwargs=dict(_KWARGS.get(env_id, {})),
            )


_register_envs()

__all__ = ["ENV_IDS", "__version__"]
