"""``/v1/chat/completions`` over HTTP: the request's server-side part and the response shapes.

The chat client (:mod:`areal_env.inference.chat_client`) already checks a call's
arguments and returns the SDK's own ``ChatCompletion``; what HTTP adds is kept
here, so that a session's calls and our own agent's calls go through the very
same ``create``:

* parameters the *server* handles and strips before ``create``: ``n`` (``n``
  calls, each recorded as the chat client records any call), ``stream`` and
  ``stream_options`` (the whole completion is generated, then sent as OpenAI's
  chunks: engines return whole completions), ``return_token_ids`` (vLLM's
  extra field: ``token_ids`` per choice and ``prompt_token_ids``);
* parameters accepted and ignored because they cannot change what is sampled
  here: ``seed`` (OpenAI's own seed is best effort only), ``service_tier``,
  ``prompt_cache_key``, ``safety_identifier``;
* a check of each message's ``role``, which a chat template would otherwise
  render as an empty string without complaint.

Everything else goes to ``create``, which honours it or refuses it by name.

Example:
    >>> req = parse_chat_request({"messages": [{"role": "user", "content": "hi"}], "n": 2,
    ...                           "stream": True, "seed": 7})
    >>> req.n, req.stream, sorted(req.kwargs)
    (2, True, ['messages'])
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from openai.types.chat import ChatCompletion

from areal_env.inference.chat_client import generation_of
from areal_env.serving.errors import bad_request

MAX_N = 64
"""Most choices one request may ask for (each is a full completion)."""

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
"""Message roles a chat request may carry."""

IGNORED = frozenset({"seed", "service_tier", "prompt_cache_key", "safety_identifier"})
"""Accepted and dropped: they cannot change what the engine samples."""

ARGUMENT_PIECE = 32
"""Characters of tool-call arguments per streamed chunk."""


@dataclass(kw_only=True, slots=True)
class ChatRequest:
    """A chat request split into the ``create`` arguments and what the server does."""

    kwargs: dict[str, Any]
    """Arguments for ``chat.completions.create`` (checked there)."""
    n: int = 1
    """Choices to generate."""
    stream: bool = False
    """Answer with server-sent events."""
    include_usage: bool = False
    """``stream_options.include_usage``: a last chunk with the usage."""
    return_token_ids: bool = False
    """Add ``token_ids`` and ``prompt_token_ids`` (vLLM's extra fields)."""


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    """Split a chat request body; refuse what HTTP-level checks can see.

    Raises:
        APIError: a 400 naming the parameter.
    """
    kwargs = {k: v for k, v in body.items() if k not in IGNORED}
    n = kwargs.pop("n", None)
    n = 1 if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise bad_request(f"n must be an integer in [1, {MAX_N}], got {n!r}", param="n")
    stream = flag(kwargs.pop("stream", None), "stream")
    options = kwargs.pop("stream_options", None) or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", param="stream_options")
    include_usage = flag(options.get("include_usage"), "stream_options.include_usage")
    token_ids = flag(kwargs.pop("return_token_ids", None), "return_token_ids")
    _check_messages(kwargs.get("messages"))
    return ChatRequest(
        kwargs=kwargs,
        n=n,
        stream=stream,
        include_usage=include_usage,
        return_token_ids=token_ids,
    )


def flag(value: Any, name: str) -> bool:
    """A boolean parameter (absent: False).

    Raises:
        APIError: a 400 when ``value`` is not a boolean.
    """
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be a boolean, got {value!r}", param=name)
    return value


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array of messages", param="messages")
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise bad_request(
                f"messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}",
                param=f"messages[{i}].role",
            )
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(
                f"messages[{i}].content must be a string, an array of parts or null",
                param=f"messages[{i}].content",
            )


# ---- responses ---------------------------------------------------------------------------


def chat_body(completions: list[ChatCompletion], *, token_ids: bool) -> dict[str, Any]:
    """The JSON body of a non-streaming answer: the ``n`` completions as one response.

    Usage counts the prompt once (choice 0's, as OpenAI does) and every choice's tokens.
    """
    first = completions[0]
    body = first.model_dump(mode="json", exclude={"generation", "parse_errors"})
    choices = []
    for i, c in enumerate(completions):
        choice = c.choices[0].model_dump(mode="json")
        choice["index"] = i
        if token_ids:
            gen = generation_of(c)
            choice["token_ids"] = list(gen.output_ids)
            choice["prompt_token_ids"] = list(gen.input_ids)
        choices.append(choice)
    body["choices"] = choices
    body["usage"] = _usage(completions)
    if token_ids:
        body["prompt_token_ids"] = list(generation_of(first).input_ids)
    return body


def _usage(completions: list[ChatCompletion]) -> dict[str, int]:
    prompt = completions[0].usage.prompt_tokens if completions[0].usage else 0
    completion = sum(c.usage.completion_tokens for c in completions if c.usage)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_chunks(
    completions: list[ChatCompletion], tokenizer: Any, request: ChatRequest
) -> Iterator[dict[str, Any]]:
    """OpenAI's ``chat.completion.chunk`` objects for finished completions, in order.

    Per choice: a first chunk with the role, the content token by token (one
    piece when the tokens do not decode piecewise to the same text), each tool
    call as a header (id, name, empty arguments) followed by argument pieces,
    and a last chunk with the finish reason. Then, with ``include_usage``, a
    chunk with no choices and the usage (every other chunk has ``usage: null``).
    """
    first = completions[0]
    base: dict[str, Any] = {
        "id": first.id,
        "object": "chat.completion.chunk",
        "created": first.created,
        "model": first.model,
        "system_fingerprint": None,
    }
    if request.include_usage:
        base["usage"] = None
    for index, completion in enumerate(completions):
        for k, (delta, logprobs, finish) in enumerate(_choice_deltas(completion, tokenizer)):
            choice: dict[str, Any] = {
                "index": index,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish,
            }
            chunk = {**base, "choices": [choice]}
            if request.return_token_ids:
                gen = generation_of(completion)
                if k == 0:
                    chunk["prompt_token_ids"] = list(gen.input_ids)
                if finish is not None:
                    choice["token_ids"] = list(gen.output_ids)
            yield chunk
    if request.include_usage:
        yield {**base, "choices": [], "usage": _usage(completions)}


Delta = tuple[dict[str, Any], dict[str, Any] | None, str | None]
"""(delta, logprobs, finish_reason) of one chunk of one choice."""


def _choice_deltas(completion: ChatCompletion, tokenizer: Any) -> Iterator[Delta]:
    """One choice's chunks, each with its logprobs and finish reason.

    Token logprobs ride with their content pieces when the two align one to one;
    otherwise (tool calls, tokens that do not decode alone) they all go on the last
    chunk, so a client that joins the chunks still gets every one.
    """
    choice = completion.choices[0]
    message = choice.message
    entries = (
        [e.model_dump(mode="json") for e in choice.logprobs.content or []]
        if (choice.logprobs is not None)
        else None
    )
    calls = message.tool_calls or []
    yield ({"role": "assistant"} if calls else {"role": "assistant", "content": ""}), None, None
    pieces = _content_pieces(completion, tokenizer) if message.content else []
    if entries is not None and len(pieces) == len(entries):
        for piece, entry in zip(pieces, entries, strict=True):
            yield {"content": piece}, {"content": [entry], "refusal": None}, None
        entries = None
    else:
        for piece in pieces:
            yield {"content": piece}, None, None
    for i, call in enumerate(calls):
        fn = getattr(call, "function", None)
        if fn is None:
            continue
        header = {"index": i, "id": call.id, "type": "function"}
        yield (
            {"tool_calls": [{**header, "function": {"name": fn.name, "arguments": ""}}]},
            None,
            None,
        )
        args = fn.arguments
        for at in range(0, len(args), ARGUMENT_PIECE):
            piece = args[at : at + ARGUMENT_PIECE]
            yield {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}, None, None
    logprobs = None if entries is None else {"content": entries, "refusal": None}
    yield {}, logprobs, choice.finish_reason


def _content_pieces(completion: ChatCompletion, tokenizer: Any) -> list[str]:
    """The content split token by token, or whole when the tokens do not decode piecewise."""
    content = completion.choices[0].message.content or ""
    gen = generation_of(completion)
    pieces = [tokenizer.decode([t], skip_special_tokens=True) for t in gen.output_ids]
    if gen.finish_reason == "stop" and pieces and not pieces[-1]:
        pieces.pop()  # the stop token is not content (as in the chat client)
    if completion.choices[0].message.tool_calls or "".join(pieces) != content:
        return [content]
    return pieces


def model_card(model_name: str, created: int | None = None) -> dict[str, Any]:
    """One entry of ``GET /v1/models``."""
    return {
        "id": model_name,
        "object": "model",
        "created": int(time.time()) if created is None else created,
        "owned_by": "areal-env",
    }


__all__ = [
    "ChatRequest",
    "chat_body",
    "chat_chunks",
    "flag",
    "model_card",
    "parse_chat_request",
]
