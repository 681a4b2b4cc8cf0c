r"""The search tool: its OpenAI function schema, and running the calls of one message.

A call that cannot run (unknown function, arguments that are not a JSON object,
a missing or empty ``query``, a bad ``top_k``) is answered with an error tool
message, so the model sees its mistake and the episode goes on; it is counted.
A retriever that fails (server down) raises: that is the episode's failure, not
the model's.

Example:
    >>> import asyncio
    >>> from areal_env.envs.search.retrieval import BM25Retriever, Passage
    >>> r = BM25Retriever([Passage(id="a", title="Zorblat", text="Zorblat is a city.")])
    >>> calls = [{"id": "c1", "function": {"name": "search", "arguments": '{"query": "Zorblat"}'}},
    ...          {"id": "c2", "function": {"name": "browse", "arguments": "{}"}}]
    >>> out = asyncio.run(run_search_calls(calls, r, default_top_k=1, max_top_k=3, max_chars=40))
    >>> [m["content"] for m in out.messages]
    ['[1] Zorblat\nZorblat is a city.', "error: unknown tool 'browse'; the only tool is 'search'"]
    >>> out.searches, out.errors, out.retrieved_ids
    (1, 1, {'a'})
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from areal_env.envs.search.retrieval import Passage, Retriever

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the knowledge base; returns the best passages (title and text).",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for."},
                "top_k": {"type": "integer", "description": "How many passages (optional)."},
            },
            "required": ["query"],
        },
    },
}
"""OpenAI function schema of the search tool."""


@dataclass(kw_only=True, slots=True)
class ToolRound:
    """What running one assistant message's tool calls produced."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    """One ``role="tool"`` message per call, in call order."""
    searches: int = 0
    """Calls that reached the retriever."""
    errors: int = 0
    """Calls answered with an error message."""
    retrieved_ids: set[str] = field(default_factory=set)
    """Ids of every passage shown to the model."""


def format_passages(passages: list[Passage], max_chars: int) -> str:
    """Numbered passages, each ``[i] title`` then its text cut to ``max_chars``."""
    if not passages:
        return "no passage found"
    blocks = []
    for i, p in enumerate(passages, start=1):
        text = p.text if len(p.text) <= max_chars else p.text[:max_chars].rstrip() + "..."
        blocks.append(f"[{i}] {p.title}\n{text}")
    return "\n\n".join(blocks)


async def run_search_calls(
    calls: list[dict[str, Any]],
    retriever: Retriever,
    *,
    default_top_k: int,
    max_top_k: int,
    max_chars: int,
) -> ToolRound:
    """Answer every tool call of one assistant message, in order."""
    out = ToolRound()
    for call in calls:
        query, top_k, error = _check_call(call, default_top_k, max_top_k)
        if error is not None:
            content = f"error: {error}"
            out.errors += 1
        else:
            passages = await retriever.search(query, top_k=top_k)
            out.searches += 1
            out.retrieved_ids.update(p.id for p in passages)
            content = format_passages(passages, max_chars)
        out.messages.append(
            {"role": "tool", "tool_call_id": call.get("id", ""), "content": content}
        )
    return out


def _check_call(
    call: dict[str, Any], default_top_k: int, max_top_k: int
) -> tuple[str, int, str | None]:
    function = call.get("function") or {}
    name = function.get("name")
    if name != "search":
        return "", 0, f"unknown tool {name!r}; the only tool is 'search'"
    raw = function.get("arguments", "{}")
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        return "", 0, f"arguments are not valid JSON ({e.msg})"
    if not isinstance(args, dict):
        return "", 0, "arguments must be a JSON object"
    query = args.get("query")
    if not isinstance(query, str) or not query.strip():
        return "", 0, "'query' must be a non-empty string"
    top_k = args.get("top_k", default_top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= max_top_k:
        return "", 0, f"'top_k' must be an integer from 1 to {max_top_k}"
    return query, top_k, None
