"""Gymnasium spaces for chat: one message, and a list of new messages.

Observations of an :class:`~areal_env.envs.base.AsyncEnv` are the *new* chat
messages of a step (``ChatMessages``); an action is the assistant's message
(``ChatMessage`` with ``allow_str=True``, so a bare string is accepted too).
Messages are OpenAI-style dicts::

    {"role": "user", "content": "37+48="}
    {"role": "assistant", "content": "",
     "tool_calls": [{"id": "call_0", "type": "function",
                     "function": {"name": "search", "arguments": '{"q": "x"}'}}]}
    {"role": "tool", "tool_call_id": "call_0", "content": "..."}

Gymnasium's ``Text`` space restricts the charset, so it cannot hold free text;
these spaces accept any ``str`` content up to ``max_length`` characters and
ignore keys they do not know (SDKs add fields such as ``refusal``).

Example:
    >>> space = ChatMessages(seed=0)
    >>> [{"role": "user", "content": "1+1= ü"}] in space
    True
    >>> space.sample() in space
    True
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Space

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
"""Message roles an observation may carry."""

DEFAULT_MAX_LENGTH = 1 << 20
"""Default cap on one message's content, in characters: a guard, not a budget."""

DEFAULT_MAX_MESSAGES = 64
"""Default cap on the number of new messages in one observation."""

_SAMPLE_CHARSET = string.ascii_letters + string.digits + " .,?"
_SAMPLE_MAX_CHARS = 24
_OPTIONAL_STR_KEYS = ("name", "tool_call_id", "reasoning_content")


def is_tool_call(x: Any) -> bool:
    """True when ``x`` is an OpenAI tool-call dict with a name and JSON-string arguments.

    Example:
        >>> is_tool_call({"id": "c0", "type": "function",
        ...               "function": {"name": "f", "arguments": "{}"}})
        True
    """
    if not isinstance(x, dict):
        return False
    fn = x.get("function")
    if not isinstance(fn, dict):
        return False
    if not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
        return False
    if "id" in x and not isinstance(x["id"], str):
        return False
    return x.get("type", "function") == "function"


def _sample_message(
    rng: np.random.Generator, roles: tuple[str, ...], max_length: int
) -> dict[str, Any]:
    role = roles[int(rng.integers(len(roles)))]
    n = int(rng.integers(1, min(_SAMPLE_MAX_CHARS, max_length) + 1))
    chars = rng.integers(len(_SAMPLE_CHARSET), size=n)
    return {"role": role, "content": "".join(_SAMPLE_CHARSET[i] for i in chars)}


class _JsonSpace(Space[Any]):
    """Base of the chat spaces: samples are JSON already, so (de)serialising is a copy."""

    def to_jsonable(self, sample_n: Iterable[Any]) -> list[Any]:
        """Samples as a list (they are JSON-serialisable as they are)."""
        return list(sample_n)

    def from_jsonable(self, sample_n: list[Any]) -> list[Any]:
        """Inverse of :meth:`to_jsonable`."""
        return list(sample_n)


