"""OpenAI-shaped chat client over an InferenceEngine that records every token.

Agents call ``client.chat.completions.create(messages=..., tools=...)`` as they
would call the OpenAI SDK. Under the hood the client works token-in/token-out:

* the first call renders the messages with the tokenizer's chat template;
* each later call keeps the exact sampled ids of earlier turns and appends only
  the tokens of the *new* messages (tool results, user turns);
* a drift check compares our ids with a fresh template rendering of the same
  history. Where the template cannot extend the prefix (it strips thinking, say)
  the episode is split into one trajectory segment per turn, never re-tokenized.

One :class:`ChatClient` is shared by all episodes; each episode gets its own
:class:`EpisodeClient` from :meth:`ChatClient.episode`.

Example:
    >>> import asyncio
    >>> from areal_env.testing import ScriptedEngine, char_tokenizer
    >>> tok = char_tokenizer()
    >>> client = ChatClient(ScriptedEngine(replies=[tok.encode("42")]), tok)
    >>> ep = client.episode()
    >>> messages = [{"role": "user", "content": "6*7"}]
    >>> reply = asyncio.run(ep.chat.completions.create(messages=messages))
    >>> reply.choices[0].message.content, sum(ep.trajectory.loss_mask)
    ('42', 3)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from areal_env.inference.engine import InferenceEngine
from areal_env.inference.tool_parsing import parse_tool_calls, tool_call_to_openai
from areal_env.types import (
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    Trajectory,
    new_id,
)

logger = logging.getLogger(__name__)

RENDER_CACHE_SIZE = 4096
"""Rendered chat histories kept (oldest evicted first)."""


@dataclass(kw_only=True, slots=True)
class SamplingConfig:
    """Default sampling for completions; a call's own arguments override it."""

    max_new_tokens: int = 256
    """Token budget per completion."""
    temperature: float = 1.0
    """Sampling temperature (the trainer scores logprobs at the same one)."""
    top_p: float = 1.0
    """Nucleus mass; 1.0 disables it."""
    top_k: int = 0
    """Top-k; 0 disables it."""


@dataclass(kw_only=True, slots=True)
class ChatMessage:
    """The assistant message of a completion (OpenAI field names)."""

    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """OpenAI message dict, ready to append to a history or send as an action."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


@dataclass(kw_only=True, slots=True)
class Choice:
    """One completion choice (we always return exactly one)."""

    index: int
    message: ChatMessage
    finish_reason: str


@dataclass(kw_only=True, slots=True)
class ChatCompletion:
    """OpenAI-shaped completion, plus the raw generation for token-level users."""

    id: str
    model: str
    created: int
    choices: list[Choice]
    usage: dict[str, int]
    generation: GenerationResult
    """The engine's token ids, logprobs and versions for this completion."""
    parse_errors: list[str] = field(default_factory=list)
    """Malformed tool-call blocks the parser could not read."""


