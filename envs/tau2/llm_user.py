"""tau2's LLM user simulator as a :class:`~areal_env.envs.tau2.user.UserSimulator`.

The user is a chat model behind any OpenAI-compatible client: an endpoint
(``base_url``, ``model``, ``api_key``; the official ``openai.AsyncOpenAI`` is
made lazily, on the env's event loop, and closed with the env), or an object
with the same ``chat.completions.create`` API, e.g. our own engine in process
through ``ChatClient.untracked()`` (user calls then never become training rows).

It is prompted as tau2's ``UserSimulator`` is:

- system: tau2's simulation guidelines, read from the data root at run time
  (``tau2/user_simulator/simulation_guidelines.md``, the ``_tools`` variant
  when the domain gives the user tools), then the scenario in
  ``<scenario>...</scenario>`` written as tau2's ``str(UserScenario)``
  (``Persona:`` / ``Instructions:``, tab-indented);
- roles flipped: the user's own messages are the model's ``assistant`` turns,
  the agent's text messages its ``user`` turns, and only the results of the
  user's own tool calls are shown; the agent's tool calls and their results
  are not (tau2's ``is_valid_user_history_message`` + ``flip_roles``);
- a task without message history starts as tau2's orchestrator does: the agent
  has said ``"Hi! How can I help you today?"`` (our env does not show that line
  to the agent, whose first observation is the user's opening).

The reply is returned as is: the env ends the episode on ``###STOP###``,
``###TRANSFER###`` or ``###OUT-OF-SCOPE###`` in its text (tau2's ``is_stop``,
``user.py``), and runs its ``tool_calls`` on the user's toolkit, as with
:class:`~areal_env.envs.tau2.user.ScriptedUser`'s tool lines. With a
:class:`~areal_env.envs.tau2.user_cache.CallCache` every call is recorded or
replayed under ``("user", task id, turn, hash of the request)``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from areal_env.envs.tau2.data import StructuredInstructions, Task, UserScenario
from areal_env.envs.tau2.endpoint import EndpointClientMixin
from areal_env.envs.tau2.user_cache import CallCache

GUIDELINES = "simulation_guidelines.md"
GUIDELINES_TOOLS = "simulation_guidelines_tools.md"
FIRST_AGENT_MESSAGE = "Hi! How can I help you today?"
"""tau2's ``DEFAULT_FIRST_AGENT_MESSAGE``, what the user answers when there is no history."""
CALL_KIND = "user"
"""The cache's call kind for user-simulator calls."""
CONFIG_KEYS = frozenset({"kind", "base_url", "model", "api_key", "client", "llm_args"})
"""Keys of the ``user={"kind": "llm", ...}`` config."""


def guidelines_path(data_dir: str | Path, *, tools: bool) -> Path:
    """Where tau2 keeps its user guidelines under the data root."""
    return Path(data_dir) / "tau2" / "user_simulator" / (GUIDELINES_TOOLS if tools else GUIDELINES)


def scenario_text(scenario: UserScenario) -> str:
    """tau2's ``str(UserScenario)``: the persona and the instructions, tab-indented."""
    lines = []
    if scenario.persona is not None:
        lines += ["Persona:", textwrap.indent(scenario.persona, "\t")]
    lines += ["Instructions:", textwrap.indent(_instructions_text(scenario.instructions), "\t")]
    return "\n".join(lines)


def _instructions_text(instructions: StructuredInstructions | str) -> str:
    """tau2's ``str(StructuredUserInstructions)`` (plain text stays as is)."""
    if isinstance(instructions, str):
        return instructions
    i, tab = instructions, "\t"
    lines = [f"Domain: {i.domain}", f"Reason for call:\n{textwrap.indent(i.reason_for_call, tab)}"]
    if i.known_info is not None:
        lines.append(f"Known info:\n{textwrap.indent(i.known_info, tab)}")
    if i.unknown_info is not None:
        lines.append(f"Unknown info:\n{textwrap.indent(i.unknown_info, tab)}")
    lines.append(f"Task instructions:\n{textwrap.indent(i.task_instructions, tab)}")
    return "\n".join(lines)


def system_prompt(guidelines: str, scenario: UserScenario) -> str:
    """tau2's user system prompt: guidelines, then the scenario in ``<scenario>`` tags."""
    guidelines = guidelines.replace("<PERSONA_GUIDELINES>", "")
    return f"{guidelines}\n\n<scenario>\n{scenario_text(scenario)}\n</scenario>".strip()


