"""Tool-call text <-> structured ToolCall, for Hermes/Qwen-style templates.

Models in the Qwen/Hermes family write tool calls inline as::

    <tool_call>{"name": "calculator", "arguments": {"expr": "2+2"}}</tool_call>

The ``arguments`` of a parsed call are the exact characters the model wrote
(the raw span of the JSON value, found by walking the object key by key), never
a ``json.loads`` + ``json.dumps`` round trip: the model's spacing and key order
survive, so what an env or a log shows is what was sampled.

A malformed call is not an exception here: it is reported back so the agent or
env can turn it into an observation (the model sees its mistake and can retry),
and its text stays in the message content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletionMessageFunctionToolCall
from openai.types.chat.chat_completion_message_function_tool_call import Function

from areal_env.errors import ToolCallParseError
from areal_env.types import ToolCall, new_id

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

_JSON_WS = " \t\n\r"
_DECODER = json.JSONDecoder()


@dataclass(kw_only=True, slots=True)
class ParsedMessage:
    """Assistant text split into plain content and tool calls."""

    content: str
    """Text with well-formed tool-call blocks removed, spacing as written: templates that
    write content right before the calls then re-render the reply exactly."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    """Calls in the order the model wrote them."""
    errors: list[str] = field(default_factory=list)
    """One message per malformed block (its text stays in ``content``)."""


def parse_tool_calls(text: str) -> ParsedMessage:
    """Extract ``<tool_call>{json}</tool_call>`` blocks from generated text.

    An unclosed ``<tool_call>`` after the last block (a reply cut by the token
    budget) is reported as an error too: it is a call the model did not finish.

    Example:
        >>> m = parse_tool_calls('ok<tool_call>{"name": "f", "arguments": {"x":1}}</tool_call>')
        >>> (m.content, m.tool_calls[0].name, m.tool_calls[0].arguments)
        ('ok', 'f', '{"x":1}')
        >>> parse_tool_calls("<tool_call>{oops}</tool_call>").errors[0][:28]
        'tool call is not valid JSON:'
    """
    calls: list[ToolCall] = []
    errors: list[str] = []
    kept: list[str] = []
    pos = 0
    for match in TOOL_CALL_RE.finditer(text):
        kept.append(text[pos : match.start()])
        pos = match.end()
        try:
            calls.append(parse_tool_call_body(match.group(1)))
        except ToolCallParseError as e:
            errors.append(str(e))
            kept.append(match.group(0))
    tail = text[pos:]
    if TOOL_CALL_OPEN in tail:
        errors.append(f"unclosed {TOOL_CALL_OPEN} block: {_excerpt(tail)}")
    kept.append(tail)
    return ParsedMessage(content="".join(kept), tool_calls=calls, errors=errors)


def parse_tool_call_body(body: str) -> ToolCall:
    r"""Read one block's ``{"name": ..., "arguments": ...}`` object.

    ``arguments`` is the raw text of the value when the model wrote an object,
    or the decoded string when it wrote a JSON string (which must itself hold
    an object); absent arguments read as ``"{}"``.

    Raises:
        ToolCallParseError: with a readable reason when the block is malformed.

    Example:
        >>> parse_tool_call_body('{"name": "f", "arguments": "{\\"a\\": 1}"}').arguments
        '{"a": 1}'
    """
    values, spans = _object_members(body)
    name = values.get("name")
    if not isinstance(name, str) or not name:
        raise ToolCallParseError(f"tool call needs a non-empty string 'name': {_excerpt(body)}")
    if "arguments" not in values:
        return ToolCall(id=new_id("call_", 24), name=name, arguments="{}")
    args = values["arguments"]
    if isinstance(args, str):
        raw = args
        try:
            args = json.loads(raw)
        except json.JSONDecodeError:
            raise ToolCallParseError(
                f"tool call arguments are not valid JSON: {_excerpt(raw)}"
            ) from None
    else:
        start, end = spans["arguments"]
        raw = body[start:end]
    if not isinstance(args, dict):
        raise ToolCallParseError(f"tool call arguments must be a JSON object: {_excerpt(body)}")
    return ToolCall(id=new_id("call_", 24), name=name, arguments=raw)


def _object_members(body: str) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """Decoded values and raw ``(start, end)`` spans of a JSON object's top-level members."""
    values: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    i = _skip_ws(body, 0)
    if not body.startswith("{", i):
        raise _invalid("expected an object", body)
    i = _skip_ws(body, i + 1)
    if body.startswith("}", i):
        return values, spans
    while True:
        key, i = _decode_at(body, i)
        if not isinstance(key, str):
            raise _invalid("key is not a string", body)
        i = _expect(body, _skip_ws(body, i), ":")
        start = _skip_ws(body, i)
        values[key], end = _decode_at(body, start)
        spans[key] = (start, end)
        i = _skip_ws(body, end)
        if body.startswith("}", i):
            break
        i = _skip_ws(body, _expect(body, i, ","))
    if _skip_ws(body, i + 1) != len(body):
        raise _invalid("text after the object", body)
    return values, spans


def _invalid(reason: str, text: str) -> ToolCallParseError:
    return ToolCallParseError(f"tool call is not valid JSON: {reason}: {_excerpt(text)}")


def _decode_at(body: str, i: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(body, i)
    except json.JSONDecodeError as e:
        raise _invalid(f"{e.msg} at char {e.pos}", body) from None


def _expect(body: str, i: int, char: str) -> int:
    if not body.startswith(char, i):
        raise _invalid(f"expected {char!r} at char {i}", body)
    return i + 1


def _skip_ws(body: str, i: int) -> int:
    while i < len(body) and body[i] in _JSON_WS:
        i += 1
    return i


def _excerpt(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def tool_call_to_openai(call: ToolCall) -> ChatCompletionMessageFunctionToolCall:
    """The OpenAI SDK's function tool call for ``call`` (arguments unchanged)."""
    return ChatCompletionMessageFunctionToolCall(
        id=call.id, type="function", function=Function(name=call.name, arguments=call.arguments)
    )


__all__ = [
    "ParsedMessage",
    "parse_tool_call_body",
    "parse_tool_calls",
    "tool_call_to_openai",
]
