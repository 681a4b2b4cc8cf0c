r"""Chat JSONL for supervised fine-tuning: conversations -> token rows with a loss mask.

Each line is one conversation in OpenAI chat format::

    {"messages": [{"role": "system" | "user" | "assistant" | "tool", "content": str,
                   "tool_calls": [...]  (assistant, optional)}, ...],
     "tools": [...]  (optional, OpenAI function-tool schemas)}

A conversation is rendered by the tokenizer's own chat template, the text the
model will read and write at inference, and becomes one :class:`Sample` whose
``loss_mask`` is 1 exactly on the tokens the model would *sample* in each
assistant turn: the content (and tool calls) plus the end-of-turn token the
engine stops at. The system, user and tool tokens, the assistant header and
whatever the template writes after the end-of-turn token (Qwen's ``\n``) are 0:
training on them would teach the model to write its users' text or tokens it
never samples.

Where an assistant turn starts and ends is found by rendering, not by parsing
the template's text: the conversation up to the turn with a generation prompt
gives the turn's start, the conversation through the turn gives its end, and
both must be token prefixes of the whole conversation's rendering. A template
that renders earlier turns differently once later ones follow (Qwen3 strips
earlier ``<think>`` blocks) fails that check with an error naming the line,
rather than silently training on text the template never shows the model.

Example:
    >>> from areal_env.testing import char_tokenizer
    >>> tok = char_tokenizer()
    >>> chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    >>> sample = tokenize_chat(tok, chat)
    >>> tok.decode([t for t, m in zip(sample.input_ids, sample.loss_mask) if m])
    '4<|im_end|>'
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from areal_env.data.jsonl import read_jsonl_objects
from areal_env.inference.openai_args import normalize_tools, template_view, to_message_dict
from areal_env.types import PROMPT_VERSION, Sample

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
"""Roles a chat SFT message may have."""
TRUNCATION = ("drop", "truncate")
"""What to do with a conversation longer than ``max_length`` tokens."""


@dataclass(kw_only=True, slots=True)
class ChatSFTStats:
    """What loading a chat file kept and lost, so no example disappears unreported."""

    read: int = 0
    """Conversations read from the file."""
    kept: int = 0
    """Conversations that became training rows."""
    dropped: int = 0
    """Conversations left out: too long (``drop``), or no trained token left after cutting."""
    truncated: int = 0
    """Kept conversations cut to ``max_length`` (``truncate``): their tail is not trained."""
    trained_tokens: int = 0
    """Tokens with loss mask 1 over the kept rows."""

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """The counts as ``{prefix}/<name>`` floats, for the run's metrics."""
        return {f"{prefix}/{k}": float(getattr(self, k)) for k in self.__slots__}  # type: ignore[attr-defined]


def validate_chat(record: dict[str, Any], where: str) -> tuple[list[dict[str, Any]], Any]:
    """The messages and tools of one JSONL record, checked.

    Args:
        record: the parsed line.
        where: ``file:line`` for error messages.

    Raises:
        ValueError: naming ``where`` when ``messages`` is missing or not a list of
            messages, a role is unknown, content is not text, ``tools`` is not a
            list, or no assistant turn carries anything to train.
    """
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: expected a non-empty 'messages' list")
    out = []
    for i, raw in enumerate(messages):
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: messages[{i}] is not an object")
        role = raw.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}: messages[{i}] has unknown role {role!r}; known: {ROLES}")
        try:
            message = to_message_dict(raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: messages[{i}]: {e}") from None
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"{where}: messages[{i}] content must be a string or null")
        if message.get("tool_calls") and role != "assistant":
            raise ValueError(f"{where}: messages[{i}] has tool_calls but role {role!r}")
        out.append(message)
    if not any(m["role"] == "assistant" and (m.get("content") or m.get("tool_calls")) for m in out):
        raise ValueError(f"{where}: no assistant turn with content or tool calls to train on")
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ValueError(f"{where}: 'tools' must be a list of tool schemas")
    try:
        tools = normalize_tools(tools)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return out, tools


