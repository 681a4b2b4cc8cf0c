"""Agents chosen by config: ``agent.name`` names a factory here, ``agent.kwargs`` its options.

Example:
    >>> make_agent("single_turn", max_tokens=8).max_tokens
    8
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from areal_env.agents.base import Agent
from areal_env.agents.single_turn import SingleTurnAgent
from areal_env.agents.tool_calling import ToolCallingAgent

AGENTS: dict[str, Callable[..., Agent]] = {
    "single_turn": SingleTurnAgent,
    "tool_calling": ToolCallingAgent,
}
"""``agent.name`` -> a factory taking the ``agent.kwargs``."""


def make_agent(name: str, **kwargs: Any) -> Agent:
    """Build the agent ``name`` with ``kwargs``.

    Raises:
        ValueError: when ``name`` is not registered or the options do not fit it.
    """
    if name not in AGENTS:
        raise ValueError(f"agent.name must be one of {sorted(AGENTS)}, got {name!r}")
    try:
        return AGENTS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"agent.kwargs do not fit agent {name!r}: {e}") from None
