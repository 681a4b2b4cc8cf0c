"""The CAMEL agent the example trains: an ordinary ChatAgent factory.

``examples/camel/tiny.yaml`` names it as ``agent.kwargs.factory``. The adapter
calls it once per episode with CAMEL's OpenAI-compatible model (pointed at the
episode's session), the env's tools as CAMEL ``FunctionTool`` s, and the env's
system prompt; nothing here knows it is being trained.
"""

from __future__ import annotations

from typing import Any

from camel.agents import ChatAgent


def make_agent(model: Any, tools: list[Any], system_message: str | None) -> ChatAgent:
    """A tool-using ChatAgent: at most 3 model calls per episode (search, search, answer)."""
    return ChatAgent(system_message=system_message, model=model, tools=tools, max_iteration=3)
