"""The simulated user: a small protocol, and the scripted user that tests and evals use.

The env talks to any user through :class:`UserSimulator`: ``start`` once per
episode with the task (and the user's tool schemas, for domains where the user
has a device), then ``reply`` with the conversation so far, answering the
user's next message. A reply is an OpenAI-style ``role="user"`` message: text
for the agent, or ``tool_calls`` on the user's own tools, which the env runs on
the user side and hands back (the agent never sees them) before asking again.
The user ends the episode the way tau2's does: a text containing ``###STOP###``,
``###TRANSFER###`` or ``###OUT-OF-SCOPE###``. The LLM user (tau2's simulation
guidelines + the scenario, behind an OpenAI-compatible endpoint) is one more
class with these two methods (``llm_user.py``; :func:`make_user` builds it).
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from areal_env.envs.tau2.data import StructuredInstructions, Task

if TYPE_CHECKING:
    from areal_env.envs.tau2.user_cache import CallCache
    from areal_env.resources import ResourceRegistry

STOP = "###STOP###"
TRANSFER = "###TRANSFER###"
OUT_OF_SCOPE = "###OUT-OF-SCOPE###"
STOP_TOKENS = (STOP, TRANSFER, OUT_OF_SCOPE)
"""Any of these in a user's text ends the conversation (tau2's ``is_stop``)."""


def is_stop(message: dict[str, Any]) -> bool:
    """Whether a user message ends the conversation (a tool-call message never does)."""
    if message.get("tool_calls"):
        return False
    content = message.get("content")
    return isinstance(content, str) and any(t in content for t in STOP_TOKENS)


class UserSimulator(Protocol):
    """What the env needs from a simulated user (see the module docstring)."""

    async def start(self, task: Task, *, tools: list[dict[str, Any]], options: dict) -> None:
        """Begin an episode of ``task``; ``options`` are the env's reset options."""
        ...

    async def reply(self, conversation: list[dict[str, Any]]) -> dict[str, Any]:
        """The user's next message, given every message so far (the user's own included)."""
        ...


def opening_line(task: Task) -> str:
    """What the scripted user says first: the reason for calling.

    Mock tasks have plain-text instructions and no reason for calling; their
    ``ticket`` (else the instructions) stands in for it.
    """
    instructions = task.user_scenario.instructions
    if isinstance(instructions, StructuredInstructions):
        return instructions.reason_for_call.strip()
    return (task.ticket or instructions).strip()


class ScriptedUser:
    """Opens with the reason for calling, says ``options["user_lines"]`` in turn, then stops.

    A line is a string (said to the agent), or ``{"tool_calls": [{"name", "arguments"}]}``
    (the user calls its own tools, as in telecom; the results come back to the user
    only, and the next line follows). When the lines run out it says ``###STOP###``.
    """

    def __init__(self) -> None:
        """An idle user; ``start`` loads an episode's lines."""
        self._lines: deque[str | dict[str, Any]] = deque()
        self._calls = 0

    async def start(self, task: Task, *, tools: list[dict[str, Any]], options: dict) -> None:
        """Queue the opening line and the episode's ``user_lines``."""
        lines = options.get("user_lines") or []
        if not isinstance(lines, list | tuple) or not all(
            isinstance(x, str) or (isinstance(x, dict) and "tool_calls" in x) for x in lines
        ):
            raise ValueError(
                "options['user_lines'] must be a list of strings or {'tool_calls': [...]} dicts"
            )
        self._lines = deque([opening_line(task), *lines])
        self._calls = 0

    async def reply(self, conversation: list[dict[str, Any]]) -> dict[str, Any]:
        """The next scripted line, or ``###STOP###`` when none is left."""
        if not self._lines:
            return {"role": "user", "content": STOP}
        line = self._lines.popleft()
        if isinstance(line, str):
            return {"role": "user", "content": line}
        calls = []
        for c in line["tool_calls"]:
            self._calls += 1
            calls.append(
                {
                    "id": f"user_call_{self._calls}",
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
                }
            )
        return {"role": "user", "content": None, "tool_calls": calls}


USERS = ("scripted", "llm")
"""``user=`` names: the scripted user, and tau2's LLM user (``llm_user.py``)."""

ENGINE_KEYS = {"policy": "inference/policy_client"}
"""``user={"kind": "llm", "engine": NAME}``: the run's ``ResourceRegistry`` key of
that engine's ``ChatClient`` (``trainers/build.py`` registers the policy's)."""


class RegisteredClient:
    """A run's ``ChatClient``, found in the registry on first use, called untracked.

    Resolving lazily lets the env be built (and checked) before, or outside, the
    run that registers the client; the user's calls never become training rows.
    """

    def __init__(self, resources: ResourceRegistry, engine: str) -> None:
        """Look up ``ENGINE_KEYS[engine]`` in ``resources`` when the user first speaks."""
        self.resources, self.engine = resources, engine

    @property
    def chat(self) -> Any:
        """The untracked client's ``chat`` (``chat.completions.create``)."""
        return self.resources.get(ENGINE_KEYS[self.engine], self._missing).untracked().chat

    def _missing(self) -> Any:
        raise RuntimeError(
            f"user engine {self.engine!r}: no ChatClient under {ENGINE_KEYS[self.engine]!r} in "
            f"ResourceRegistry {self.resources.name!r}; only a training run (trainers/build.py) "
            "registers it. Outside a run pass user={'kind': 'llm', 'client': ...} or an endpoint"
        )


def make_user(
    user: str | dict[str, Any] | UserSimulator,
    *,
    data_dir: str | Path | None = None,
    cache: CallCache | None = None,
    resources: ResourceRegistry | None = None,
) -> UserSimulator:
    """A user from its name, a config dict, or an object that already is one.

    ``"scripted"`` is :class:`ScriptedUser`. ``{"kind": "llm", "model": ...,
    "base_url": ..., "api_key": ..., "client": ..., "llm_args": {...}}`` (or
    ``"llm"`` alone, which only a replay ``cache`` can serve) is
    :class:`~areal_env.envs.tau2.llm_user.LLMUser`, reading its guidelines under
    ``data_dir`` and recording/replaying through ``cache``. ``"engine": "policy"``
    in place of ``client``/``base_url`` is the run's own policy engine in process
    (its ``ChatClient`` in ``resources``, called untracked: see :data:`ENGINE_KEYS`).
    """
    if isinstance(user, str | dict):
        config: dict[str, Any] = {"kind": user} if isinstance(user, str) else dict(user)
        kind = config.get("kind", "llm" if isinstance(user, dict) else None)
        if kind not in USERS:
            raise ValueError(f"unknown tau2 user {kind!r}; valid: {list(USERS)}")
        if kind == "scripted":
            if len(config) > 1:
                raise ValueError(f"the scripted user takes no config, got {sorted(config)}")
            return ScriptedUser()
        from areal_env.envs.tau2.llm_user import LLMUser

        if data_dir is None:
            raise ValueError("the LLM user needs the tau2 data root for its guidelines")
        engine = config.pop("engine", None)
        if engine is not None:
            if engine not in ENGINE_KEYS:
                raise ValueError(f"unknown user engine {engine!r}; valid: {list(ENGINE_KEYS)}")
            if "client" in config or "base_url" in config:
                raise ValueError("give the LLM user one of engine, client or base_url")
            if resources is None:
                from areal_env.resources import default_registry

                resources = default_registry()
            config["client"] = RegisteredClient(resources, engine)
        return LLMUser.from_config(config, data_dir=data_dir, cache=cache)
    return user