def tokenize_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    *,
    stop_token_ids: Collection[int] | None = None,
    where: str = "conversation",
) -> Sample:
    """One conversation as a training row: every assistant turn trained, nothing else.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        messages: OpenAI message dicts (tool-call arguments as JSON strings or dicts).
        tools: OpenAI tool schemas handed to the template, or None.
        stop_token_ids: the end-of-turn tokens; default the tokenizer's EOS, the token
            the chat client stops sampling at. An assistant turn is trained up to and
            including the first of them after its start; when a turn holds none
            (a template whose turns do not end with EOS), its whole rendering is.
        where: names the conversation in error messages (``file:line``).

    Returns:
        A Sample with ``loss_mask`` 1 on the assistant turns' tokens.

    Raises:
        ValueError: naming ``where`` when the template fails to render a prefix of the
            conversation, or its renderings are not token prefixes of one another.
    """
    stops = set(stop_token_ids) if stop_token_ids is not None else {tokenizer.eos_token_id}
    msgs = [template_view(m) for m in messages]
    tool_list = list(tools) if tools else None

    def encode(upto: int, generation_prompt: bool) -> list[int]:
        try:
            text = tokenizer.apply_chat_template(
                msgs[:upto],
                tools=tool_list,
                add_generation_prompt=generation_prompt,
                tokenize=False,
            )
        except Exception as e:  # jinja raises its own types for any template error
            raise ValueError(
                f"{where}: the chat template cannot render messages[:{upto}]: {e}"
            ) from e
        return list(tokenizer.encode(text, add_special_tokens=False))

    full = encode(len(msgs), False)
    mask = [0] * len(full)
    for i, message in enumerate(msgs):
        if message["role"] != "assistant":
            continue
        start = len(encode(i, True))
        through = encode(i + 1, False)
        end = next((k + 1 for k in range(start, len(through)) if through[k] in stops), None)
        end = len(through) if end is None else end
        if full[:start] != through[:start] or full[:end] != through[:end]:
            raise ValueError(
                f"{where}: the chat template does not render messages[{i}] (assistant) as a "
                "prefix of the whole conversation (it renders earlier turns differently once "
                "later ones follow, e.g. strips reasoning), so its tokens cannot be trained "
                "as the model will see them; use a template without that rewriting"
            )
        mask[start:end] = [1] * (end - start)
    n = len(full)
    return Sample(input_ids=full, loss_mask=mask, logprobs=[0.0] * n, versions=[PROMPT_VERSION] * n)


def fit_length(sample: Sample, max_length: int, truncation: str) -> Sample | None:
    """``sample`` within ``max_length`` tokens under policy ``truncation``; None drops it.

    ``drop`` leaves out any longer conversation (a cut one would end mid-turn);
    ``truncate`` keeps its first ``max_length`` tokens when any trained token is
    among them.
    """
    if len(sample) <= max_length:
        return sample
    if truncation == "drop":
        return None
    cut = Sample(
        input_ids=sample.input_ids[:max_length],
        loss_mask=sample.loss_mask[:max_length],
        logprobs=sample.logprobs[:max_length],
        versions=sample.versions[:max_length],
    )
    return cut if any(cut.loss_mask) else None


def load_chat_sft(
    path: str | Path,
    tokenizer: Any,
    *,
    max_length: int,
    truncation: str = "drop",
) -> tuple[list[Sample], ChatSFTStats]:
    """Read and tokenize every conversation of a chat JSONL file.

    Args:
        path: the ``.jsonl`` file; blank lines are skipped.
        tokenizer: a Hugging Face tokenizer with a chat template.
        max_length: longest row in tokens.
        truncation: ``drop`` or ``truncate`` conversations longer than ``max_length``.

    Returns:
        The rows, in file order, and what was kept, cut and dropped (each drop
        is also logged with its line).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed line, a template that cannot render a line
            prefix-stably (both naming ``file:line``), or no row left at all.
    """
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {TRUNCATION}, got {truncation!r}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    stats = ChatSFTStats()
    rows: list[Sample] = []
    for where, record in read_jsonl_objects(path, "chat SFT JSONL"):
        stats.read += 1
        messages, tools = validate_chat(record, where)
        sample = tokenize_chat(tokenizer, messages, tools, where=where)
        fitted = fit_length(sample, max_length, truncation)
        if fitted is None:
            stats.dropped += 1
            logger.warning(
                "%s: dropped, %d tokens > max_length %d (truncation=%s)",
                where,
                len(sample),
                max_length,
                truncation,
            )
            continue
        stats.truncated += fitted is not sample
        stats.kept += 1
        stats.trained_tokens += fitted.num_generated
        rows.append(fitted)
    if not rows:
        raise ValueError(
            f"{path}: no conversation to train on ({stats.read} read, {stats.dropped} dropped "
            f"as longer than max_length={max_length})"
        )
    return rows, stats
