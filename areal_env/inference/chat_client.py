r"""OpenAI chat-completions client over an InferenceEngine that records every token.

Agents call ``client.chat.completions.create(messages=..., tools=...)`` as they
would call ``openai.AsyncOpenAI`` and get the SDK's own types back
(``openai.types.chat.ChatCompletion``). Under the hood the client works
token-in/token-out, so multi-turn training never sees re-tokenized model output:

* a call that starts a sample renders its messages with the chat template;
* a later call whose messages extend an earlier call's history (its messages
  plus the reply) keeps that sample's exact sampled ids and appends only

  - the end of the assistant turn that the template writes and the model did
    not sample (the ``\n`` after ``<|im_end|>``; all of ``<|im_end|>\n`` when the
    reply hit the token budget), and
  - the *difference* between two renderings of the same history,
    ``render(history, gen_prompt=False)`` and ``render(messages, gen_prompt=True)``:
    the new messages and the generation prompt;

* a drift check compares each reply, when a later call extends it, with the
  template's rendering of the same turn (``trajectory.metrics["drift_events"]``
  and a warning);
* when that cannot be done faithfully, the call starts a new
  :class:`~areal_env.types.Sample` of the same episode, whose prompt is the
  full rendering: the template rewrites earlier turns (``template_splits``),
  the messages extend no earlier history (``history_splits``), or the call
  samples with another temperature/top-p/top-k (``sampling_splits``).

Token-level users get a completion's engine output from its extra field
``completion.generation`` (a :class:`~areal_env.types.GenerationResult`: ids,
logprobs, weight versions; :func:`generation_of` is the typed accessor). Calls
that must not be trained (a user simulator, a judge) go through
:meth:`ChatClient.untracked`, which has the same API and records nothing.

Each call's arguments are checked and its messages normalised first, by
:mod:`areal_env.inference.openai_args`: what is honoured, what is refused by
name, how messages become plain dicts (:func:`to_message_dict`, re-exported here).

Example:
    >>> import asyncio
    >>> from areal_env.testing import ScriptedEngine, char_tokenizer
    >>> tok = char_tokenizer()
    >>> client = ChatClient(ScriptedEngine(replies=[tok.encode("42")]), tok)
    >>> ep = client.episode()
    >>> messages = [{"role": "user", "content": "6*7"}]
    >>> reply = asyncio.run(ep.chat.completions.create(messages=messages))
    >>> reply.choices[0].message.content, ep.trajectory.samples[0].num_generated
    ('42', 3)
    >>> generation_of(reply).output_ids[-1] == tok.eos_token_id
    True
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from openai.types import CompletionUsage
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionMessageToolCallUnion,
    ChatCompletionTokenLogprob,
)
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs

from areal_env.errors import InferenceError
from areal_env.inference.engine import InferenceEngine
from areal_env.inference.openai_args import (
    Call,
    check_number,
    normalize_tools,
    parse_call,
    stop_strings,
    template_view,
    to_message_dict,
    token_budget,
)
from areal_env.inference.tool_parsing import ParsedMessage, parse_tool_calls, tool_call_to_openai
from areal_env.rollout.activity import phase
from areal_env.rollout.seeding import request_seed
from areal_env.types import (
    GenerationRequest,
    GenerationResult,
    Sample,
    SamplingParams,
    Trajectory,
    new_id,
)

logger = logging.getLogger(__name__)

RENDER_CACHE_SIZE = 4096
"""Rendered chat histories kept (oldest evicted first)."""

EPISODE_METRICS = (
    "drift_events",
    "template_splits",
    "history_splits",
    "sampling_splits",
    "tool_call_parse_errors",
)
"""Counters every episode's ``trajectory.metrics`` starts with at 0, so averages
over episodes count the episodes where nothing happened."""

_TURN_SENTINEL = "AREAL_ENV_TURN_SENTINEL"


@dataclass(kw_only=True, slots=True)
class SamplingConfig:
    """Default sampling for completions; a call's own arguments override it.

    Raises:
        ValueError: naming ``inference.sampling.<key>`` for an out-of-range value.
    """

    max_new_tokens: int = 256
    """Token budget per completion."""
    temperature: float = 1.0
    """Sampling temperature (the trainer scores logprobs at the same one)."""
    top_p: float = 1.0
    """Nucleus mass; 1.0 disables it."""
    top_k: int = 0
    """Top-k; 0 disables it."""

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": (self.max_new_tokens >= 1, ">= 1"),
            "temperature": (self.temperature >= 0, ">= 0"),
            "top_p": (0 < self.top_p <= 1, "in (0, 1]"),
            "top_k": (self.top_k >= 0, ">= 0 (0 disables it)"),
        }
        for key, (ok, rule) in checks.items():
            if not ok:
                raise ValueError(
                    f"inference.sampling.{key} must be {rule}, got {getattr(self, key)!r}"
                )


@dataclass(kw_only=True, slots=True)
class _Branch:
    """A sample under construction and the chat history its tokens stand for."""

    sample: Sample = field(default_factory=Sample)
    history: list[dict[str, Any]] = field(default_factory=list)
    """The last call's messages plus the reply it returned."""
    tools: list[dict[str, Any]] | None = None
    pending_close: str = ""
    """Turn-closing text the template writes after the last reply and the model did
    not sample; owed before the next prompt tokens."""
    busy: bool = False
    """True while a call on this branch awaits the engine."""
    last_prompt: str = ""
    """The template's rendering the last reply was sampled after (generation prompt on)."""
    last_turn: str = ""
    """The last reply's text as sampled, plus the turn ending owed after it."""


