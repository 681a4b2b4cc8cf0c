"""``/v1/completions``: raw prompts (text or token ids), recorded token-in/token-out.

Agents that write their own prompts (a custom template, a scaffold that
continues its own text) call the legacy completions route. In a session each
completion is recorded as the chat client records chat calls: a prompt that
continues an earlier completion of the episode (its text, or its token ids,
plus the completion returned, plus more) extends that sample after the exact
sampled ids, so the trainer never sees re-tokenized model output; any other
prompt starts a new sample of the episode.

Parameters: ``prompt`` (a string, an array of token ids, or an array of
either: one prompt each), ``max_tokens`` (default: the server's
``inference.sampling.max_new_tokens``, not OpenAI's 16), ``temperature``,
``top_p``, ``stop``, ``n``, ``logprobs`` (0 or 1: engines give the sampled
token's logprob only), ``stream`` (+ ``stream_options``), ``return_token_ids``.
Accepted at their defaults only: ``echo`` (false), ``best_of`` (1),
``suffix``, ``frequency_penalty``/``presence_penalty`` (0), ``logit_bias``
(empty). Ignored: ``seed``, ``user``, ``model`` (the server serves one model).

Example:
    >>> from areal_env.testing import ScriptedEngine, char_tokenizer
    >>> from areal_env.inference.chat_client import ChatClient
    >>> client = ChatClient(ScriptedEngine(replies=[[5]]), char_tokenizer())
    >>> req = parse_text_request({"prompt": [[7, 8], [9]], "max_tokens": 3}, client)
    >>> req.prompts, req.sampling.max_new_tokens
    ([[7, 8], [9]], 3)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from areal_env.inference.chat_client import ChatClient
from areal_env.serving.chat import MAX_N, flag
from areal_env.serving.errors import bad_request, from_call_error
from areal_env.types import GenerationResult, Sample, SamplingParams, Trajectory, new_id

Prompt = str | list[int]
"""One prompt: text, or token ids sent to the engine as they are."""

_KNOWN = frozenset(
    {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "n", "logprobs"}
    | {"stream", "stream_options", "return_token_ids", "seed", "user"}
)
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
}


@dataclass(kw_only=True, slots=True)
class TextRequest:
    """A checked ``/v1/completions`` request."""

    prompts: list[Prompt]
    """Each prompt gets ``n`` choices (choice index ``prompt * n + j``)."""
    sampling: SamplingParams
    """Merged over the server's default sampling."""
    n: int = 1
    """Choices per prompt."""
    logprobs: bool = False
    """Return each sampled token's logprob."""
    stream: bool = False
    """Answer with server-sent events."""
    include_usage: bool = False
    """``stream_options.include_usage``."""
    return_token_ids: bool = False
    """Add ``token_ids`` and ``prompt_token_ids`` to each choice."""


def parse_text_request(body: dict[str, Any], client: ChatClient) -> TextRequest:
    """Check a ``/v1/completions`` body.

    Raises:
        APIError: a 400 naming the parameter.
    """
    for name, value in body.items():
        if value is None or name in _KNOWN:
            continue
        if name not in _DEFAULT_ONLY:
            raise bad_request(
                f"parameter {name!r} is not supported by /v1/completions",
                param=name,
                code="unsupported_parameter",
            )
        if value not in _DEFAULT_ONLY[name]:
            raise bad_request(
                f"{name}={value!r} cannot be honoured (only {_DEFAULT_ONLY[name][0]!r})",
                param=name,
                code="unsupported_value",
            )
    n = body.get("n")
    n = 1 if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise bad_request(f"n must be an integer in [1, {MAX_N}], got {n!r}", param="n")
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or logprobs not in (0, 1)):
        raise bad_request(
            f"logprobs={logprobs!r} cannot be honoured: engines return only the sampled "
            "token's logprob (use 0 or 1)",
            param="logprobs",
            code="unsupported_value",
        )
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", param="stream_options")
    keys = ("max_tokens", "temperature", "top_p", "stop")
    try:
        sampling = client.sampling_params(**{k: body[k] for k in keys if body.get(k) is not None})
    except (TypeError, ValueError) as e:
        raise from_call_error(
            type(e)(str(e).replace("chat.completions.create", "completions.create"))
        ) from None
    return TextRequest(
        prompts=_prompts(body.get("prompt")),
        sampling=sampling,
        n=n,
        logprobs=logprobs is not None,
        stream=flag(body.get("stream"), "stream"),
        include_usage=flag(options.get("include_usage"), "stream_options.include_usage"),
        return_token_ids=flag(body.get("return_token_ids"), "return_token_ids"),
    )


