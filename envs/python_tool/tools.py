r"""The python tool: its schema, reading a call's argument, and a sandbox per event loop.

Model-written code runs in :class:`~areal_env.sandbox.Sandbox` (bubblewrap isolation and
limits, see ``docs/sandbox.md``); what the program printed comes back as the tool's reply,
cut to ``max_chars`` with a note, and a program that raised, hung, flooded its output or
ran out of memory comes back as the sandbox describes it (traceback, ``[timed out ...]``,
``[killed: memory limit]``). Calls that cannot run (unknown tool, arguments that are not a
JSON object, a missing or empty argument) are answered by :func:`read_argument`'s error.

Example:
    >>> call = {"id": "c1", "function": {"name": "python", "arguments": '{"code": "print(1)"}'}}
    >>> read_argument(call, "python", "code")
    ('print(1)', None)
    >>> read_argument({"function": {"name": "python", "arguments": "{oops"}}, "python", "code")[1]
    'arguments are not valid JSON (Expecting property name enclosed in double quotes)'
    >>> cut_output("x" * 50, max_chars=20)
    'xxxxxxxxxxxxxxx\n...\nxxxxx\n[output cut: the first 15 and last 5 of 50 characters shown]'
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from areal_env.sandbox import Sandbox, SandboxConfig, SandboxResult

PYTHON_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "python",
        "description": (
            "Run a Python program (standard library only) in a fresh sandbox and return what "
            "it prints (stdout, then stderr). Nothing is kept between calls: print what you need."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "The whole program, e.g. print(37*48)."}
            },
            "required": ["code"],
        },
    },
}
"""OpenAI function schema of the python tool."""


def read_argument(call: dict[str, Any], tool: str, argument: str) -> tuple[str, str | None]:
    """The string ``argument`` of a call to ``tool``, or ``("", error)`` when it cannot run.

    ``arguments`` may be a JSON string (OpenAI's form) or an already decoded dict.

    Args:
        call: an OpenAI tool-call dict (``{"id", "function": {"name", "arguments"}}``).
        tool: the only function name the env knows.
        argument: the required string argument (``code``, ``expression``).
    """
    function = call.get("function") or {}
    name = function.get("name")
    if name != tool:
        return "", f"unknown tool {name!r}; the only tool is {tool!r}"
    raw = function.get("arguments", "{}")
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        return "", f"arguments are not valid JSON ({e.msg})"
    if not isinstance(args, dict):
        return "", "arguments must be a JSON object"
    value = args.get(argument)
    if not isinstance(value, str) or not value.strip():
        return "", f"{argument!r} must be a non-empty string"
    return value, None


def cut_output(text: str, *, max_chars: int) -> str:
    """``text`` cut to about ``max_chars`` characters: its head and tail, with a note.

    The tail is kept too because that is where a traceback's error line and the
    sandbox's note on a limit (``[timed out ...]``) are.
    """
    if len(text) <= max_chars:
        return text
    tail = max_chars // 4
    head = max_chars - tail
    return (
        f"{text[:head]}\n...\n{text[len(text) - tail :] if tail else ''}\n"
        f"[output cut: the first {head} and last {tail} of {len(text)} characters shown]"
    )


def result_text(result: SandboxResult, *, max_chars: int) -> str:
    """The tool's reply for one program: stdout, stderr and the sandbox's note, cut."""
    return cut_output(result.to_text(), max_chars=max_chars)


def sandbox_config(sandbox: Any) -> SandboxConfig:
    """A :class:`SandboxConfig` from the env's ``sandbox=`` kwarg (None or a mapping).

    Raises:
        ValueError: for a key SandboxConfig does not have (naming ``sandbox.<key>`` and
            the valid keys) or an invalid value (SandboxConfig's own message).
    """
    if sandbox is None:
        return SandboxConfig()
    if isinstance(sandbox, SandboxConfig):
        return sandbox
    if not hasattr(sandbox, "keys"):
        raise ValueError(f"sandbox must be a mapping of SandboxConfig keys, got {sandbox!r}")
    settings = {str(k): sandbox[k] for k in sandbox.keys()}
    valid = sorted(SandboxConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown sandbox keys {['sandbox.' + k for k in unknown]}; valid: {valid}"
        )
    if "ro_paths" in settings:
        settings["ro_paths"] = [str(p) for p in settings["ro_paths"]]
    return SandboxConfig(**settings)


def config_key(config: SandboxConfig) -> str:
    """A stable, hashable name of a config: envs with equal configs share sandboxes."""
    fields = {name: getattr(config, name) for name in SandboxConfig.__dataclass_fields__}
    return json.dumps(fields, sort_keys=True)


class LoopSandboxes:
    """One :class:`Sandbox` (a warm pool) per event loop, all of one config.

    A Sandbox belongs to the loop that first runs code in it, since its processes
    are that loop's. In a run every env lives on the run's loop, so all of them
    share one pool; envs driven through the sync API each have a loop of their own
    (``envs/base.py``), and each such loop gets a pool, so two of them never fight
    over one. The run's :class:`~areal_env.resources.ResourceRegistry` holds this
    object and closes it (every pool, whichever loop it is on) when the run ends.

    Args:
        config: limits and isolation of every call.

    Raises:
        SandboxUnavailableError: at construction, when this machine cannot sandbox
            code (bubblewrap missing, no namespaces, no pids cgroup) and the config
            does not opt out with ``allow_unsandboxed`` / ``allow_weaker_limits``.
    """

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        # Made now so that a machine that cannot sandbox fails at start-up, not mid-run;
        # the first loop to run code adopts it.
        self._spare: Sandbox | None = Sandbox(config)
        self.sandboxed = self._spare.sandboxed
        """False only when running unsandboxed by the ``allow_unsandboxed`` opt-in."""
        self._by_loop: dict[asyncio.AbstractEventLoop, Sandbox] = {}
        self._lock = threading.Lock()
        self._closed = False

    async def current(self) -> Sandbox:
        """The running loop's Sandbox, made on first use; pools of closed loops are released."""
        if self._closed:
            raise RuntimeError("these sandboxes are closed")
        loop = asyncio.get_running_loop()
        stale: list[Sandbox] = []
        with self._lock:
            box = self._by_loop.get(loop)
            if box is None:
                for other in [other for other in self._by_loop if other.is_closed()]:
                    stale.append(self._by_loop.pop(other))
                box, self._spare = self._spare or Sandbox(self.config), None
                self._by_loop[loop] = box
        for old in stale:
            await old.aclose()  # kills what a loop closed without shutting down left behind
        return box

    async def run(self, code: str) -> SandboxResult:
        """Run ``code`` in a fresh sandbox of the running loop's pool."""
        return await (await self.current()).run(code)

    async def aclose(self) -> None:
        """Close every pool, running programs included. Safe to call twice."""
        self._closed = True
        with self._lock:
            boxes = list(self._by_loop.values()) + ([self._spare] if self._spare else [])
            self._by_loop.clear()
            self._spare = None
        for box in boxes:
            await box.aclose()


__all__ = [
    "PYTHON_TOOL",
    "LoopSandboxes",
    "config_key",
    "cut_output",
    "read_argument",
    "result_text",
    "sandbox_config",
]
