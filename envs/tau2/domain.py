"""A tau2 domain: its static description, and the live state one episode runs on.

:class:`Domain` says what a domain is made of (DB types and files, toolkit
classes, policy file). :class:`DomainState` is tau2's ``Environment``: the two
toolkits of one episode (agent-side and, where the domain has one, user-side,
each over its own DB copy), the calls by requestor, the task's initial state,
and the DB hashes the reward compares. A new domain (airline, retail, telecom)
is a ``domains/<name>/<name>_domain.py`` that defines ``DOMAIN`` and one line
in :data:`DOMAINS`; the env, the reward and the tests need nothing else. Module
basenames stay unique across domains (``airline_tools.py``, not ``tools.py``):
the folders have no ``__init__.py``, and pytest's doctest collection imports
modules by basename.

Loaded DBs are shared per data folder through the run's resources and every
episode works on a deep copy, so a 7 MB airline DB is parsed once per run.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from areal_env.envs.tau2.data import (
    EnvAssertion,
    EnvFunctionCall,
    InitialState,
    Requestor,
    Task,
    domain_dir,
    load_splits,
    load_tasks,
)
from areal_env.envs.tau2.toolkit import DB, Toolkit, ToolResult

DOMAINS: dict[str, str] = {
    "mock": "areal_env.envs.tau2.domains.mock.mock_domain:DOMAIN",
    "airline": "areal_env.envs.tau2.domains.airline.airline_domain:DOMAIN",
    "retail": "areal_env.envs.tau2.domains.retail.retail_domain:DOMAIN",
    "telecom": "areal_env.envs.tau2.domains.telecom.telecom_domain:DOMAIN",
}
"""Domain name -> ``module:attribute`` of its :class:`Domain` (imported on first use)."""


@dataclass(frozen=True, kw_only=True)
class Domain:
    """What a tau2 domain is made of."""

    name: str
    db_type: type[DB]
    db_file: str
    tools: type[Toolkit]
    policy_file: str = "policy.md"
    user_db_type: type[DB] | None = None
    user_db_file: str | None = None
    user_tools: type[Toolkit] | None = None
    tasks_file: str = "tasks.json"
    state_type: type[DomainState] | None = None
    """A :class:`DomainState` subclass whose ``sync`` ties the two sides (telecom)."""
    load_policy: Callable[[Path], str] | None = None
    """The policy text from the domain folder, when it is more than ``policy_file``."""


def get_domain(name: str) -> Domain:
    """The :class:`Domain` called ``name``; ValueError naming the known ones otherwise."""
    if name not in DOMAINS:
        raise ValueError(f"unknown tau2 domain {name!r}; available: {sorted(DOMAINS)}")
    module, attr = DOMAINS[name].split(":")
    domain = getattr(importlib.import_module(module), attr)
    assert isinstance(domain, Domain)
    return domain


@dataclass(frozen=True, kw_only=True)
class DomainData:
    """A domain's files as loaded once: tasks, splits, policy and pristine DBs."""

    domain: Domain
    folder: Path
    tasks: list[Task]
    splits: dict[str, list[str]]
    policy: str
    db: DB
    user_db: DB | None = None

    @classmethod
    def load(cls, domain: Domain, data_dir: str | Path | None) -> DomainData:
        """Read everything of ``domain`` under the data root (see ``data.py``)."""
        folder = domain_dir(data_dir, domain.name)
        user_db = None
        if domain.user_db_type is not None and domain.user_db_file is not None:
            user_db = domain.user_db_type.load(folder / domain.user_db_file)
        return cls(
            domain=domain,
            folder=folder,
            tasks=load_tasks(folder, domain.tasks_file),
            splits=load_splits(folder),
            policy=(
                domain.load_policy(folder)
                if domain.load_policy is not None
                else (folder / domain.policy_file).read_text(encoding="utf-8")
            ),
            db=domain.db_type.load(folder / domain.db_file),
            user_db=user_db,
        )

    def new_state(self) -> DomainState:
        """A fresh episode state over deep copies of the pristine DBs."""
        d = self.domain
        tools = d.tools(self.db.model_copy(deep=True))
        user_tools = None
        if d.user_tools is not None and self.user_db is not None:
            user_tools = d.user_tools(self.user_db.model_copy(deep=True))
        return (d.state_type or DomainState)(tools=tools, user_tools=user_tools)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call of a trajectory, in the form the domain and the reward use."""

    name: str
    arguments: dict[str, Any]
    requestor: Requestor = "assistant"
    id: str = ""


@dataclass
class DomainState:
    """tau2's ``Environment`` for one episode (see the module docstring)."""

    tools: Toolkit
    user_tools: Toolkit | None = None

    def toolkit(self, requestor: Requestor) -> Toolkit:
        """The agent's toolkit for ``"assistant"``, the user's for ``"user"``."""
        if requestor == "user":
            if self.user_tools is None:
                raise ValueError("User tools not available")
            return self.user_tools
        return self.tools

    def has_tool(self, call: ToolCall) -> bool:
        """Whether the requestor's toolkit has ``call.name``."""
        if call.requestor == "user" and self.user_tools is None:
            return False
        return self.toolkit(call.requestor).has_tool(call.name)

    def respond(self, call: ToolCall) -> ToolResult:
        """Run ``call`` and answer the tool message's text; never raises."""
        if call.requestor == "user" and self.user_tools is None:
            return ToolResult("Error: User tools not available", error=True)
        result = self.toolkit(call.requestor).call(call.name, call.arguments)
        self.sync()
        return result

    def make_tool_call(self, call: ToolCall) -> Any:
        """Run ``call`` and return its value; raises what the tool raises (gold replay)."""
        value = self.toolkit(call.requestor).use(call.name, call.arguments)
        self.sync()
        return value

    def sync(self) -> None:
        """Keep agent and user state consistent after a call (telecom will override)."""

    def run_function(self, call: EnvFunctionCall) -> Any:
        """An initialisation action or assertion function, on the side it names."""
        value = self.toolkit(call.env_type).run_function(call.func_name, call.arguments)
        self.sync()
        return value

    def check(self, assertion: EnvAssertion) -> bool:
        """Whether the assertion holds; a function that raises counts as not holding."""
        try:
            value = self.run_function(assertion)
        except Exception:
            return False
        if not isinstance(value, bool):
            raise TypeError(f"{assertion.func_name} returned {type(value).__name__}, not bool")
        return value == assertion.assert_value

    def apply(self, initial: InitialState | None) -> None:
        """Set up a task's initial state: DB updates, setup calls, history replay."""
        if initial is None:
            return
        data = initial.initialization_data
        if data is not None and data.agent_data is not None:
            self.tools.db = self.tools.db.updated(data.agent_data)
        if data is not None and data.user_data is not None:
            self.toolkit("user").db = self.toolkit("user").db.updated(data.user_data)
        for action in initial.initialization_actions or []:
            self.run_function(action)
        self.replay(history_tool_calls(initial.message_history or []))

    def replay(self, calls: Iterable[ToolCall]) -> None:
        """Re-run the state-changing calls among ``calls`` (unknown tools are skipped).

        tau2 replays only mutating tools, so reads never disturb the result, and
        a hallucinated name was a no-op live; errors are the model's and ignored.
        """
        for call in calls:
            if self.has_tool(call) and self.toolkit(call.requestor).mutates_state(call.name):
                self.respond(call)

    def db_hash(self) -> str:
        """Hash of the agent-side DB."""
        return self.tools.db_hash()

    def user_db_hash(self) -> str | None:
        """Hash of the user-side DB, None when the domain has none."""
        return None if self.user_tools is None else self.user_tools.db_hash()


