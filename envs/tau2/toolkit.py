"""Toolkits: a domain's tools as decorated methods over a pydantic database.

A domain writes its tools once, as plain methods with type hints and a
Google-style docstring, marked with :func:`is_tool` and their kind (tau2's
``ToolType``). Everything else comes from that one definition: the OpenAI
function schema the agent sees (summary + ``Args:`` descriptions, parameter
JSON schema from a pydantic model built from the signature), argument checking,
and the text of the tool message, so the three can never drift apart.

:meth:`Toolkit.call` never raises: it returns tau2's tool-message text, the
result serialised as tau2's ``Environment.to_json_str`` does (pydantic models as
JSON of ``model_dump()``, a string as is, a number as the JSON of its ``str``),
or ``"Error: <message>"`` on failure, with tau2's messages where tau2 has one:
``Tool 'x' not found.``, Python's own ``TypeError`` text for missing or
unexpected arguments, and the tool's exception text (``User u9 not found``).

One deliberate difference: tau2 passes arguments to the method unchecked, so a
wrong type either fails somewhere inside the tool or silently writes a bad value
into the DB. We validate them against the signature first (pydantic, lax mode:
``"3"`` for an int is accepted) and answer ``Error: Invalid arguments for tool
...``. For every well-typed call the behaviour, the DB and the text are tau2's.

Example:
    >>> from pydantic import BaseModel
    >>> class Counter(DB):
    ...     n: int = 0
    >>> class CounterTools(Toolkit[Counter]):
    ...     @is_tool(ToolType.WRITE)
    ...     def add(self, k: int) -> int:
    ...         '''Add k to the counter.
    ...
    ...         Args:
    ...             k: how much to add.
    ...         '''
    ...         self.db.n += k
    ...         return self.db.n
    >>> tools = CounterTools(Counter())
    >>> tools.call("add", {"k": 2}), tools.call("add", {"k": "x"}).error
    (ToolResult(content='"2"', error=False), True)
    >>> tools.call("sub", {}).content
    "Error: Tool 'sub' not found."
    >>> tools.schemas()[0]["function"]["parameters"]["properties"]["k"]["description"]
    'how much to add.'
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model


class ToolType(StrEnum):
    """What a tool does, as tau2 classifies it (``@is_tool(ToolType.WRITE)``)."""

    READ = "read"
    WRITE = "write"
    THINK = "think"
    GENERIC = "generic"


_TOOL_ATTR = "__tau2_tool__"


def is_tool(kind: ToolType = ToolType.READ, *, mutates_state: bool | None = None) -> Callable:
    """Mark a toolkit method as a tool of the given kind.

    Args:
        kind: READ, WRITE, THINK or GENERIC.
        mutates_state: whether the tool changes the DB; by default True for WRITE
            only (tau2's rule). The DB reward replays only mutating calls, so a
            WRITE-looking tool that changes nothing (a transfer) may say False.
    """
    mutates = kind == ToolType.WRITE if mutates_state is None else mutates_state

    def mark(func: Callable) -> Callable:
        setattr(func, _TOOL_ATTR, (kind, mutates))
        return func

    return mark


class DB(BaseModel):
    """A domain database: a pydantic model loaded from JSON or TOML; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def load(cls, path: str | Path) -> DB:
        """Read and validate ``path`` (``.json`` or ``.toml``)."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        return cls.model_validate(data)

    def hash(self) -> str:
        """sha256 of ``json.dumps(model_dump(), sort_keys=True, default=str)``, as tau2's."""
        text = json.dumps(self.model_dump(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def updated(self, update: dict[str, Any]) -> DB:
        """A new DB: ``update`` deep-merged into this one (tau2's ``update_db``).

        Dicts merge key by key, anything else (lists included) is replaced, and
        the result is validated again, so a bad task update fails loudly.
        """
        return type(self).model_validate(deep_merge(self.model_dump(), update))


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in recursively (a new dict; inputs untouched)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What one tool call answered: the tool message's text, and whether it failed."""

    content: str
    error: bool = False


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool's static description, built once per toolkit class."""

    name: str
    kind: ToolType
    mutates_state: bool
    schema: dict[str, Any]
    """The OpenAI function schema."""
    params: type[BaseModel]
    """The arguments as a pydantic model (validation)."""


DBT = TypeVar("DBT", bound=DB)


class Toolkit(Generic[DBT]):
    """Base of a domain's agent or user tools (see the module docstring).

    Subclasses mark tools with :func:`is_tool`; other public methods (``assert_*``,
    initialisation helpers) are reachable by :meth:`run_function` only, as in tau2,
    so task data can call them and the agent cannot.
    """

    _specs: ClassVar[dict[str, ToolSpec]] = {}

    def __init__(self, db: DBT) -> None:
        """Hold ``db``; tools read and change it in place."""
        self.db = db

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: dict[str, ToolSpec] = {}
        for name in dir(cls):
            marker = getattr(getattr(cls, name, None), _TOOL_ATTR, None)
            if marker is not None:
                specs[name] = _build_spec(name, getattr(cls, name), *marker)
        cls._specs = specs

    @classmethod
    def specs(cls) -> dict[str, ToolSpec]:
        """Every tool of this toolkit by name."""
        return cls._specs

    @classmethod
    def schemas(cls) -> list[dict[str, Any]]:
        """OpenAI function schemas of the tools, sorted by name."""
        return [cls._specs[name].schema for name in sorted(cls._specs)]

    def has_tool(self, name: str) -> bool:
        """True when ``name`` is a tool of this toolkit."""
        return name in self._specs

    def mutates_state(self, name: str) -> bool:
        """Whether tool ``name`` changes the DB (unknown names: True, tau2's safe default)."""
        spec = self._specs.get(name)
        return True if spec is None else spec.mutates_state

    def use(self, name: str, arguments: dict[str, Any]) -> Any:
        """Run tool ``name``; raises what tau2 would raise, for :meth:`call` to format."""
        spec = self._specs.get(name)
        if spec is None:
            raise ValueError(f"Tool '{name}' not found.")
        method = getattr(self, name)
        try:
            inspect.signature(method).bind(**arguments)
        except TypeError:
            # Binding failed, so calling raises Python's own TypeError text (what
            # tau2 returns) before the method body runs: no side effect.
            method(**arguments)
            raise
        try:
            checked = spec.params.model_validate(arguments)
        except ValidationError as e:
            raise ValueError(f"Invalid arguments for tool '{name}': {_short(e)}") from None
        return method(**{field: getattr(checked, field) for field in spec.params.model_fields})

    def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Run tool ``name`` and answer its tool-message text; never raises."""
        try:
            return ToolResult(to_json_str(self.use(name, arguments)))
        except Exception as e:
            return ToolResult(f"Error: {e}", error=True)

    def run_function(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call any public method by name (initialisation actions, assertions); raises."""
        if name.startswith("_") or not callable(getattr(self, name, None)):
            raise ValueError(f"Function {name} not found in {type(self).__name__}")
        return getattr(self, name)(**arguments)

    def db_hash(self) -> str:
        """The hash of this toolkit's DB (see :meth:`DB.hash`)."""
        return self.db.hash()


def to_json_str(result: Any) -> str:
    """A tool's return value as tau2 writes it into the tool message."""
    if isinstance(result, str):
        return result
    return json.dumps(_plain(result), default=str)


def _plain(x: Any) -> Any:
    # tau2 turns scalars into their str before json.dumps (so 2 -> '"2"'); kept for parity.
    if isinstance(x, BaseModel):
        return x.model_dump()
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, bool | int | float):
        return str(x)
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, datetime | date):
        return x.isoformat()
    raise ValueError(f"Unsupported type: {type(x)}")


def _short(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _build_spec(name: str, func: Callable, kind: ToolType, mutates: bool) -> ToolSpec:
    summary, arg_docs = parse_docstring(inspect.getdoc(func) or "")
    # get_type_hints resolves string annotations (``from __future__ import annotations``).
    hints = get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    for pname, param in inspect.signature(func).parameters.items():
        if pname == "self":
            continue
        if pname not in hints:
            raise TypeError(f"tool {name}: parameter {pname!r} needs a type hint")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (hints[pname], Field(default, description=arg_docs.get(pname)))
    params = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    schema = {
        "type": "function",
        "function": {
            "name": name,
            "description": summary or name,
            "parameters": params.model_json_schema(),
        },
    }
    return ToolSpec(name=name, kind=kind, mutates_state=mutates, schema=schema, params=params)


_SECTION = re.compile(r"^(Args|Arguments|Returns|Raises|Yields|Examples?|Notes?):\s*$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """``(description, {arg: description})`` from a Google-style docstring.

    The description is everything before the first section header; an ``Args:``
    entry may continue on lines indented deeper than the entry itself.
    """
    description: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    entry_indent = 0
    for line in doc.splitlines():
        indent = len(line) - len(line.lstrip())
        header = _SECTION.match(line.strip())
        if header and indent == 0:
            section, current = header.group(1), None
            continue
        if section is None:
            description.append(line)
        elif section in ("Args", "Arguments") and line.strip():
            entry = _ARG.match(line.strip())
            if entry and (current is None or indent <= entry_indent):
                current, entry_indent = entry.group(1), indent
                args[current] = entry.group(2).strip()
            elif current is not None:
                args[current] = f"{args[current]} {line.strip()}".strip()
    return "\n".join(description).strip(), args


_ARG = re.compile(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")