def flip_roles(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The env's conversation as the user model sees it (tau2's ``flip_roles``).

    Kept: the user's messages (as ``assistant``, tool calls included), the
    agent's text-only messages (as ``user``), and tool messages that answer a
    user's tool calls. Dropped: system messages, the agent's tool-call messages
    and their results, which tau2 never routes to the user.
    """
    flipped: list[dict[str, Any]] = []
    user_calls = False  # whether the tool messages now following answer the user
    for m in conversation:
        role = m.get("role")
        if role == "tool":
            if user_calls:
                flipped.append(
                    {
                        "role": "tool",
                        "tool_call_id": m.get("tool_call_id") or "",
                        "content": m.get("content") or "",
                    }
                )
            continue
        user_calls = role == "user" and bool(m.get("tool_calls"))
        if role == "user":
            out: dict[str, Any] = {"role": "assistant", "content": m.get("content")}
            if m.get("tool_calls"):
                out["tool_calls"] = list(m["tool_calls"])
            flipped.append(out)
        elif role == "assistant" and not m.get("tool_calls"):
            flipped.append({"role": "user", "content": m.get("content") or ""})
    return flipped


class LLMUser(EndpointClientMixin):
    """tau2's LLM user (see the module docstring).

    Args:
        data_dir: the tau2 data root (its ``tau2/user_simulator/`` guidelines).
        client: an object with ``chat.completions.create`` (``ChatClient.untracked()``,
            an ``AsyncOpenAI``); None makes an ``AsyncOpenAI`` from the fields below.
        base_url: the endpoint's base URL (``http://host:8000/v1``); None is OpenAI's.
        model: the model name sent with each call (required for an endpoint).
        api_key: the endpoint's key; None reads ``OPENAI_API_KEY``, else ``"EMPTY"``
            (what local vLLM/SGLang servers accept).
        llm_args: extra ``create`` arguments (``temperature``, ``max_tokens``...).
        cache: record/replay every call (``replay`` needs no model at all).

    Raises:
        ValueError: when no model can be reached and the cache does not replay.
        FileNotFoundError: when the guidelines are not under ``data_dir``.
    """

    endpoint_role = "LLM user"

    def __init__(
        self,
        *,
        data_dir: str | Path,
        client: Any = None,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        llm_args: dict[str, Any] | None = None,
        cache: CallCache | None = None,
    ) -> None:
        if client is None and model is None and (cache is None or cache.mode != "replay"):
            raise ValueError(
                "the LLM user needs a model: user={'kind': 'llm', 'model': ..., 'base_url': ...} "
                "or {'kind': 'llm', 'client': ChatClient(...).untracked()}, or a replay cache "
                "(user_cache=..., user_cache_mode='replay')"
            )
        self.guidelines = {
            tools: guidelines_path(data_dir, tools=tools).read_text(encoding="utf-8")
            for tools in (False, True)
        }
        self.client = client
        self.base_url, self.model, self.api_key = base_url, model, api_key
        self.llm_args = dict(llm_args or {})
        self.cache = cache
        self._owns_client = False
        self._task: Task | None = None
        self._system = ""
        self._tools: list[dict[str, Any]] = []
        self._greet = True
        self._turn = 0

    @classmethod
    def from_config(
        cls, config: dict[str, Any], *, data_dir: str | Path, cache: CallCache | None
    ) -> LLMUser:
        """Build from a ``user={"kind": "llm", ...}`` dict (keys: :data:`CONFIG_KEYS`)."""
        unknown = set(config) - CONFIG_KEYS
        if unknown:
            raise ValueError(
                f"unknown LLM user config keys {sorted(unknown)}; valid: {sorted(CONFIG_KEYS)}"
            )
        kwargs = {k: v for k, v in config.items() if k != "kind"}
        return cls(data_dir=data_dir, cache=cache, **kwargs)

    async def start(self, task: Task, *, tools: list[dict[str, Any]], options: dict) -> None:
        """Build the episode's system prompt (tools variant when the user has tools)."""
        if options.get("user_lines"):
            raise ValueError(
                "options['user_lines'] script the scripted user; the LLM user has none"
            )
        self._task, self._tools, self._turn = task, list(tools), 0
        self._system = system_prompt(self.guidelines[bool(tools)], task.user_scenario)
        history = task.initial_state.message_history if task.initial_state else None
        self._greet = not history

    def request(self, conversation: list[dict[str, Any]]) -> dict[str, Any]:
        """The ``create`` arguments for the next reply (messages and tools); what is hashed."""
        messages = [{"role": "system", "content": self._system}]
        if self._greet:
            messages.append({"role": "user", "content": FIRST_AGENT_MESSAGE})
        messages += flip_roles(conversation)
        return {"messages": messages, **({"tools": self._tools} if self._tools else {})}

    async def reply(self, conversation: list[dict[str, Any]]) -> dict[str, Any]:
        """The user's next message: the model's reply, recorded or replayed when cached."""
        if self._task is None:
            raise RuntimeError("LLMUser.reply before start")
        request = self.request(conversation)
        turn, self._turn = self._turn, self._turn + 1

        async def call_model() -> dict[str, Any]:
            return await self._generate(request)

        if self.cache is None:
            out = await call_model()
        else:
            out = await self.cache.call(CALL_KIND, self._task.id, turn, request, call_model)
        message: dict[str, Any] = {"role": "user", "content": out.get("content")}
        if out.get("tool_calls"):
            message["tool_calls"] = list(out["tool_calls"])
        elif message["content"] is None:
            message["content"] = ""
        return message

    async def _generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """One model call; the reply as plain JSON (content, OpenAI-shaped tool calls)."""
        client = self._client()
        completion = await client.chat.completions.create(
            model=self.model or "tau2-user", **request, **self.llm_args
        )
        message = completion.choices[0].message
        out: dict[str, Any] = {"content": message.content}
        calls = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in message.tool_calls or []
        ]
        if calls:
            out["tool_calls"] = calls
        return out


__all__ = [
    "CALL_KIND",
    "FIRST_AGENT_MESSAGE",
    "LLMUser",
    "flip_roles",
    "guidelines_path",
    "scenario_text",
    "system_prompt",
]
