"""Train the model behind a CAMEL ``ChatAgent`` without rewriting the agent.

The user keeps their agent as a factory that builds a ``camel.agents.ChatAgent``
around a model and tools it is given. Per episode the adapter:

1. resets the env and opens a session on the run's OpenAI-compatible server
   (:mod:`areal_env.serving`), so every completion the agent asks for is
   recorded into this episode's trajectory, token in and token out;
2. builds the model through CAMEL's own OpenAI-compatible platform pointed at
   the session (``base_url`` and per-episode API key), with a token counter on
   our tokenizer: CAMEL's default counter downloads tiktoken data, which an
   offline machine cannot do (and it would count the wrong tokens anyway);
3. offers the env's tools as CAMEL ``FunctionTool`` s whose calls step the env
   (one env step per call; CAMEL runs a message's calls one by one), so the env
   runs its tools and counts their errors as it does for our own agent;
4. sends the env's first user message through ``ChatAgent.astep`` and steps the
   env with the agent's final answer, which the env scores.

The episode ends when the env says so: a tool call that ends it (a turn limit)
stops the agent there rather than letting it ask the model once more.

``camel-ai`` is an optional extra (``pip install 'areal-env[camel]'``) and is
imported only when an adapter is built. It cannot share a pip environment with
``openai-agents`` (their pydantic pins clash), so it lives in its own virtual
environment: see ``docs/camel.md``.

Example (a factory module of the user's, named in the config as ``"module:function"``)::

    from camel.agents import ChatAgent

    def make_agent(model, tools, system_message):
        return ChatAgent(system_message=system_message, model=model, tools=tools)

    agent = CamelAdapter(factory=make_agent)     # or factory="my_pkg.agents:make_agent"
    trajectory = await agent.run(env, client.episode(), seed=0)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from areal_env.agents.base import finish_trajectory
from areal_env.agents.factory import resolve_factory
from areal_env.errors import InferenceError
from areal_env.inference.chat_client import EpisodeClient
from areal_env.serving.server import OpenAIServer
from areal_env.types import Trajectory

INSTALL_HINT = (
    "the CAMEL adapter needs camel-ai: pip install 'areal-env[camel]' in its own virtual "
    "environment (it cannot share one with openai-agents; see docs/camel.md)"
)

SERVER_KEY = "openai_server"
"""Resource key of the run's OpenAI-compatible server (shared with the other adapters)."""

Message = dict[str, Any]


def _camel() -> Any:
    """The ``camel`` modules the adapter uses, or an ImportError naming the extra."""
    try:
        from camel import agents, models, toolkits, types, utils
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return agents, models, toolkits, types, utils


def token_counter(tokenizer: Any) -> Any:
    """A CAMEL token counter on our tokenizer: offline, and counting the served model's tokens.

    Messages are counted as their text (content, tool-call names and arguments)
    plus a few tokens each for the template's turn markers; CAMEL uses the count
    only to decide when its memory window is full.
    """
    _, _, _, _, utils = _camel()

    class TokenizerCounter(utils.BaseTokenCounter):
        def count_tokens_from_messages(self, messages: list[Message]) -> int:
            return sum(4 + len(self.encode(_message_text(m))) for m in messages)

        def encode(self, text: str) -> list[int]:
            return list(tokenizer.encode(text, add_special_tokens=False))

        def decode(self, token_ids: list[int]) -> str:
            return str(tokenizer.decode(token_ids))

    return TokenizerCounter()


def _message_text(message: Message) -> str:
    content = message.get("content") or ""
    if not isinstance(content, str):  # text parts
        content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    calls = message.get("tool_calls") or []
    return content + "".join(json.dumps(c.get("function", c), default=str) for c in calls)


class _EpisodeOver(BaseException):
    """Raised from a tool once the env ended the episode, to stop the CAMEL agent there.

    A BaseException because CAMEL turns a tool's ``Exception`` into a tool
    result and asks the model again; this one must end ``astep`` instead.
    """


