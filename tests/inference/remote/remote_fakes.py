"""Fake vLLM and SGLang servers that follow the real routes and shapes.

The "model" is arithmetic, so tests can check provenance exactly:

* the next token is ``(7 * last + 3) % VOCAB``: a request continued from
  prompt + tokens so far yields the same tokens as one never interrupted;
* every token's logprob is ``-(w + 1) / 10`` where ``w`` is the id of the
  loaded weights (0 for the base model, ``N`` for a folder named ``v00000N``):
  the weights that produced a token can be read off its logprob.

Behaviour knobs: ``token_delay`` (seconds per token), ``arrival_delay``
(seconds before a request reaches the "scheduler", to race weight updates),
``hang`` (every route sleeps forever), ``fail_next`` (HTTP status for the next
N generate calls), ``stop()``/``start()`` to kill and restart (a restart
forgets loaded weights, like a real server started from the base model).
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
    ) -> None:
        super().__init__(port=port)
        self.kind = kind
        self.token_delay = token_delay
        self.arrival_delay = arrival_delay
        self.probe_ids = PROBE_IDS if probe_ids is None else probe_ids
        self.hang = False
        self.fail_next: list[int] = []
        self.requests: list[dict[str, Any]] = []
        self.loads: list[str] = []
        self._reset_state()

    def _reset_state(self) -> None:
        self.weights = 0
        self.weight_version: str | None = "default" if self.kind == "vllm" else None
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
        else:
            add.add_get("/model_info", self._model_info)
            add.add_post("/generate", self._generate)
            add.add_post("/pause_generation", self._pause)
            add.add_post("/continue_generation", self._resume)
            add.add_post("/update_weights_from_disk", self._update_from_disk)
        return app

    @web.middleware
    async def _hang_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.hang:
            await asyncio.sleep(3600)
        return await handler(request)

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

    async def _run(self, prompt: list[int], max_tokens: int, stops: list[int]) -> tuple:
        if self.arrival_delay:
            await asyncio.sleep(self.arrival_delay)
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
            logprobs.append(weights_logprob(self.weights))
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
        ids, logprobs, reason = await self._run(
            prompt, body["max_tokens"], body.get("stop_token_ids", [])
        )
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
