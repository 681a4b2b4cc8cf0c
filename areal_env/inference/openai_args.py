"""OpenAI ``chat.completions.create`` arguments and messages, checked and normalised.

Agents call the chat client as they would call ``openai.AsyncOpenAI``, but the
client samples in-process from an :class:`~areal_env.inference.engine.InferenceEngine`:
an argument it cannot honour must fail by name rather than be silently dropped,
or a run would train on samples drawn other than the agent asked. This module
is that boundary; the client (:mod:`areal_env.inference.chat_client`) sees only
a checked :class:`Call`.

* Honoured: ``messages``, ``model``, ``tools``, ``tool_choice`` (``"auto"`` or
  ``"none"``), ``logprobs``, ``max_tokens``/``max_completion_tokens``,
  ``temperature``, ``top_p``, ``stop``.
* Accepted at OpenAI's default value only, refused (``ValueError``, with the
  reason) at any other: ``n``, ``stream``, ``top_logprobs``,
  ``parallel_tool_calls``, ``frequency_penalty``, ``presence_penalty``,
  ``store``, ``response_format``, ``extra_query``, ``extra_body``. Each would
  need what an in-process engine lacks: constrained decoding, streaming, top-k
  logprobs, server-specific parameters.
* Ignored, since they cannot change what is sampled: ``user``, ``metadata``,
  ``extra_headers``.
* Any other parameter is a ``TypeError``. ``tool_choice`` naming a function or
  ``"required"`` is refused (it needs constrained decoding).
* The SDK's ``NOT_GIVEN``/``omit`` sentinels and ``None`` mean "absent".

Messages (dicts or SDK objects) become plain dicts (:func:`to_message_dict`):
SDK objects drop their ``None`` fields but keep ``content``, tool calls become
dicts, text-only content parts are joined with newlines (non-text parts are
refused). :func:`template_view` hands tool-call ``arguments`` strings to a chat
template as dicts, since templates ``| tojson`` them (AReaL issue #1463).

Example:
    >>> from areal_env.types import SamplingParams
    >>> fixed = lambda **sampling_args: SamplingParams()  # ChatClient.sampling_params merges
    >>> call = parse_call(
    ...     {"messages": [{"role": "user", "content": "hi"}], "n": 1, "user": "u1"}, fixed
    ... )
    >>> call.messages, call.tools, call.logprobs
    ([{'role': 'user', 'content': 'hi'}], None, False)
    >>> parse_call({"messages": call.messages, "n": 2}, fixed)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: chat.completions.create: n=2 cannot be honoured (only n=1): make n calls ...
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from areal_env.types import SamplingParams

_ABSENT: tuple[type, ...] = tuple(
    t for t in (getattr(openai, "NotGiven", None), getattr(openai, "Omit", None)) if t is not None
)
_HONOURED = frozenset(
    {"messages", "model", "tools", "tool_choice", "logprobs"}
    | {"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop"}
)
# Accepted only at the value that changes nothing (OpenAI's default).
_DEFAULT_ONLY: dict[str, Any] = {
    "n": 1,
    "stream": False,
    "top_logprobs": 0,
    "parallel_tool_calls": True,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "store": False,
    "response_format": {"type": "text"},
    "extra_query": {},
    "extra_body": {},
}
# Informational or transport-only: they cannot change what is sampled.
_INFORMATIONAL = frozenset({"user", "metadata", "extra_headers"})


@dataclass(kw_only=True, slots=True, frozen=True)
class Call:
    """One ``create`` call's arguments, checked and normalised."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    parse_tools: bool
    sampling: SamplingParams
    logprobs: bool


def parse_call(kwargs: dict[str, Any], sampling_params: Callable[..., SamplingParams]) -> Call:
    """Check a ``create`` call's arguments; OpenAI's NOT_GIVEN/omit and None mean absent.

    ``sampling_params`` merges the call's sampling arguments (``max_tokens``,
    ``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, those given)
    over the client's defaults: ``ChatClient.sampling_params``.

    Raises:
        TypeError: for a parameter the client does not know.
        ValueError: for a value it cannot honour (``n=2``, ``stream=True``...).
    """
    args = {k: v for k, v in kwargs.items() if v is not None and not isinstance(v, _ABSENT)}
    for name, value in args.items():
        _check_supported(name, value)
    if not args.get("messages"):
        raise ValueError("chat.completions.create: messages must not be empty")
    tool_choice = args.get("tool_choice", "auto")
    if tool_choice not in ("auto", "none"):
        raise ValueError(
            f"chat.completions.create: tool_choice={tool_choice!r} cannot be honoured "
            "without constrained decoding; use 'auto' or 'none'"
        )
    tools = normalize_tools(args.get("tools"))
    sampling_keys = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "stop")
    return Call(
        messages=[to_message_dict(m) for m in args["messages"]],
        tools=tools,
        parse_tools=tools is not None and tool_choice == "auto",
        sampling=sampling_params(**{k: args[k] for k in sampling_keys if k in args}),
        logprobs=bool(args.get("logprobs", False)),
    )