class ChatClient:
    """Shared front end: engine, tokenizer, default sampling, stop tokens, render cache."""

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
        self._turn_close: str | None = None
        self._reported: set[str] = set()

    def episode(self) -> EpisodeClient:
        """A fresh per-episode client that records into its own Trajectory."""
        return EpisodeClient(self)

    def untracked(self) -> UntrackedClient:
        """A client with the same API that records nothing (user simulators, judges)."""
        return UntrackedClient(self)

    def render(
        self,
        messages: Sequence[Any],
        tools: Sequence[Any] | None,
        *,
        generation_prompt: bool,
    ) -> str:
        """The chat template's text for ``messages`` (memoised on their JSON form).

        Messages may be dicts or OpenAI message objects. Tool-call ``arguments``
        strings are handed to the template as dicts (on a copy), since templates
        ``| tojson`` them (AReaL issue #1463). ``apply_chat_template`` costs about
        a millisecond, as much as sampling a short answer, and the n episodes of
        a group and every turn's re-render ask for identical text: hence the cache.
        """
        msgs = [to_message_dict(m) for m in messages]
        tool_list = normalize_tools(tools)
        key = json.dumps([msgs, tool_list, generation_prompt], sort_keys=True, default=str)
        text = self._render_cache.get(key)
        if text is None:
            text = self.tokenizer.apply_chat_template(
                [template_view(m) for m in msgs],
                tools=tool_list,
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

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool) -> str:
        """Text of ``ids``, through the Rust backend when that gives the same text.

        The Python wrapper's decode checks every id in Python first (~13% of the
        rollout driver's CPU at scale, benchmarks/scheduler_scale.py); it differs
        from the backend's only by the optional clean-up of tokenization spaces.
        """
        if self._backend is not None and not getattr(
            self.tokenizer, "clean_up_tokenization_spaces", False
        ):
            return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def sampling_params(
        self,
        *,
        max_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
    ) -> SamplingParams:
        """Merge a call's OpenAI sampling arguments over the defaults.

        Raises:
            ValueError: naming the OpenAI parameter that is out of range.
        """
        d = self.sampling
        budget = token_budget(max_tokens, max_completion_tokens)
        if temperature is not None:
            check_number("temperature", temperature, lambda t: t >= 0, ">= 0")
        if top_p is not None:
            check_number("top_p", top_p, lambda p: 0 < p <= 1, "in (0, 1]")
        return SamplingParams(
            max_new_tokens=d.max_new_tokens if budget is None else budget,
            temperature=d.temperature if temperature is None else float(temperature),
            top_p=d.top_p if top_p is None else float(top_p),
            top_k=d.top_k,
            stop_token_ids=self.stop_token_ids,
            stop=stop_strings(stop),
        )

    @property
    def turn_close(self) -> str:
        r"""What the template writes after an assistant message's content (e.g. ``<|im_end|>\n``).

        Found once by rendering a reply with a sentinel content; empty when the
        template cannot render that probe.
        """
        if self._turn_close is None:
            self._turn_close = self._probe_turn_close()
        return self._turn_close

    def _probe_turn_close(self) -> str:
        probe = [
            {"role": "user", "content": "?"},
            {"role": "assistant", "content": _TURN_SENTINEL},
        ]
        try:
            text = self.render(probe, None, generation_prompt=False)
        except Exception as e:  # a template may refuse any probe; then we owe nothing
            logger.debug("chat template refused the turn-closing probe: %s", e)
            return ""
        at = text.rfind(_TURN_SENTINEL)
        return "" if at < 0 else text[at + len(_TURN_SENTINEL) :]

    def unsampled_close(self, sampled_text: str) -> str:
        r"""The part of :attr:`turn_close` that ``sampled_text`` does not already end with.

        Example:
            >>> from areal_env.testing import ScriptedEngine, char_tokenizer
            >>> client = ChatClient(ScriptedEngine(replies=[[5]]), char_tokenizer())
            >>> client.unsampled_close("42<|im_end|>"), client.unsampled_close("42")
            ('\n', '<|im_end|>\n')
        """
        close = self.turn_close
        for k in range(len(close), 0, -1):
            if sampled_text.endswith(close[:k]):
                return close[k:]
        return close

    async def generate(
        self, input_ids: Sequence[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerationResult:
        """Ask the engine for one completion of ``input_ids`` (``session_id``: server affinity).

        Raises:
            InferenceError: when the engine aborted the request: a partial reply
                would otherwise pass for a finished one.
        """
        request = GenerationRequest(
            input_ids=tuple(input_ids), sampling=sampling, session_id=session_id
        )
        result = await self.engine.agenerate(request)
        if result.finish_reason == "abort":
            raise InferenceError(
                f"request {request.request_id} was aborted after "
                f"{result.num_output_tokens} tokens; the chat client does not resume it"
            )
        return result

    def _completion(self, call: Call, result: GenerationResult) -> tuple[ChatCompletion, list[str]]:
        """The OpenAI completion for ``result`` and the tool-call parse errors in it.

        The completion carries two extra fields: ``generation`` (``result``) and
        ``parse_errors``.
        """
        ids = _strip_stop(result, call.sampling)
        text = self.decode(ids, skip_special_tokens=True)
        parsed = parse_tool_calls(text) if call.parse_tools else ParsedMessage(content=text)
        calls: list[ChatCompletionMessageToolCallUnion] | None = [
            tool_call_to_openai(c) for c in parsed.tool_calls
        ] or None
        message = ChatCompletionMessage(
            role="assistant",
            content=(parsed.content if parsed.content.strip() else None) if calls else text,
            tool_calls=calls,
        )
        choice = Choice(
            index=0,
            message=message,
            finish_reason=_finish_reason(result, bool(calls)),
            logprobs=self._choice_logprobs(ids, result) if call.logprobs else None,
        )
        prompt_tokens = len(result.input_ids)
        # Extra fields (the SDK's models allow them) for token-level users.
        extra: dict[str, Any] = {"generation": result, "parse_errors": parsed.errors}
        completion = ChatCompletion(
            id=new_id("chatcmpl-", 24),
            object="chat.completion",
            created=int(time.time()),
            model=self.model_name,
            choices=[choice],
            usage=CompletionUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=result.num_output_tokens,
                total_tokens=prompt_tokens + result.num_output_tokens,
            ),
            **extra,
        )
        return completion, parsed.errors

    def _choice_logprobs(self, ids: list[int], result: GenerationResult) -> ChoiceLogprobs:
        content = []
        for token_id, logprob in zip(ids, result.output_logprobs, strict=False):
            token = self.decode([token_id], skip_special_tokens=False)
            content.append(
                ChatCompletionTokenLogprob(
                    token=token, bytes=list(token.encode("utf-8")), logprob=logprob, top_logprobs=[]
                )
            )
        return ChoiceLogprobs(content=content)

    def _report(self, kind: str, message: str) -> None:
        """Log a faithfulness event: a warning the first time per kind, DEBUG after."""
        first = kind not in self._reported
        self._reported.add(kind)
        level = logging.WARNING if first else logging.DEBUG
        logger.log(level, "%s (counted in trajectory.metrics[%r])", message, kind)


class _Completions:
    def __init__(self, create: Callable[..., Coroutine[Any, Any, ChatCompletion]]) -> None:
        self.create = create


class _Chat:
    """The ``chat.completions.create`` namespace of the OpenAI SDK."""

    def __init__(self, create: Callable[..., Coroutine[Any, Any, ChatCompletion]]) -> None:
        self.completions = _Completions(create)


class EpisodeClient:
    """Per-episode client: ``chat.completions.create`` plus the recorded trajectory.

    Concurrent calls are safe: a call never extends a sample another call is
    still generating on; it starts its own.
    """

    def __init__(self, shared: ChatClient) -> None:
        self.shared = shared
        self.trajectory = Trajectory(metrics=dict.fromkeys(EPISODE_METRICS, 0.0))
        """The episode so far: one sample per faithful token sequence."""
        self.chat = _Chat(self._create)
        self.session_id = new_id("episode-", 16)
        """Sent with every request, so an episode's turns stay on one inference server."""
        self._branches: list[_Branch] = []
        self._num_calls = 0

    async def _create(self, **kwargs: Any) -> ChatCompletion:
        call = parse_call(kwargs, self.shared.sampling_params)
        full = self.shared.render(call.messages, call.tools, generation_prompt=True)
        branch, new_ids = self._plan(call, full)
        sampling = call.sampling
        seed = request_seed(self._num_calls)  # a seeded episode: one seed per model call
        self._num_calls += 1
        if seed is not None and sampling.seed is None:
            sampling = dataclasses.replace(sampling, seed=seed)
        branch.busy = True
        try:
            with phase("inference"):
                result = await self.shared.generate(
                    [*branch.sample.input_ids, *new_ids], sampling, session_id=self.session_id
                )
        finally:
            branch.busy = False
        branch.sample.append_prompt(new_ids)
        branch.sample.append_generation(result, call.sampling)
        if not any(b is branch for b in self._branches):
            self._branches.append(branch)
            self.trajectory.samples.append(branch.sample)
        completion, errors = self.shared._completion(call, result)
        self._after_turn(branch, call, full, result, completion.choices[0].message)
        self._count("tool_call_parse_errors", len(errors))
        return completion

    def _plan(self, call: Call, full: str) -> tuple[_Branch, list[int]]:
        """The branch this call extends and the prompt ids to append to it."""
        shared = self.shared
        branch = self._extendable(call.messages)
        if branch is None:
            if self._branches:
                self._count("history_splits")
            return _Branch(), shared.encode(full)
        if not branch.sample.accepts(call.sampling):
            self._count("sampling_splits")
            return _Branch(), shared.encode(full)
        base = shared.render(branch.history, branch.tools, generation_prompt=False)
        self._check_drift(branch.last_prompt, base, branch.last_turn)
        if not full.startswith(base):
            at = _common_prefix(base, full)
            self._count("template_splits")
            shared._report(
                "template_splits",
                f"chat template cannot extend the sampled prefix (renderings differ at char "
                f"{at}: {_excerpt(base, at)} vs {_excerpt(full, at)}); starting a new sample",
            )
            return _Branch(), shared.encode(full)
        return branch, shared.encode(branch.pending_close + full[len(base) :])

    def _extendable(self, messages: list[dict[str, Any]]) -> _Branch | None:
        """The idle branch with the longest history that ``messages`` extend, latest first."""
        best = None
        for b in reversed(self._branches):
            longer = best is None or len(b.history) > len(best.history)
            if not b.busy and longer and _extends(messages, b.history):
                best = b
        return best

    def _after_turn(
        self,
        branch: _Branch,
        call: Call,
        full: str,
        result: GenerationResult,
        message: ChatCompletionMessage,
    ) -> None:
        shared = self.shared
        reply = to_message_dict(message)
        history = [*call.messages, reply]
        sampled = shared.decode(result.output_ids, skip_special_tokens=False)
        close = shared.unsampled_close(sampled)
        branch.history, branch.tools, branch.pending_close = history, call.tools, close
        branch.last_prompt, branch.last_turn = full, sampled + close
        self.trajectory.messages = history

    def _check_drift(self, full: str, after: str, ours: str) -> None:
        """Compare a sampled turn with the template's rendering of it; count a mismatch.

        Run when the turn is about to be extended, where ``after`` (the rendering of
        the history with the reply) is needed anyway: a reply that nothing follows
        costs no extra rendering, and drift only matters for what comes after it.

        Args:
            full: the rendering the reply was sampled after (generation prompt on).
            after: the rendering of the history including the reply.
            ours: the reply as sampled, plus the turn ending owed after it.
        """
        if after.startswith(full):
            theirs = after[len(full) :]
            if theirs == ours:
                return
            at = _common_prefix(ours, theirs)
            where = f"reply char {at} (sequence char {len(full) + at})"
            detail = f"sampled {_excerpt(ours, at)}, template {_excerpt(theirs, at)}"
        else:
            at = _common_prefix(full, after)
            where = f"prompt char {at}, the template rewrites the prompt once the reply is added"
            detail = f"prompt {_excerpt(full, at)}, re-rendered {_excerpt(after, at)}"
        self._count("drift_events")
        self.shared._report("drift_events", f"chat template drift at {where}: {detail}")

    def _count(self, name: str, n: int = 1) -> None:
        self.trajectory.metrics[name] = self.trajectory.metrics.get(name, 0.0) + n


class UntrackedClient:
    """Same ``chat.completions.create`` API; renders each call afresh and records nothing.

    For model calls that are part of the environment rather than the policy's
    episode: a simulated user, a judge. They use the policy engine but never
    become training rows.
    """

    def __init__(self, shared: ChatClient) -> None:
        self.shared = shared
        self.chat = _Chat(self._create)

    async def _create(self, **kwargs: Any) -> ChatCompletion:
        call = parse_call(kwargs, self.shared.sampling_params)
        text = self.shared.render(call.messages, call.tools, generation_prompt=True)
        result = await self.shared.generate(self.shared.encode(text), call.sampling)
        return self.shared._completion(call, result)[0]


def generation_of(completion: ChatCompletion) -> GenerationResult:
    """The engine output (token ids, logprobs, versions) behind a ChatClient completion.

    Raises:
        ValueError: when ``completion`` did not come from a ChatClient (or lost
            its extra field through ``model_dump``).
    """
    generation = getattr(completion, "generation", None)
    if not isinstance(generation, GenerationResult):
        raise ValueError("this ChatCompletion carries no areal_env GenerationResult")
    return generation


def _extends(messages: list[dict[str, Any]], history: list[dict[str, Any]]) -> bool:
    """True when ``messages`` starts with ``history`` (ignoring empty/None fields)."""
    if len(messages) < len(history):
        return False
    return all(_canon(a) == _canon(b) for a, b in zip(messages, history, strict=False))


def _canon(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if v not in (None, "", [])}


def _strip_stop(result: GenerationResult, sampling: SamplingParams) -> list[int]:
    ids = result.output_ids
    if result.finish_reason == "stop" and ids and ids[-1] in sampling.stop_token_ids:
        return ids[:-1]
    return ids


def _finish_reason(
    result: GenerationResult, has_calls: bool
) -> Literal["stop", "length", "tool_calls"]:
    if has_calls:
        return "tool_calls"
    return "length" if result.finish_reason == "length" else "stop"


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _excerpt(text: str, at: int, width: int = 24) -> str:
    return repr(text[max(0, at - width) : at + width])


__all__ = [
    "EPISODE_METRICS",
    "ChatClient",
    "EpisodeClient",
    "SamplingConfig",
    "UntrackedClient",
    "generation_of",
    "to_message_dict",
]
