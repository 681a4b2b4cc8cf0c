"""Tool-call text <-> structured ToolCall, for Hermes/Qwen-style templates.

Models in the Qwen/Hermes family write tool calls inline as::

    <tool_call>{"name": "calculator", "arguments": {"expr": "2+2"}}</tool_call>

A malformed call is not an exception here: it is reported back so the agent or
env can turn it into an observation (the model sees its mistake and can retry).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from areal_env.types import ToolCall, new_id

TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass(kw_only=True, slots=True)
class ParsedMessage:
    """Assistant text split into plain content and tool calls."""

    content: str
    """Text with well-formed tool-call blocks removed."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    """Calls in the order the model wrote them."""
    errors: list[str] = field(default_factory=list)
    """One message per malformed block (its text stays in ``content``)."""


def parse_tool_calls(text: str) -> ParsedMessage:
    """Extract ``<tool_call>{json}</tool_call>`` blocks from generated text.

    Example:
        >>> m = parse_tool_calls('ok<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
        >>> (m.content, m.tool_calls[0].name, m.tool_calls[0].arguments)
        ('ok', 'f', '{"x": 1}')
    """
    calls: list[ToolCall] = []
    errors: list[str] = []
    kept: list[str] = []
    pos = 0
    for match in TOOL_CALL_RE.finditer(text):
        kept.append(text[pos : match.start()])
        pos = match.end()
        call, error = _parse_one(match.group(1))
        if call is None:
            errors.append(error)
            kept.append(match.group(0))
        else:
            calls.append(call)
    kept.append(text[pos:])
    return ParsedMessage(content="".join(kept).strip(), tool_calls=calls, errors=errors)


def _parse_one(body: str) -> tuple[ToolCall | None, str]:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return None, f"tool call is not valid JSON ({e.msg} at char {e.pos}): {body[:200]!r}"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None, f"tool call needs a string 'name': {body[:200]!r}"
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None, f"tool call arguments are not valid JSON: {args[:200]!r}"
    if not isinstance(args, dict):
        return None, f"tool call arguments must be an object: {body[:200]!r}"
    call_id = new_id("call_", 12)
    return ToolCall(id=call_id, name=obj["name"], arguments=json.dumps(args)), ""


def tool_call_to_openai(call: ToolCall) -> dict:
    """Render a ToolCall as an OpenAI ``tool_calls`` entry."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
