"""Train the model behind an OpenAI Agents SDK agent, without rewriting the agent.

The user keeps their SDK ``Agent`` (instructions, function tools, handoffs).
Per episode the adapter:

1. resets the env; its reset messages are the run's input;
2. opens a session on the run's shared OpenAI-compatible server
   (:func:`~areal_env.agents.program_adapter.open_session`) and points an SDK
   ``OpenAIChatCompletionsModel`` at it, for every agent of the run (handoff
   targets included, through ``RunConfig.model``), so each completion is
   recorded into the episode's trajectory, token in, token out;
3. offers the env's tools (``env.tools``) to the starting agent as SDK function
   tools whose invocation steps the env: one assistant message with that one
   tool call per ``env.astep``, the env's tool message content as the result
   (the SDK calls tools one by one, so the env sees them one by one; a lock keeps
   concurrent calls in order);
4. runs ``Runner.run`` with tracing off (the SDK's exporter would call
   api.openai.com), then steps the env with the final output, which scores it.

The episode's reward is the env's (tool steps and the final step summed). An SDK
failure (max turns, a model error, a tool that raises) or a run that never
called the model raises :class:`~areal_env.agents.program_adapter.AgentProgramError`:
a failed episode, counted by the rollout.

The SDK (import name ``agents``: our ``agents/`` folder is ``areal_env.agents``)
is imported lazily, so the rest of areal-env works without the extra.

Example (config)::

    agent:
      name: openai_agents
      kwargs:
        factory: examples/openai_agents/math_agent.py:make_agent
        max_turns: 4
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from areal_env.agents.base import finish_trajectory
from areal_env.agents.factory import resolve_factory
from areal_env.agents.program_adapter import AgentProgramError, open_session, require_model_calls
from areal_env.inference.chat_client import EpisodeClient
from areal_env.types import Trajectory

INSTALL_HINT = "pip install 'areal-env[openai-agents]'"


def _sdk() -> Any:
    """The OpenAI Agents SDK module, or an ImportError that says how to install it."""
    try:
        import agents
    except ImportError as e:  # pragma: no cover - the dev environment has it
        raise ImportError(
            f"the openai_agents adapter needs the OpenAI Agents SDK: {INSTALL_HINT}"
        ) from e
    if not hasattr(agents, "Runner"):  # our own agents/ folder shadowing it
        raise ImportError(
            f"'import agents' found {getattr(agents, '__path__', agents)!r}, not the OpenAI "
            f"Agents SDK: run from elsewhere or {INSTALL_HINT}"
        )
    return agents


@dataclass(kw_only=True, slots=True)
class _EnvState:
    """What the env said while the SDK ran (tools step it)."""

    reward: float = 0.0
    done: bool = False
    info: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    tool_calls: int = 0


@dataclass(kw_only=True)
class OpenAIAgentsAdapter:
    """Runs an SDK ``Agent`` per episode on the episode's session (module docstring)."""

    agent: Any = None
    """The SDK ``Agent`` to start from; or None, with ``factory``."""
    factory: str | Callable[[], Any] | None = None
    """``"module:function"`` (or ``"file.py:function"``) or a callable returning the SDK Agent;
    called once, at construction."""
    max_turns: int = 8
    """The SDK's ``max_turns``: model calls at most; past it the episode fails."""
    model_name: str = "policy"
    """The model name the SDK sends (the server serves one model and ignores it)."""
    env_tools: bool = True
    """Offer ``env.tools`` to the starting agent as function tools that step the env."""
    tracing: bool = False
    """SDK tracing; off by default: its exporter calls out to api.openai.com."""

    def __post_init__(self) -> None:
        if (self.agent is None) == (self.factory is None):
            raise ValueError("agent.kwargs: give exactly one of 'agent' or 'factory'")
        if self.max_turns < 1:
            raise ValueError(f"agent.kwargs.max_turns must be >= 1, got {self.max_turns}")
        sdk = _sdk()
        if self.agent is None:
            factory = resolve_factory(self.factory)
            assert factory is not None
            self.agent = factory()
        if not isinstance(self.agent, sdk.Agent):
            raise ValueError(
                f"agent.kwargs.factory returned {type(self.agent)!r}, not an SDK Agent"
            )

    async def run(
        self,
        env: Any,
        client: EpisodeClient,
        *,
        seed: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Trajectory:
        """Play one episode with the SDK's Runner; the env scores the final output."""
        sdk = _sdk()
        obs, info = await env.areset(seed=seed, options=options)
        messages = list(obs)
        state = _EnvState(messages=messages)
        starting = self.agent
        if self.env_tools and env.tools:
            tools = [_env_tool(sdk, env, spec, state) for spec in env.tools]
            starting = starting.clone(tools=[*starting.tools, *tools])
        session = await open_session(env, client)
        openai_client = _async_openai(session.base_url, session.api_key)
        model = sdk.OpenAIChatCompletionsModel(model=self.model_name, openai_client=openai_client)
        run_config = sdk.RunConfig(model=model, tracing_disabled=not self.tracing)
        try:
            result = await sdk.Runner.run(
                starting, input=messages, max_turns=self.max_turns, run_config=run_config
            )
        except sdk.AgentsException as e:
            raise AgentProgramError(f"the Agents SDK run failed: {e!r}") from e
        finally:
            await session.close()
            await openai_client.close()
        require_model_calls(session, "the Agents SDK agent")
        if not state.done:
            action = {"role": "assistant", "content": _text(result.final_output)}
            messages.append(action)
            _, reward, state.done, _, step_info = await env.astep(action)
            state.reward += reward
            state.info = step_info
        traj = finish_trajectory(client, state.reward, {**info, **(state.info or {})})
        traj.messages = messages
        traj.truncated = not state.done
        traj.metrics.update(num_turns=float(traj.num_turns), tool_calls=float(state.tool_calls))
        return traj


def _async_openai(base_url: str, api_key: str) -> Any:
    """An AsyncOpenAI client on the session, without retries.

    A refused call (410 closed session, 400) would fail again; a timeout is an
    episode failure the rollout retries as a whole.
    """
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)


def _env_tool(sdk: Any, env: Any, spec: dict[str, Any], state: _EnvState) -> Any:
    """An SDK FunctionTool that steps ``env`` with one assistant tool call per invocation."""
    fn = spec.get("function", spec)
    lock = asyncio.Lock()

    async def invoke(ctx: Any, arguments: str) -> str:
        async with lock:
            if state.done:
                return "The episode has ended; give your final answer."
            call = {
                "id": ctx.tool_call_id,
                "type": "function",
                "function": {"name": fn["name"], "arguments": arguments},
            }
            action = {"role": "assistant", "content": None, "tool_calls": [call]}
            obs, reward, terminated, truncated, step_info = await env.astep(action)
            assert state.messages is not None
            state.messages.extend([action, *obs])
            state.reward += reward
            state.done = bool(terminated or truncated)
            state.info = step_info
            state.tool_calls += 1
            return "\n".join(str(m.get("content") or "") for m in obs)

    return sdk.FunctionTool(
        name=fn["name"],
        description=fn.get("description", ""),
        params_json_schema=fn.get("parameters") or {"type": "object", "properties": {}},
        on_invoke_tool=invoke,
        strict_json_schema=False,  # the env's schema as it is (optional args stay optional)
    )


def _text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if hasattr(output, "model_dump_json"):
        return str(output.model_dump_json())
    return json.dumps(output) if isinstance(output, (dict, list)) else str(output)


__all__ = ["INSTALL_HINT", "OpenAIAgentsAdapter"]
