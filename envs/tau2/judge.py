"""tau2's NL-assertion judge: an LLM grades a finished conversation against the task's assertions.

Configured like the LLM user (``Tau2Env(judge={...})``): an OpenAI-compatible
endpoint (``base_url``, ``model``, ``api_key``; ``openai.AsyncOpenAI`` made
lazily on the env's loop, closed with the env) or any object with
``chat.completions.create`` (``client``, e.g. ``ChatClient(...).untracked()``),
plus ``llm_args`` for ``create``.

It is prompted as tau2's ``NLAssertionsEvaluator`` (``evaluator_nl_assertions.py``):
a system message describing the grading task and its JSON answer
(``{"results": [{"expectedOutcome", "reasoning", "metExpectation"}]}``), and a
user message with the conversation (one ``role: content`` line per message,
system messages left out) and the expected outcomes. The NL component is 1 when
every assertion is met, else 0.

The reply is parsed leniently (a fenced ```` ```json ```` block or the first
JSON object in the text; ``metExpectation`` as a bool or ``"true"``/``"false"``)
but strictly in meaning: it must give exactly one verdict per assertion, else
:class:`JudgeError` names the task and what is wrong. An episode is never scored
on a guess. Verdicts are matched to assertions by their ``expectedOutcome`` text,
else by position.

With a :class:`~areal_env.envs.tau2.user_cache.CallCache` every call is
recorded or replayed under ``("nl_judge", task id, 0, hash of the request)``
(the raw reply text is what is stored, so a replay re-parses it).
"""

from __future__ import annotations

import json
import re
from typing import Any

from areal_env.envs.tau2.endpoint import EndpointClientMixin
from areal_env.envs.tau2.user_cache import CallCache

CALL_KIND = "nl_judge"
"""The cache's call kind for judge calls."""
CONFIG_KEYS = frozenset({"base_url", "model", "api_key", "client", "llm_args"})
"""Keys of the ``judge={...}`` config."""

SYSTEM_PROMPT = """TASK
- You are given a list of expected outcomes and a conversation recorded during a test run.
- The conversation is between a customer service agent and a customer.
- Decide, for each expected outcome separately, whether the agent satisfies it.

FORMAT
- Answer with one JSON object holding a `results` list, one entry per expected outcome, with:
- `expectedOutcome`: the expected outcome you are grading, repeated from the input
- `reasoning`: a short explanation of your decision
- `metExpectation`: `true` if the agent satisfies the expected outcome, `false` otherwise

Example:
{
    "results": [
        {
            "expectedOutcome": "<one of the expected outcomes>",
            "reasoning": "<why>",
            "metExpectation": true
        }
    ]
}"""
"""The judge's system prompt (tau2's grading instructions and answer format)."""

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


class JudgeError(ValueError):
    """The judge's reply cannot be read as one verdict per assertion (an episode error)."""


def conversation_text(messages: list[dict[str, Any]]) -> str:
    """The conversation as tau2 shows it to the judge: ``role: content`` per message."""
    return "\n".join(
        f"{m.get('role')}: {m.get('content')}" for m in messages if m.get("role") != "system"
    )


def judge_request(messages: list[dict[str, Any]], assertions: list[str]) -> dict[str, Any]:
    """The ``create`` messages for judging ``messages`` against ``assertions``."""
    user = f"conversation:\n{conversation_text(messages)}\n\nexpectedOutcomes:\n{assertions}"
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ]
    }


