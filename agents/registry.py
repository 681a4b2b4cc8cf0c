"""Agents chosen by config: ``agent.name`` names a factory here, ``agent.kwargs`` its options.

Example:
    >>> make_agent("single_turn", max_tokens=8).max_tokens
    8
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from areal_env.agents.base import Agent
from areal_env.agents.program_adapter import ProgramAdapter
from areal_env.agents.single_turn import SingleTurnAgent
from areal_env.agents.tool_calling import ToolCallingAgent


def _openai_agents(**kwargs: Any) -> Agent:
    # Imported here: the adapter needs the optional OpenAI Agents SDK.
    from areal_env.agents.openai_agents_adapter import OpenAIAgentsAdapter

    return OpenAIAgentsAdapter(**kwargs)


def _camel(**kwargs: Any) -> Agent:
    # Imported here: the adapter needs camel-ai, installed in its own environment.
    from areal_env.agents.camel_adapter import CamelAdapter

    return CamelAdapter(**kwargs)


AGENTS: dict[str, Callable[..., Agent]] = {
    "single_turn": SingleTurnAgent,
    "tool_calling": ToolCallingAgent,
    # kwargs: factory ("module:function" or "file.py:function" returning an SDK Agent),
    # max_turns, model_name, env_tools, tracing. See agents/openai_agents_adapter.py.
    "openai_agents": _openai_agents,
    # kwargs: command (argv list or string), task_format ("text" | "json"),
    # task_as_argument, timeout_s, env, cwd. See agents/program_adapter.py.
    "program": ProgramAdapter,
    # kwargs: factory (returns a CAMEL ChatAgent given model, tools, system_message),
    # model_config, timeout. See agents/camel_adapter.py and docs/camel.md.
    "camel": _camel,
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