def _check_supported(name: str, value: Any) -> None:
    if name in _HONOURED or name in _INFORMATIONAL:
        return
    if name not in _DEFAULT_ONLY:
        raise TypeError(
            f"chat.completions.create: parameter {name!r} is not supported; honoured: "
            f"{sorted(_HONOURED)}, accepted at their defaults only: {sorted(_DEFAULT_ONLY)}"
        )
    default = _DEFAULT_ONLY[name]
    if value != default:
        raise ValueError(
            f"chat.completions.create: {name}={value!r} cannot be honoured "
            f"(only {name}={default!r}): {_WHY_DEFAULT_ONLY.get(name, 'not implemented')}"
        )


_WHY_DEFAULT_ONLY = {
    "n": "make n calls instead; each becomes its own sample",
    "stream": "the client returns whole completions",
    "top_logprobs": "engines return only the sampled token's logprob",
    "parallel_tool_calls": "nothing stops the model from writing several calls",
    "response_format": "structured output needs constrained decoding",
    "extra_body": "server-specific parameters do not reach an in-process engine",
    "extra_query": "server-specific parameters do not reach an in-process engine",
}


def token_budget(max_tokens: Any, max_completion_tokens: Any) -> int | None:
    """The call's token budget from either name; None when neither is given.

    Raises:
        ValueError: for a value that is not an int >= 1, or two that disagree.
    """
    for name, value in (
        ("max_tokens", max_tokens),
        ("max_completion_tokens", max_completion_tokens),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"chat.completions.create: {name} must be an int >= 1, got {value!r}")
    if max_tokens is not None and max_completion_tokens is not None:
        if max_tokens != max_completion_tokens:
            raise ValueError(
                "chat.completions.create: max_tokens and max_completion_tokens disagree "
                f"({max_tokens} vs {max_completion_tokens}); give one"
            )
    return max_completion_tokens if max_tokens is None else max_tokens


def check_number(name: str, value: Any, ok: Callable[[float], bool], rule: str) -> None:
    """Refuse a non-number (bools included) or one that fails ``ok``.

    Raises:
        ValueError: naming the OpenAI parameter ``name`` and its ``rule``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ValueError(f"chat.completions.create: {name} must be a number {rule}, got {value!r}")


def stop_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """OpenAI's ``stop`` (a string, a list of them, or None) as a tuple.

    Raises:
        ValueError: for an empty or non-string stop.
    """
    strings = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in strings):
        raise ValueError(f"chat.completions.create: stop must be non-empty strings, got {stop!r}")
    return strings


def normalize_tools(tools: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """Tools (dicts or SDK objects) as dicts; None for none.

    Raises:
        ValueError: for a tool that is not a function tool.
    """
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        d = tool.model_dump(exclude_none=True) if hasattr(tool, "model_dump") else dict(tool)
        if d.get("type", "function") != "function":
            raise ValueError(f"tools[{i}]: only function tools are supported, got {d['type']!r}")
        out.append(d)
    return out


def to_message_dict(message: Any) -> dict[str, Any]:
    """An OpenAI message (dict or SDK object) as a plain dict, safe to keep and compare.

    SDK objects drop their ``None`` fields (``refusal``, ``audio``...) but keep
    ``content``; tool calls become dicts; text-only content parts are joined
    with newlines (as vLLM does) since text templates expect a string.

    Raises:
        TypeError: for something that is neither a mapping nor an SDK object.
        ValueError: for non-text content parts (images, audio).

    Example:
        >>> from openai.types.chat import ChatCompletionMessage
        >>> to_message_dict(ChatCompletionMessage(role="assistant", content="hi"))
        {'content': 'hi', 'role': 'assistant'}
    """
    if isinstance(message, Mapping):
        out = dict(message)
    elif callable(getattr(message, "model_dump", None)):
        out = {"content": None, **message.model_dump(exclude_none=True)}
    else:
        raise TypeError(f"messages: expected dicts or OpenAI message objects, got {message!r}")
    if out.get("tool_calls"):
        out["tool_calls"] = [_plain_tool_call(c) for c in out["tool_calls"]]
    if isinstance(out.get("content"), list):
        out["content"] = _join_text_parts(out["content"])
    return out


def _plain_tool_call(call: Any) -> dict[str, Any]:
    out = call.model_dump(exclude_none=True) if hasattr(call, "model_dump") else dict(call)
    if isinstance(out.get("function"), Mapping):
        out["function"] = dict(out["function"])
    return out


def _join_text_parts(parts: list[Any]) -> str:
    texts = []
    for part in parts:
        part = part.model_dump() if hasattr(part, "model_dump") else part
        if not isinstance(part, Mapping) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise ValueError(f"messages: content part of type {kind!r} is not supported")
        texts.append(part["text"])
    return "\n".join(texts)


def template_view(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` whose tool-call arguments are dicts, as templates expect."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    return {**message, "tool_calls": [_call_view(c) for c in calls]}


def _call_view(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("arguments"), str):
        return call
    try:
        args = json.loads(fn["arguments"])
    except json.JSONDecodeError:
        return call
    return {**call, "function": {**fn, "arguments": args}}


__all__ = [
    "Call",
    "check_number",
    "normalize_tools",
    "parse_call",
    "stop_strings",
    "template_view",
    "to_message_dict",
    "token_budget",
]