class ChatMessage(_JsonSpace):
    """One OpenAI-style chat message, or (with ``allow_str``) a bare string.

    ``contains`` requires ``role`` in ``roles`` and ``content`` a ``str`` of at
    most ``max_length`` characters; ``tool_calls`` (a list of tool-call dicts)
    is allowed on assistant messages; ``name``, ``tool_call_id`` and
    ``reasoning_content`` must be strings when present. Other keys are ignored.
    An assistant message with tool calls may carry ``content=None``, as OpenAI's do.
    ``sample`` draws plain-text messages (no tool calls) from ``np_random``.

    Example:
        >>> action_space = ChatMessage(roles=("assistant",), allow_str=True, seed=0)
        >>> "85" in action_space, {"role": "assistant", "content": "85"} in action_space
        (True, True)
        >>> {"role": "user", "content": "85"} in action_space
        False
    """

    def __init__(
        self,
        roles: Sequence[str] = ROLES,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        allow_str: bool = False,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        if not roles or any(not isinstance(r, str) for r in roles):
            raise ValueError(f"roles must be a non-empty sequence of str, got {roles!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.roles = tuple(roles)
        self.max_length = max_length
        self.allow_str = allow_str
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        """Chat messages have no fixed-size array form."""
        return False

    def contains(self, x: Any) -> bool:
        """True when ``x`` is a valid message of this space (see the class docstring)."""
        if isinstance(x, str):
            return self.allow_str and len(x) <= self.max_length
        if not isinstance(x, dict) or x.get("role") not in self.roles:
            return False
        content = x.get("content")
        # OpenAI writes content=None on an assistant message that only calls tools.
        tool_call_only = content is None and x["role"] == "assistant" and bool(x.get("tool_calls"))
        if not tool_call_only and (not isinstance(content, str) or len(content) > self.max_length):
            return False
        if any(k in x and not isinstance(x[k], str) for k in _OPTIONAL_STR_KEYS):
            return False
        if "tool_calls" in x:
            calls = x["tool_calls"]
            if x["role"] != "assistant" or not isinstance(calls, list):
                return False
            return all(is_tool_call(c) for c in calls)
        return True

    def sample(self, mask: Any | None = None, probability: Any | None = None) -> dict[str, Any]:
        """A random plain-text message drawn from this space's ``np_random``.

        Args:
            mask: unsupported; must be None.
            probability: unsupported; must be None.
        """
        if mask is not None or probability is not None:
            raise ValueError(f"{type(self).__name__}.sample takes no mask or probability")
        return _sample_message(self.np_random, self.roles, self.max_length)

    def __repr__(self) -> str:
        return (
            f"ChatMessage(roles={self.roles}, max_length={self.max_length}, "
            f"allow_str={self.allow_str})"
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ChatMessage)
            and self.roles == other.roles
            and self.max_length == other.max_length
            and self.allow_str == other.allow_str
        )


class ChatMessages(_JsonSpace):
    """A list of at most ``max_messages`` chat messages; empty lists belong too.

    Example:
        >>> space = ChatMessages(roles=("system", "user"), max_messages=2)
        >>> [] in space, [{"role": "tool", "content": "x"}] in space
        (True, False)
    """

    def __init__(
        self,
        roles: Sequence[str] = ROLES,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_length: int = DEFAULT_MAX_LENGTH,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        self.message = ChatMessage(roles, max_length=max_length)
        self.max_messages = max_messages
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        """Message lists have no fixed-size array form."""
        return False

    def contains(self, x: Any) -> bool:
        """True when ``x`` is a list of at most ``max_messages`` valid messages."""
        return (
            isinstance(x, list)
            and len(x) <= self.max_messages
            and all(self.message.contains(m) for m in x)
        )

    def sample(
        self, mask: Any | None = None, probability: Any | None = None
    ) -> list[dict[str, Any]]:
        """One to ``min(max_messages, 4)`` random messages drawn from ``np_random``.

        Args:
            mask: unsupported; must be None.
            probability: unsupported; must be None.
        """
        if mask is not None or probability is not None:
            raise ValueError(f"{type(self).__name__}.sample takes no mask or probability")
        rng, roles, max_length = self.np_random, self.message.roles, self.message.max_length
        n = int(rng.integers(1, min(self.max_messages, 4) + 1))
        return [_sample_message(rng, roles, max_length) for _ in range(n)]

    def __repr__(self) -> str:
        return (
            f"ChatMessages(roles={self.message.roles}, max_messages={self.max_messages}, "
            f"max_length={self.message.max_length})"
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ChatMessages)
            and self.message == other.message
            and self.max_messages == other.max_messages
        )


__all__ = ["DEFAULT_MAX_LENGTH", "DEFAULT_MAX_MESSAGES", "ROLES", "ChatMessage", "ChatMessages"]