def _prompts(prompt: Any) -> list[Prompt]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(_is_id(t) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, list) and p and all(_is_id(t) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise bad_request(
        "prompt must be a string, an array of token ids, or a non-empty array of either",
        param="prompt",
    )


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(kw_only=True, slots=True)
class _Branch:
    sample: Sample
    text: str | None
    """What the sample's ids stand for as the agent sees it (None: started from ids)."""
    busy: bool = False


@dataclass(kw_only=True, slots=True)
class TextRecorder:
    """Runs raw completions and, given a trajectory, records each into it.

    Without a trajectory (the shared ``/v1`` routes) it records nothing.
    """

    client: ChatClient
    trajectory: Trajectory | None = None
    _branches: list[_Branch] = field(default_factory=list)

    async def complete(self, prompt: Prompt, sampling: SamplingParams) -> GenerationResult:
        """Generate one completion of ``prompt``; record it when there is a trajectory.

        Raises:
            ValueError: an empty prompt or ids the engine refuses.
        """
        if self.trajectory is None:
            ids = prompt if isinstance(prompt, list) else self.client.encode(prompt)
            return await self.client.generate(ids, sampling)
        branch, new_ids, new_text = self._plan(prompt, sampling)
        branch.busy = True
        try:
            result = await self.client.generate([*branch.sample.input_ids, *new_ids], sampling)
        finally:
            branch.busy = False
        if branch.sample.num_turns == 0:
            self._branches.append(branch)
            self.trajectory.samples.append(branch.sample)
        branch.sample.append_prompt(new_ids)
        branch.sample.append_generation(result, sampling)
        if branch.text is not None and new_text is not None:
            branch.text += new_text + completion_text(self.client, result)
        else:
            branch.text = None
        return result

    def _plan(
        self, prompt: Prompt, sampling: SamplingParams
    ) -> tuple[_Branch, list[int], str | None]:
        """The branch the prompt continues (or a new one), and the ids and text it adds."""
        best: tuple[_Branch, list[int], str | None] | None = None
        for b in self._branches:
            if b.busy or not b.sample.accepts(sampling):
                continue
            ids = b.sample.input_ids
            if best is not None and len(ids) <= len(best[0].sample.input_ids):
                continue
            if isinstance(prompt, list):
                if prompt[: len(ids)] == ids:
                    best = (b, prompt[len(ids) :], None)
            elif b.text is not None and prompt.startswith(b.text):
                rest = prompt[len(b.text) :]
                best = (b, self.client.encode(rest), rest)
        if best is not None:
            return best
        if isinstance(prompt, list):
            return _Branch(sample=Sample(), text=None), list(prompt), None
        return _Branch(sample=Sample(), text=""), self.client.encode(prompt), prompt


def completion_text(client: ChatClient, result: GenerationResult) -> str:
    """The text a completion returns: its ids without the stop token, special tokens skipped."""
    ids = result.output_ids
    if result.finish_reason == "stop" and ids and ids[-1] in client.stop_token_ids:
        ids = ids[:-1]
    return str(client.tokenizer.decode(ids, skip_special_tokens=True))


# ---- responses ---------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class TextAnswer:
    """The finished completions of one request, in choice order, with their ids."""

    results: list[GenerationResult]
    id: str = field(default_factory=lambda: new_id("cmpl-", 24))
    created: int = field(default_factory=lambda: int(time.time()))


def text_body(
    answer: TextAnswer, client: ChatClient, request: TextRequest, model: str
) -> dict[str, Any]:
    """The JSON body of a non-streaming ``text_completion``."""
    choices = [_choice(i, r, client, request) for i, r in enumerate(answer.results)]
    return {
        "id": answer.id,
        "object": "text_completion",
        "created": answer.created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": _usage(answer, request),
    }


def text_chunks(
    answer: TextAnswer, client: ChatClient, request: TextRequest, model: str
) -> Iterator[dict[str, Any]]:
    """Streamed ``text_completion`` chunks: the text per choice, then its finish reason."""
    base = {
        "id": answer.id,
        "object": "text_completion",
        "created": answer.created,
        "model": model,
        "system_fingerprint": None,
    }
    if request.include_usage:
        base["usage"] = None
    for i, result in enumerate(answer.results):
        choice = _choice(i, result, client, request)
        finish = choice.pop("finish_reason")
        yield {**base, "choices": [{**choice, "finish_reason": None}]}
        yield {
            **base,
            "choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": finish}],
        }
    if request.include_usage:
        yield {**base, "choices": [], "usage": _usage(answer, request)}


def _choice(
    index: int, result: GenerationResult, client: ChatClient, request: TextRequest
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": index,
        "text": completion_text(client, result),
        "logprobs": _logprobs(result, client) if request.logprobs else None,
        "finish_reason": "length" if result.finish_reason == "length" else "stop",
    }
    if request.return_token_ids:
        choice["token_ids"] = list(result.output_ids)
        choice["prompt_token_ids"] = list(result.input_ids)
    return choice


def _logprobs(result: GenerationResult, client: ChatClient) -> dict[str, Any]:
    ids, logprobs = result.output_ids, result.output_logprobs
    if result.finish_reason == "stop" and ids and ids[-1] in client.stop_token_ids:
        ids, logprobs = ids[:-1], logprobs[:-1]
    tokens = [client.tokenizer.decode([t], skip_special_tokens=False) for t in ids]
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": list(logprobs),
        "top_logprobs": [{t: lp} for t, lp in zip(tokens, logprobs, strict=True)],
        "text_offset": offsets,
    }


def _usage(answer: TextAnswer, request: TextRequest) -> dict[str, int]:
    # Each prompt counted once, as OpenAI does for n > 1.
    prompt = sum(len(r.input_ids) for r in answer.results[:: request.n])
    completion = sum(r.num_output_tokens for r in answer.results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


__all__ = [
    "TextAnswer",
    "TextRecorder",
    "TextRequest",
    "completion_text",
    "parse_text_request",
    "text_body",
    "text_chunks",
]
