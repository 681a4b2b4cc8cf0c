"""The OpenAI-compatible HTTP server: shared ``/v1`` routes and per-episode session routes.

Routes (``<v1>`` is ``/v1`` for the shared routes and ``/sessions/<id>/v1`` for a
session's; see ``docs/serving.md``):

- ``POST <v1>/chat/completions``: :mod:`areal_env.serving.chat`;
- ``POST <v1>/completions``: :mod:`areal_env.serving.completions`;
- ``GET <v1>/models``, ``GET <v1>/models/<name>``: the one model served;
- ``POST /sessions/<id>/v1/reward``: ``{"reward": 1.0, "info": {...}}``, the
  agent's own reward for its episode;
- ``GET /health``: ``{"status": "ok", "sessions": N, "version": V}``, no key needed.

The shared routes serve the model for inference and record nothing (the chat
client's :meth:`~areal_env.inference.chat_client.ChatClient.untracked`): a user
simulator, an eval, a person trying the model. They take ``api_key`` when the
server was given one, any key or none otherwise, but never a session's key
(403): an agent pointed at the wrong base URL would silently train on nothing.

Every refusal is an OpenAI error object with a 4xx status
(:mod:`areal_env.serving.errors`), and an unexpected exception in a handler is a
logged 500: no request takes the server down. Everything runs on the event loop
of the engine (a ``LocalEngine`` is bound to the loop that first used it), so a
run starts the server in its own loop:
``async with OpenAIServer(client, port=0) as server: ...``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from jinja2 import TemplateError
from openai.types.chat import ChatCompletion

from areal_env.errors import InferenceError
from areal_env.http_service import HTTPService
from areal_env.inference.chat_client import ChatClient
from areal_env.serving.chat import chat_body, chat_chunks, model_card, parse_chat_request
from areal_env.serving.completions import (
    TextAnswer,
    TextRecorder,
    TextRequest,
    parse_text_request,
    text_body,
    text_chunks,
)
from areal_env.serving.errors import (
    APIError,
    bad_request,
    forbidden,
    from_call_error,
    not_found,
    server_error,
    unauthorized,
)
from areal_env.serving.sessions import Session, SessionManager, is_retry

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024**2
"""Largest request body accepted (long multi-turn histories are big JSON)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OpenAIServer(HTTPService):
    """Serves a :class:`ChatClient`'s engine over OpenAI's HTTP API, with per-episode sessions.

    Args:
        client: the shared chat client (engine, tokenizer, default sampling); the
            shared routes use its untracked client, and a session opened without
            an episode client gets ``client.episode()``.
        host: interface to listen on.
        port: TCP port; 0 picks a free one (read :attr:`url` after :meth:`start`).
        api_key: the key the shared ``/v1`` routes require; None: any key or none.
        public_url: the ``http://host:port`` written into session base URLs, when
            the bound address is not the one agents reach (a container, 0.0.0.0).

    Example:
        >>> import asyncio
        >>> from areal_env.testing import ScriptedEngine, char_tokenizer
        >>> async def demo():
        ...     tok = char_tokenizer()
        ...     async with OpenAIServer(ChatClient(ScriptedEngine(replies=[[5]]), tok)) as server:
        ...         session = server.sessions.open()
        ...         return session.base_url.startswith(server.url + "/sessions/sess-")
        >>> asyncio.run(demo())
        True
    """

    service_name = "OpenAI-compatible server"

    def __init__(
        self,
        client: ChatClient,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        public_url: str | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        self.client = client
        self.api_key = api_key
        self.public_url = public_url.rstrip("/") if public_url else None
        self.sessions = SessionManager(client, lambda: self.url)
        """Open a session per episode: ``server.sessions.open(episode_client)``."""
        self._untracked = client.untracked()
        self._shared_text = TextRecorder(client=client)

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``public_url`` when set, else the bound ``http://host:port``."""
        return self.public_url or self.bound_url

    @property
    def base_url(self) -> str:
        """The shared routes' base URL (``<url>/v1``), for untracked inference."""
        return f"{self.url}/v1"

    def make_app(self) -> web.Application:
        """The aiohttp application, for a runner of one's own."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_as_json])
        r = app.router
        r.add_get("/health", self._health)
        for prefix, guard in (("/v1", self._shared), ("/sessions/{sid}/v1", self._session)):
            r.add_post(f"{prefix}/chat/completions", guard(self._chat))
            r.add_post(f"{prefix}/completions", guard(self._text))
            r.add_get(f"{prefix}/models", guard(self._models))
            r.add_get(f"{prefix}/models/{{model:.+}}", guard(self._model))
        r.add_post("/sessions/{sid}/v1/reward", self._session(self._reward))
        app.on_shutdown.append(self._on_shutdown)
        return app

    @classmethod
    async def launch(cls, client: ChatClient, **kwargs: Any) -> OpenAIServer:
        """A started server: ``await OpenAIServer.launch(client, port=0)``.

        The form a ``ResourceRegistry`` factory takes, so that a run's episodes
        share one server and the registry stops it at the end::

            server = await resources.aget("openai_server", lambda: OpenAIServer.launch(client))
        """
        server = cls(client, **kwargs)
        await server.start()
        return server

    async def stop(self) -> None:
        """Close every session, then stop listening."""
        await self.sessions.aclose()
        await super().stop()

    aclose = stop
    """So that a ``ResourceRegistry`` can own a server (it calls ``aclose``)."""

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.sessions.aclose()

    # ---- auth -------------------------------------------------------------------------------

    def _shared(self, handler: Callable[..., Awaitable[web.StreamResponse]]) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            key = _bearer(request)
            if key is not None and self.sessions.owner_of(key) is not None:
                raise forbidden(
                    "this API key belongs to a session: use the session's base_url "
                    "(/sessions/<id>/v1), or calls are not recorded"
                )
            if self.api_key is not None and key != self.api_key:
                raise unauthorized("missing or wrong API key for the shared /v1 routes")
            return await handler(request, None)

        return guarded

    def _session(self, handler: Callable[..., Awaitable[web.StreamResponse]]) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            session = self.sessions.authorize(request.match_info["sid"], _bearer(request))
            return await handler(request, session)

        return guarded

    # ---- handlers ---------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        version = getattr(self.client.engine, "version", None)
        return web.json_response(
            {"status": "ok", "sessions": len(self.sessions), "version": version}
        )

    async def _models(self, request: web.Request, session: Session | None) -> web.Response:
        return web.json_response({"object": "list", "data": [model_card(self.client.model_name)]})

    async def _model(self, request: web.Request, session: Session | None) -> web.Response:
        name = request.match_info["model"]
        if name != self.client.model_name:
            raise not_found(
                f"model {name!r} is not served here; this server serves {self.client.model_name!r}"
            )
        return web.json_response(model_card(name))

    async def _chat(self, request: web.Request, session: Session | None) -> web.StreamResponse:
        raw, body = await _json_body(request)
        chat = parse_chat_request(body)
        creator = self._untracked if session is None else session.episode

        async def work() -> list[ChatCompletion]:
            calls = [creator.chat.completions.create(**chat.kwargs) for _ in range(chat.n)]
            return list(await asyncio.gather(*calls))

        completions = await _generate(request, session, raw, work)
        if chat.stream:
            tokenizer = creator.shared.tokenizer
            return await _sse(request, chat_chunks(completions, tokenizer, chat))
        return web.json_response(chat_body(completions, token_ids=chat.return_token_ids))

    async def _text(self, request: web.Request, session: Session | None) -> web.StreamResponse:
        raw, body = await _json_body(request)
        recorder = self._shared_text if session is None else session.text
        client = recorder.client  # a session's episode may come from another chat client
        text = parse_text_request(body, client)

        async def work() -> TextAnswer:
            calls = [recorder.complete(p, text.sampling) for p in _each(text)]
            return TextAnswer(results=list(await asyncio.gather(*calls)))

        answer = await _generate(request, session, raw, work)
        if text.stream:
            return await _sse(request, text_chunks(answer, client, text, client.model_name))
        return web.json_response(text_body(answer, client, text, client.model_name))

    async def _reward(self, request: web.Request, session: Session | None) -> web.Response:
        assert session is not None  # a session route
        _, body = await _json_body(request)
        if "reward" not in body:
            raise bad_request("the body must hold a 'reward' number", param="reward")
        session.post_reward(body["reward"], body.get("info"))
        return web.json_response({"session": session.id, "reward": session.reward})


def _each(text: TextRequest) -> Iterable[Any]:
    """Every prompt ``n`` times, in choice order (prompt-major, as OpenAI numbers choices)."""
    return [p for p in text.prompts for _ in range(text.n)]


async def _generate(
    request: web.Request,
    session: Session | None,
    raw: bytes,
    work: Callable[[], Awaitable[Any]],
) -> Any:
    """Run ``work`` (in the session, with retry replay) and map its errors to API errors."""
    try:
        if session is None:
            return await work()
        fingerprint = hashlib.sha256(request.path.encode() + b"\0" + raw).hexdigest()
        return await session.run(
            fingerprint,
            work,
            retry=is_retry(request.headers),
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
    except APIError:
        raise
    except (ValueError, TypeError) as e:  # argument checks, context length, bad ids
        raise from_call_error(e) from None
    except TemplateError as e:
        raise bad_request(
            f"the chat template cannot render these messages: {e}", param="messages"
        ) from None
    except (InferenceError, RuntimeError) as e:  # engine aborted, closed or failed
        raise server_error(f"inference failed: {e}", status=503) from None


async def _json_body(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(
            f"we could not parse the JSON body of your request ({e}); send a JSON object",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return raw, body


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _sse(request: web.Request, chunks: Iterable[dict[str, Any]]) -> web.StreamResponse:
    """Send ``chunks`` as server-sent events, then ``data: [DONE]``."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        for chunk in chunks:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionError:  # the client went away mid-stream; the completion is recorded
        logger.debug("client left during the stream of %s", request.path)
    return response


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as an OpenAI error object; an unexpected one is logged and a 500."""
    try:
        return await handler(request)
    except APIError as e:
        return web.json_response(e.body(), status=e.status)
    except web.HTTPException as e:  # aiohttp's own: 404 route, 405 method, 413 body size
        if e.status < 400:
            raise
        error = APIError(
            e.status,
            f"{e.reason}: {request.method} {request.path}",
            code=e.reason.lower().replace(" ", "_"),
        )
        return web.json_response(error.body(), status=e.status)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        logger.exception("unexpected error serving %s %s", request.method, request.path)
        return web.json_response(server_error(f"internal error: {e!r}").body(), status=500)


__all__ = ["MAX_BODY_BYTES", "OpenAIServer"]