def history_tool_calls(messages: list[dict[str, Any]]) -> list[ToolCall]:
    """Tool calls in tau2-format messages (``{id, name, arguments}`` per call)."""
    calls = []
    for m in messages:
        requestor: Requestor = "user" if m.get("role") == "user" else "assistant"
        for c in m.get("tool_calls") or []:
            calls.append(
                ToolCall(
                    name=c["name"],
                    arguments=dict(c.get("arguments") or {}),
                    requestor=c.get("requestor", requestor),
                    id=c.get("id", ""),
                )
            )
    return calls


def openai_tool_calls(message: dict[str, Any]) -> list[ToolCall | None]:
    """The tool calls of an OpenAI-style message; None for one whose arguments don't parse.

    A user message carries user-side calls (telecom's device tools).
    """
    requestor: Requestor = "user" if message.get("role") == "user" else "assistant"
    out: list[ToolCall | None] = []
    for c in message.get("tool_calls") or []:
        function = c.get("function") if isinstance(c, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            out.append(None)
            continue
        raw = function.get("arguments")
        try:
            args = json.loads(raw) if isinstance(raw, str) else (raw or {})
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            out.append(None)
            continue
        out.append(ToolCall(function["name"], args, requestor, str(c.get("id") or "")))
    return out


def to_openai_messages(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """tau2-format history messages as OpenAI chat messages (what the agent is shown)."""
    out: list[dict[str, Any]] = []
    for m in history:
        role = m.get("role")
        if role == "tool":
            out.append({"role": "tool", "tool_call_id": m.get("id", ""), "content": m["content"]})
            continue
        msg: dict[str, Any] = {"role": role, "content": m.get("content")}
        if m.get("tool_calls"):
            msg["tool_calls"] = [
                {
                    "id": c.get("id", ""),
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
                }
                for c in m["tool_calls"]
            ]
        out.append(msg)
    return out