class ChatClient:
    """Shared front end: engine, tokenizer, default sampling, stop tokens."""

    def __init__(
        self,
        engine: InferenceEngine,
        tokenizer: Any,
        *,
        sampling: SamplingConfig | None = None,
        model_name: str = "areal-env-policy",
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingConfig()
        self.model_name = model_name
        stop = {tokenizer.eos_token_id, *getattr(engine, "extra_stop_token_ids", ())}
        self.stop_token_ids = tuple(sorted(i for i in stop if i is not None))
        self._render_cache: dict[str, str] = {}
        self._backend = getattr(tokenizer, "backend_tokenizer", None)

    def episode(self) -> EpisodeClient:
        """A fresh per-episode client that records into its own Trajectory."""
        return EpisodeClient(self)

    def render(
        self, messages: list[dict], tools: list[dict] | None, *, generation_prompt: bool
    ) -> str:
        """The chat template's text for ``messages`` (memoised on their JSON form).

        ``apply_chat_template`` costs about a millisecond per call in Python, as
        much as sampling a short answer; the n_samples episodes of a group, and
        every turn's re-render of the same history, ask for identical text.
        """
        key = json.dumps([messages, tools or None, generation_prompt], sort_keys=True, default=str)
        text = self._render_cache.get(key)
        if text is None:
            text = self.tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                add_generation_prompt=generation_prompt,
                tokenize=False,
            )
            if len(self._render_cache) >= RENDER_CACHE_SIZE:
                self._render_cache.pop(next(iter(self._render_cache)))
            self._render_cache[key] = text
        return text

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no BOS/EOS added.

        Fast tokenizers are called through their Rust backend directly: the
        Python wrapper's encode costs ~1.5 ms a call, more than the model does.
        """
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def sampling_params(self, **overrides: Any) -> SamplingParams:
        """Merge per-call OpenAI arguments over the defaults."""
        d = self.sampling
        stop = overrides.get("stop")
        return SamplingParams(
            max_new_tokens=overrides.get("max_tokens") or d.max_new_tokens,
            temperature=d.temperature
            if overrides.get("temperature") is None
            else overrides["temperature"],
            top_p=d.top_p if overrides.get("top_p") is None else overrides["top_p"],
            top_k=d.top_k,
            stop_token_ids=self.stop_token_ids,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        )


class EpisodeClient:
    """Per-episode client: ``chat.completions.create`` plus the recorded trajectory."""

    def __init__(self, shared: ChatClient) -> None:
        self.shared = shared
        self.segments: list[Trajectory] = []
        """Finished segments when the template forced a per-turn split."""
        self.trajectory = Trajectory()
        """The segment being recorded (the whole episode when there was no split)."""
        self.drift_events = 0
        """How many turns the template could not extend the token prefix."""
        self._history: list[dict] = []
        self.chat = _Chat(self)
        self.completions = self.chat.completions

    def all_segments(self) -> list[Trajectory]:
        """Every recorded segment, the current one last."""
        return [*self.segments, self.trajectory]

    async def create(
        self, *, messages: list[dict], tools: list[dict] | None = None, **kwargs: Any
    ) -> ChatCompletion:
        """Sample one assistant message for ``messages`` and record its tokens."""
        if not messages:
            raise ValueError("chat.completions.create: messages must not be empty")
        self._extend_prompt(list(messages), tools)
        shared = self.shared
        request = GenerationRequest(
            input_ids=tuple(self.trajectory.input_ids), sampling=shared.sampling_params(**kwargs)
        )
        result = await shared.engine.agenerate(request)
        self.trajectory.append_generation(result)
        text = shared.tokenizer.decode(_strip_stop(result, request), skip_special_tokens=True)
        parsed = parse_tool_calls(text)
        calls = [tool_call_to_openai(c) for c in parsed.tool_calls] or None
        message = ChatMessage(content=(parsed.content or None) if calls else text, tool_calls=calls)
        self._history = [*messages, message.to_dict()]
        self.trajectory.messages = list(self._history)
        return ChatCompletion(
            id=new_id("chatcmpl-", 16),
            model=shared.model_name,
            created=int(time.time()),
            choices=[Choice(index=0, message=message, finish_reason=_finish(result, calls))],
            usage={
                "prompt_tokens": len(request.input_ids),
                "completion_tokens": result.num_output_tokens,
                "total_tokens": len(request.input_ids) + result.num_output_tokens,
            },
            generation=result,
            parse_errors=parsed.errors,
        )

    def _extend_prompt(self, messages: list[dict], tools: list[dict] | None) -> None:
        shared = self.shared
        if not self.trajectory.input_ids:
            text = shared.render(messages, tools, generation_prompt=True)
            self.trajectory.append_prompt(shared.encode(text))
            return
        prev = self._history
        base = shared.render(prev, tools, generation_prompt=False)
        full = shared.render(messages, tools, generation_prompt=True)
        ours = shared.tokenizer.decode(self.trajectory.input_ids, skip_special_tokens=False)
        extends = messages[: len(prev)] == prev and full.startswith(base)
        if not (extends and base.startswith(ours)):
            # The template cannot extend what we sampled: start a new segment
            # instead of re-tokenizing model output.
            self.drift_events += 1
            logger.warning("chat template drift: splitting the episode into per-turn segments")
            self.segments.append(self.trajectory)
            self.trajectory = Trajectory()
            self.trajectory.append_prompt(shared.encode(full))
            return
        # base[len(ours):] is what the template writes after our sampled ids
        # (e.g. the newline after <|im_end|>); then come the new messages.
        self.trajectory.append_prompt(shared.encode(base[len(ours) :] + full[len(base) :]))


class _Completions:
    def __init__(self, episode: EpisodeClient) -> None:
        self._episode = episode

    async def create(self, **kwargs: Any) -> ChatCompletion:
        return await self._episode.create(**kwargs)


class _Chat:
    def __init__(self, episode: EpisodeClient) -> None:
        self.completions = _Completions(episode)


def _strip_stop(result: GenerationResult, request: GenerationRequest) -> list[int]:
    ids = result.output_ids
    if result.finish_reason == "stop" and ids and ids[-1] in request.sampling.stop_token_ids:
        return ids[:-1]
    return ids


def _finish(result: GenerationResult, calls: list | None) -> str:
    if calls:
        return "tool_calls"
    return "length" if result.finish_reason == "length" else "stop"
