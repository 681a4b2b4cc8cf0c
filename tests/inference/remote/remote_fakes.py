"""Fake vLLM and SGLang servers that follow the real routes and shapes.

The "model" is arithmetic, so tests can check provenance exactly:

* the next token is ``(7 * last + 3) % VOCAB``: a request continued from
  prompt + tokens so far yields the same tokens as one never interrupted;
* every token's logprob is ``-(w + 1) / 10`` where ``w`` is the id of the
  loaded weights (0 for the base model, ``N`` for a folder named ``v00000N``):
  the weights that produced a token can be read off its logprob.

Behaviour knobs: ``token_delay`` (seconds per token), ``arrival_delay``
(seconds before a request reaches the "scheduler", to race weight updates),
``hang`` (every route waits until it is set back to False), ``fail_next`` (HTTP status for the next
N generate calls), ``stop()``/``start()`` to kill and restart (a restart
forgets loaded weights, like a real server started from the base model).

vLLM's run-time LoRA: with ``lora=True`` (the server's
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` exist; an adapter loaded from ``.../v00000N`` makes
the requests that name it as ``model`` generate with weights ``N``; an unknown
``model`` is a 404, as in vLLM. ``lora_enabled=False`` with ``lora=True``
mimics a server started without ``--enable-lora`` (loads fail with vLLM's text).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from areal_env.http_service import HTTPService

VOCAB = 101
PROBE_IDS = [1, 2, 3]


def next_token(last: int) -> int:
    return (7 * last + 3) % VOCAB


def weights_logprob(weights_id: int) -> float:
    return -(weights_id + 1) / 10


def weights_id(path: str) -> int:
    match = re.search(r"v0*(\d+)$", path.rstrip("/"))
    if match is None:
        raise ValueError(f"fake server cannot read weights from {path}")
    return int(match.group(1))


class FakeServer(HTTPService):
    """One fake server; ``kind`` picks the vLLM or the SGLang dialect."""

    service_name = "fake inference server"

    def __init__(
        self,
        kind: str = "vllm",
        *,
        port: int = 0,
        token_delay: float = 0.0,
        arrival_delay: float = 0.0,
        probe_ids: list[int] | None = None,
        lora: bool = False,
        lora_enabled: bool = True,
    ) -> None:
        super().__init__(port=port)
        self.kind = kind
        self.token_delay = token_delay
        self.arrival_delay = arrival_delay
        self.probe_ids = PROBE_IDS if probe_ids is None else probe_ids
        self._unhung = asyncio.Event()
        self._unhung.set()
        self.fail_next: list[int] = []
        self.requests: list[dict[str, Any]] = []
        self.loads: list[str] = []
        self.lora = lora
        self.lora_enabled = lora_enabled
        self.adapter_loads: list[tuple[str, str]] = []
        self.adapter_unloads: list[str] = []
        self._reset_state()

    def _reset_state(self) -> None:
        self.weights = 0
        self.weight_version: str | None = "default" if self.kind == "vllm" else None
        self.adapters: dict[str, int] = {}
        self.paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._abort_epoch = 0

    async def start(self) -> str:
        url = await super().start()
        self.port = int(url.rsplit(":", 1)[1])  # a restart comes back on the same port
        return url

    async def restart(self) -> str:
        """Come back on the same port with the base weights (as a relaunched server)."""
        self._reset_state()
        return await self.start()

    # ---- app ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._hang_middleware])
        add = app.router
        add.add_get("/health", self._health)
        add.add_post("/tokenize", self._tokenize)
        if self.kind == "vllm":
            add.add_get("/v1/models", self._models)
            add.add_post("/v1/completions", self._completions)
            add.add_post("/pause", self._pause)
            add.add_post("/resume", self._resume)
            add.add_post("/collective_rpc", self._collective_rpc)
            add.add_post("/update_weight_version", self._update_weight_version)
            add.add_get("/weight_info", self._weight_info)
            if self.lora:
                add.add_post("/v1/load_lora_adapter", self._load_lora)
                add.add_post("/v1/unload_lora_adapter", self._unload_lora)
        else:
            add.add_get("/model_info", self._model_info)
            add.add_post("/generate", self._generate)
            add.add_post("/pause_generation", self._pause)
            add.add_post("/continue_generation", self._resume)
            add.add_post("/update_weights_from_disk", self._update_from_disk)
        return app

    @web.middleware
    async def _hang_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        await self._unhung.wait()  # released by hang = False, so stop() need not wait
        return await handler(request)

    @property
    def hang(self) -> bool:
        """Whether every route waits (until this is set back to False)."""
        return not self._unhung.is_set()

    @hang.setter
    def hang(self, value: bool) -> None:
        if value:
            self._unhung.clear()
        else:
            self._unhung.set()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _tokenize(self, request: web.Request) -> web.Response:
        return web.json_response({"tokens": self.probe_ids, "count": len(self.probe_ids)})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "policy", "max_model_len": 4096}]})

    async def _model_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "model_path": "/models/policy",
                "is_generation": True,
                "weight_version": self.weight_version,
            }
        )

    async def _weight_info(self, request: web.Request) -> web.Response:
        return web.json_response({"weight_version": self.weight_version})

    async def _pause(self, request: web.Request) -> web.Response:
        self.paused = True
        self._resumed.clear()
        self._abort_epoch += 1
        return web.json_response({"status": "paused"})

    async def _resume(self, request: web.Request) -> web.Response:
        self.paused = False
        self._resumed.set()
        return web.json_response({"status": "resumed"})

    async def _collective_rpc(self, request: web.Request) -> web.Response:
        body = await request.json()
        path = body["kwargs"]["weights_path"]
        self.weights = weights_id(path)
        self.loads.append(path)
        return web.json_response({"results": [None]})

    async def _load_lora(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, path = body["lora_name"], body["lora_path"]
        if not self.lora_enabled:
            message = "LoRA is not enabled. Use --enable-lora to enable LoRA."
            return web.json_response({"error": {"message": message, "code": 500}}, status=500)
        if name in self.adapters and not body.get("load_inplace", False):
            message = f"The lora adapter '{name}' has already been loaded."
            return web.json_response({"error": {"message": message, "code": 400}}, status=400)
        self.adapters[name] = weights_id(path)
        self.adapter_loads.append((name, path))
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["lora_name"]
        if name not in self.adapters:
            message = f"The lora adapter '{name}' cannot be found."
            return web.json_response({"error": {"message": message, "code": 404}}, status=404)
        del self.adapters[name]
        self.adapter_unloads.append(name)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    def _weights_of(self, model: str | None) -> int:
        """The weights a request for ``model`` runs on; KeyError for an unknown model."""
        if model is None or model == "policy":
            return self.weights
        return self.adapters[model]

    async def _update_weight_version(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.weight_version = body["new_version"]
        return web.json_response({"success": True})

    async def _update_from_disk(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            self.weights = weights_id(body["model_path"])
        except ValueError as e:
            return web.json_response({"success": False, "message": str(e)})
        self.loads.append(body["model_path"])
        self.weight_version = body.get("weight_version")
        return web.json_response({"success": True, "message": "ok"})

    # ---- generation -----------------------------------------------------------------

    async def _run(
        self, prompt: list[int], max_tokens: int, stops: list[int], model: str | None = None
    ) -> tuple:
        if self.arrival_delay:
            await asyncio.sleep(self.arrival_delay)
        self._weights_of(model)  # the model name is resolved on arrival (KeyError: unknown)
        await self._resumed.wait()  # held while paused, like the real servers
        epoch = self._abort_epoch
        ids: list[int] = []
        logprobs: list[float] = []
        last = prompt[-1]
        reason = "length"
        for _ in range(max_tokens):
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            if self._abort_epoch != epoch:
                reason = "abort"
                break
            last = next_token(last)
            ids.append(last)
            logprobs.append(weights_logprob(self._weights_of(model)))
            if last in stops:
                reason = "stop"
                break
        return ids, logprobs, reason

    def _failure(self) -> web.Response | None:
        if self.fail_next:
            status = self.fail_next.pop(0)
            return web.json_response(
                {"error": {"message": f"fake failure {status}"}}, status=status
            )
        return None

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        failure = self._failure()
        if failure is not None:
            return failure
        prompt = body["prompt"]
        if len(prompt) > 4000:
            return web.json_response(
                {"error": {"message": "This model's maximum context length is 4096 tokens"}},
                status=400,
            )
        try:
            ids, logprobs, reason = await self._run(
                prompt, body["max_tokens"], body.get("stop_token_ids", []), body.get("model")
            )
        except KeyError:
            message = f"The model `{body.get('model')}` does not exist."
            return web.json_response({"error": {"message": message, "code": 404}}, status=404)
        choice = {
            "index": 0,
            "text": "",
            "token_ids": ids,
            "logprobs": {"token_logprobs": logprobs, "tokens": [str(i) for i in ids]},
            "finish_reason": reason,
        }
        return web.json_response({"id": "cmpl-1", "choices": [choice]})

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        failure = self._failure()
        if failure is not None:
            return failure
        params = body["sampling_params"]
        ids, logprobs, reason = await self._run(
            body["input_ids"], params["max_new_tokens"], params.get("stop_token_ids", [])
        )
        finish: dict[str, Any] = {"type": reason}
        meta = {
            "id": body.get("rid"),
            "finish_reason": finish,
            "output_token_logprobs": [[lp, t, None] for lp, t in zip(logprobs, ids, strict=True)],
            "weight_version": self.weight_version,
        }
        return web.json_response({"text": "", "output_ids": ids, "meta_info": meta})