def _json_object(text: str) -> Any:
    """The first JSON value found in ``text``: whole text, a fenced block, or a ``{...}`` span."""
    candidates = [text.strip(), *(b.strip() for b in _FENCE.findall(text))]
    start = text.find("{")
    if start >= 0:
        candidates.append(text[start : text.rfind("}") + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except ValueError:
            continue
    raise JudgeError("the reply holds no JSON object")


def _met(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise JudgeError(f"metExpectation must be true or false, got {value!r}")


def _norm(text: Any) -> str:
    return " ".join(str(text).split()).lower()


def parse_verdicts(text: str | None, assertions: list[str]) -> list[dict[str, Any]]:
    """One ``{"nl_assertion", "met", "justification"}`` per assertion, from the judge's reply.

    Raises:
        JudgeError: no JSON object, no ``results`` list, a result that is not an
            object or lacks a boolean ``metExpectation``, or not exactly one
            verdict per assertion.
    """
    if not text:
        raise JudgeError("the reply is empty")
    data = _json_object(text)
    results = data.get("results") if isinstance(data, dict) else data
    if not isinstance(results, list):
        raise JudgeError("the reply has no 'results' list")
    if len(results) != len(assertions):
        raise JudgeError(f"{len(results)} verdicts for {len(assertions)} assertions")
    verdicts: list[dict[str, Any] | None] = [None] * len(assertions)
    unmatched = []
    for r in results:
        if not isinstance(r, dict) or "metExpectation" not in r:
            raise JudgeError(f"a result is not an object with metExpectation: {r!r}")
        verdict = {"met": _met(r["metExpectation"]), "justification": str(r.get("reasoning", ""))}
        outcome = _norm(r.get("expectedOutcome", ""))
        hits = [i for i, a in enumerate(assertions) if verdicts[i] is None and _norm(a) == outcome]
        if hits:
            verdicts[hits[0]] = verdict
        else:
            unmatched.append(verdict)
    for i in range(len(verdicts)):  # the rest by position
        if verdicts[i] is None:
            verdicts[i] = unmatched.pop(0)
    return [
        {"nl_assertion": a, **v} for a, v in zip(assertions, verdicts, strict=True) if v is not None
    ]


class NLJudge(EndpointClientMixin):
    """tau2's NL-assertion judge (see the module docstring).

    Args:
        client: an object with ``chat.completions.create``; None makes an
            ``AsyncOpenAI`` from the fields below.
        base_url: the endpoint's base URL; None is OpenAI's.
        model: the model name sent with each call (required for an endpoint).
        api_key: the endpoint's key; None reads ``OPENAI_API_KEY``, else ``"EMPTY"``.
        llm_args: extra ``create`` arguments (``temperature``...).
        cache: record/replay every call (``replay`` needs no model at all).

    Raises:
        ValueError: when no model can be reached and the cache does not replay.
    """

    endpoint_role = "NL-assertion judge"

    def __init__(
        self,
        *,
        client: Any = None,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        llm_args: dict[str, Any] | None = None,
        cache: CallCache | None = None,
    ) -> None:
        if client is None and model is None and (cache is None or cache.mode != "replay"):
            raise ValueError(
                "the NL-assertion judge needs a model: judge={'model': ..., 'base_url': ...} "
                "or {'client': ChatClient(...).untracked()}, or a replay cache "
                "(user_cache=..., user_cache_mode='replay')"
            )
        self.client = client
        self.base_url, self.model, self.api_key = base_url, model, api_key
        self.llm_args = dict(llm_args or {})
        self.cache = cache
        self._owns_client = False

    @classmethod
    def from_config(cls, config: str | dict[str, Any], *, cache: CallCache | None) -> NLJudge:
        """Build from a ``judge={...}`` dict (keys: :data:`CONFIG_KEYS`); ``"llm"`` is ``{}``."""
        if isinstance(config, str):
            if config != "llm":
                raise ValueError(f"judge must be a config dict or 'llm', got {config!r}")
            config = {}
        unknown = set(config) - CONFIG_KEYS
        if unknown:
            raise ValueError(
                f"unknown judge config keys {sorted(unknown)}; valid: {sorted(CONFIG_KEYS)}"
            )
        return cls(cache=cache, **config)

    async def judge(
        self, task_id: str, messages: list[dict[str, Any]], assertions: list[str]
    ) -> list[dict[str, Any]]:
        """Per-assertion verdicts for a finished conversation (recorded/replayed when cached).

        Raises:
            JudgeError: the reply is malformed; the message names the task.
        """
        request = judge_request(messages, assertions)

        async def call_model() -> dict[str, Any]:
            return await self._generate(request)

        if self.cache is None:
            out = await call_model()
        else:
            out = await self.cache.call(CALL_KIND, task_id, 0, request, call_model)
        text = out.get("content") if isinstance(out, dict) else None
        try:
            return parse_verdicts(text, assertions)
        except JudgeError as e:
            raise JudgeError(
                f"NL-assertion judge reply for task {task_id!r} is malformed: {e}; "
                f"reply: {str(text)[:500]!r}"
            ) from None

    async def _generate(self, request: dict[str, Any]) -> dict[str, Any]:
        client = self._client()
        completion = await client.chat.completions.create(
            model=self.model or "tau2-judge", **request, **self.llm_args
        )
        return {"content": completion.choices[0].message.content}


__all__ = [
    "CALL_KIND",
    "CONFIG_KEYS",
    "SYSTEM_PROMPT",
    "JudgeError",
    "NLJudge",
    "conversation_text",
    "judge_request",
    "parse_verdicts",
]
