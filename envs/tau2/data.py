"""tau2 task data: where it lives, its schema as pydantic models, and loading.

tau2's convention is kept so one folder serves both tau2 itself and us: the data
root (``data_dir=``, else the ``TAU2_DATA_DIR`` environment variable) is the
folder that *contains* ``tau2/domains/<domain>/`` (``../shared/data`` has this
layout). A domain folder holds ``tasks.json``, ``split_tasks.json``, its policy
markdown and its DB files.

The models follow tau2's ``data_model/tasks.py`` field for field, so every task
file of the four domains validates; fields we do not use yet (``ticket``,
``annotations``) are kept as loose values rather than rejected.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DATA_DIR_ENV = "TAU2_DATA_DIR"
"""The environment variable tau2 itself reads for its data root."""

Requestor = Literal["assistant", "user"]


class StructuredInstructions(BaseModel):
    """What the simulated user knows and wants (airline, retail, telecom)."""

    domain: str
    reason_for_call: str
    known_info: str | None = None
    unknown_info: str | None = None
    task_instructions: str


class UserScenario(BaseModel):
    """Everything the user simulator is told; mock tasks give plain-text instructions."""

    persona: str | None = None
    instructions: StructuredInstructions | str


class Action(BaseModel):
    """A gold tool call: who makes it, and which arguments the ACTION check compares."""

    action_id: str
    requestor: Requestor = "assistant"
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    info: str | None = None
    compare_args: list[str] | None = None
    """Arguments the ACTION check compares; None means all the call's arguments."""

    def matches(self, name: str, arguments: dict[str, Any]) -> bool:
        """tau2's ``compare_with_tool_call``: same name, same values on the compared keys.

        With ``compare_args`` None the keys are the *call's*, so a gold argument the
        call leaves out is not compared (tau2's rule, kept as is).
        """
        if name != self.name:
            return False
        keys = set(arguments) if self.compare_args is None else set(self.compare_args)
        if not keys:
            return True
        return {k: v for k, v in arguments.items() if k in keys} == {
            k: v for k, v in self.arguments.items() if k in keys
        }


class EnvFunctionCall(BaseModel):
    """A call of a toolkit function (tool or not) on the agent's or the user's side."""

    env_type: Requestor
    func_name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class EnvAssertion(EnvFunctionCall):
    """An ``assert_*`` call whose bool result must equal ``assert_value``."""

    assert_value: bool = True
    message: str | None = None


class RewardType(StrEnum):
    """The components a task's ``reward_basis`` can name."""

    DB = "DB"
    ENV_ASSERTION = "ENV_ASSERTION"
    NL_ASSERTION = "NL_ASSERTION"
    ACTION = "ACTION"
    COMMUNICATE = "COMMUNICATE"


class EvaluationCriteria(BaseModel):
    """How a run of the task is scored (see ``reward.py``)."""

    actions: list[Action] | None = None
    env_assertions: list[EnvAssertion] | None = None
    communicate_info: list[str] | None = None
    nl_assertions: list[str] | None = None
    reward_basis: list[RewardType] = Field(
        default_factory=lambda: [RewardType.DB, RewardType.COMMUNICATE]
    )


class InitializationData(BaseModel):
    """Deep-merged into the agent's / the user's DB before the episode."""

    agent_data: dict[str, Any] | None = None
    user_data: dict[str, Any] | None = None


class InitialState(BaseModel):
    """Where the episode starts: DB updates, setup calls, and earlier messages."""

    initialization_data: InitializationData | None = None
    initialization_actions: list[EnvFunctionCall] | None = None
    message_history: list[dict[str, Any]] | None = None
    """tau2-format messages (tool calls as ``{id, name, arguments}``)."""


class Task(BaseModel):
    """One tau2 task."""

    model_config = ConfigDict(extra="allow")

    id: str
    description: dict[str, Any] | None = None
    user_scenario: UserScenario
    ticket: str | None = None
    initial_state: InitialState | None = None
    evaluation_criteria: EvaluationCriteria | None = None


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The tau2 data root: ``data_dir`` when given, else ``$TAU2_DATA_DIR``.

    Raises:
        FileNotFoundError: naming both sources when neither is set, or the
            folder given does not exist.
    """
    source = "data_dir=" if data_dir is not None else f"${DATA_DIR_ENV}"
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not value:
        raise FileNotFoundError(
            "tau2 data not found: pass data_dir= or set the environment variable "
            f"{DATA_DIR_ENV} to the folder that contains tau2/domains/<domain>/ "
            "(tau2-bench's data/ folder, e.g. ../shared/data)"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"tau2 data root {path} (from {source}) is not a folder")
    return path


def domain_dir(data_dir: str | Path | None, domain: str) -> Path:
    """``<root>/tau2/domains/<domain>``, checked to exist (one clear error otherwise)."""
    root = resolve_data_dir(data_dir)
    path = root / "tau2" / "domains" / domain
    if not path.is_dir():
        found = sorted(p.name for p in (root / "tau2" / "domains").glob("*") if p.is_dir())
        raise FileNotFoundError(
            f"tau2 domain folder {path} not found (data root from data_dir= or "
            f"${DATA_DIR_ENV}; domains there: {found or 'none'})"
        )
    return path


def load_tasks(folder: Path, file: str = "tasks.json") -> list[Task]:
    """Every task of ``folder/file``, validated."""
    records = json.loads((folder / file).read_text(encoding="utf-8"))
    return [Task.model_validate(r) for r in records]


def load_splits(folder: Path) -> dict[str, list[str]]:
    """``split_tasks.json`` (split name -> task ids), or ``{}`` when the file is absent."""
    path = folder / "split_tasks.json"
    if not path.exists():
        return {}
    return {k: list(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


def select_split(tasks: list[Task], splits: dict[str, list[str]], split: str) -> list[Task]:
    """The tasks of ``split`` in file order; ``"base"`` without a split file means all.

    Raises:
        ValueError: naming the valid splits when ``split`` is unknown or has no
            task bodies here (telecom's ``full`` ids, for one).
    """
    if split == "base" and "base" not in splits:
        return list(tasks)
    if split not in splits:
        raise ValueError(f"unknown tau2 split {split!r}; valid: {sorted(splits) or ['base']}")
    ids = set(splits[split])
    chosen = [t for t in tasks if t.id in ids]
    if not chosen:
        raise ValueError(f"tau2 split {split!r} names no task present in tasks.json")
    return chosen