@dataclass(slots=True)
class _EnvStepper:
    """Steps the env for the agent's tool calls and final answer; keeps reward and end."""

    env: Any
    reward: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    truncated: bool = False
    tool_calls: int = 0

    async def step(self, message: Message) -> list[Message]:
        obs, reward, done, cut, info = await self.env.astep(message)
        self.reward += float(reward)
        self.info.update(info)
        self.done, self.truncated = bool(done), bool(cut)
        return list(obs)

    def function_tool(self, schema: dict[str, Any]) -> Any:
        """A CAMEL ``FunctionTool`` with the env's own schema that steps the env when called."""
        _, _, toolkits, _, _ = _camel()
        name = schema["function"]["name"]

        async def call_env_tool(**arguments: Any) -> str:
            if self.done or self.truncated:
                raise _EpisodeOver
            self.tool_calls += 1
            call_id = f"call_{self.tool_calls}"
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
            obs = await self.step({"role": "assistant", "content": None, "tool_calls": [call]})
            if self.done or self.truncated:
                raise _EpisodeOver
            replies = [m for m in obs if m.get("tool_call_id") in (call_id, None)] or obs
            return "\n".join(str(m.get("content") or "") for m in replies)

        call_env_tool.__name__ = name
        return toolkits.FunctionTool(call_env_tool, openai_tool_schema=schema)


@dataclass(kw_only=True, slots=True)
class CamelAdapter:
    """Plays an episode with a user's CAMEL ``ChatAgent`` (see the module docstring)."""

    factory: str | Callable[..., Any]
    """``factory(model=, tools=, system_message=) -> ChatAgent``, or its ``"module:function"``.

    ``model`` is the CAMEL model backend pointed at the episode's session,
    ``tools`` the env's tools as ``FunctionTool`` s (add your own beside them),
    ``system_message`` the env's system prompt or None (keep or replace it).
    """
    model_config: dict[str, Any] = field(default_factory=dict)
    """CAMEL's ``model_config_dict`` (e.g. ``{"max_tokens": 64}``); unset keys: the server's."""
    timeout: float = 120.0
    """Seconds the CAMEL model's HTTP client waits for one completion."""

    def __post_init__(self) -> None:
        _camel()  # fail at start-up, naming the extra, not in every episode
        camel_log = logging.getLogger("camel")
        if camel_log.level == logging.NOTSET:  # CAMEL logs every completion at INFO
            camel_log.setLevel(logging.WARNING)
        self.factory = resolve_factory(self.factory)

    async def run(
        self,
        env: Any,
        client: EpisodeClient,
        *,
        seed: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Trajectory:
        """Reset ``env``, run the CAMEL agent on its task through a session, score its answer."""
        obs, info = await env.areset(seed=seed, options=options)
        system, task = _split_observation(obs)
        server = await env.resources.aget(SERVER_KEY, lambda: OpenAIServer.launch(client.shared))
        stepper = _EnvStepper(env)
        session = server.sessions.open(client)
        try:
            agent = self.factory(
                model=self._model(session, client),
                tools=[stepper.function_tool(s) for s in env.tools or []],
                system_message=system,
            )
            answer = await self._ask(agent, task)
            if not (stepper.done or stepper.truncated):
                await stepper.step({"role": "assistant", "content": answer})
        finally:
            await session.close()
        traj = finish_trajectory(client, stepper.reward, {**info, **stepper.info})
        traj.truncated = not stepper.done
        traj.metrics.update(
            num_turns=float(traj.num_turns),
            tool_calls=float(stepper.tool_calls),
            tool_errors=float(stepper.info.get("tool_errors", 0)),
        )
        return traj

    def _model(self, session: Any, client: EpisodeClient) -> Any:
        """CAMEL's OpenAI-compatible model backend, pointed at the episode's session."""
        _, models, _, types, _ = _camel()
        return models.ModelFactory.create(
            model_platform=types.ModelPlatformType.OPENAI_COMPATIBLE_MODEL,
            model_type=client.shared.model_name,
            model_config_dict=dict(self.model_config),
            url=session.base_url,
            api_key=session.api_key,
            token_counter=token_counter(client.shared.tokenizer),
            timeout=self.timeout,
        )

    @staticmethod
    async def _ask(agent: Any, task: str) -> str:
        """The agent's final text, or "" when a tool call ended the episode first."""
        import openai

        try:
            response = await agent.astep(task)
        except _EpisodeOver:
            return ""
        except openai.APIError as e:  # the session refused or failed a call: an episode fault
            raise InferenceError(f"the CAMEL agent's model call failed: {e}") from e
        msgs = getattr(response, "msgs", None) or []
        return str(msgs[-1].content or "") if msgs else ""


def _split_observation(obs: list[Message]) -> tuple[str | None, str]:
    """The env's system prompt (None if none) and its task text (the other messages)."""
    system = [str(m.get("content") or "") for m in obs if m.get("role") in ("system", "developer")]
    rest = [
        str(m.get("content") or "") for m in obs if m.get("role") not in ("system", "developer")
    ]
    return ("\n".join(system) if system else None), "\n".join(rest)
