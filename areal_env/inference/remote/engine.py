"""RemoteEngine: the InferenceEngine protocol over vLLM or SGLang servers.

Token ids go out, token ids with their logprobs and weight versions come back,
as from the local engine. On top of one server's HTTP dialect (``api.py``) and
the choice of server (``router.py``) this module owns four things:

**Versions that cannot lie (AReaL #1569).** A chunk of generation is labelled
with the version read *before* it is sent. A weight update bumps an *epoch*
right before any server loads. A chunk that returns in the epoch it left in
was generated entirely by the weights it is labelled with. A chunk that
returns after an update began is kept only if that update's pause aborted it
(it ran before the load): the engine counts its pauses, and an aborted chunk is
trusted only while the first pause after its send is the latest (a chunk that
reached a server after a load and is aborted by the *next* pause holds the
newer weights' tokens). Any other such chunk may hold tokens from either side
of the load, so it is discarded and generated again (counted).

**Interruptible generation (AReaL's design).** With ``update_mode=interrupt``
``pause()`` aborts what the servers are generating instead of waiting for the
longest completion; each interrupted request waits for the update and then
continues from prompt + tokens so far under the new weights, so one request can
carry two versions, each token the one that produced it. ``drain`` waits for
in-flight chunks to finish instead.

**Many servers.** Requests spread by load with episode affinity; a call that
fails on one server is retried on another (with backoff, counted) and only then
fails its episode, never the run. A health monitor takes servers that stop
answering out of rotation (cancelling their calls, which go elsewhere) and lets
them back only after they hold the current weights: a server restarted with old
weights reports another version, so it reloads the latest before it is trusted.

**Weights from disk.** ``update_weights`` takes a folder of HF-format weights
and loads it on every available server; the version moves only once all of
them hold it. (NCCL broadcast for GPU clusters belongs behind the same call:
``weight_transports`` would then list it first.)

**LoRA adapters (vLLM, ``lora_adapters``).** A LoRA run need not ship merged
weights: an update that holds only a peft adapter is loaded on every server
as ``policy-v<version>`` (``/v1/load_lora_adapter``) and, once all hold it, new
chunks ask for that name as their ``model``, read together with the version,
so an interrupted request continues on the new adapter and each token keeps
the right version. The previous adapter is unloaded only once no chunk in
flight still names it (one sent just before the pause may reach the server
after the update), and a rejoining server loads the latest adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import aiohttp

from areal_env.errors import InferenceError
from areal_env.inference.engine import WeightTransport
from areal_env.inference.remote.api import (
    SERVER_APIS,
    Chunk,
    ServerAPI,
    ServerError,
    ServerStartupError,
)
from areal_env.inference.remote.router import Router, Server
from areal_env.types import GenerationRequest, GenerationResult, WeightUpdate

logger = logging.getLogger(__name__)

UpdateMode = Literal["interrupt", "drain"]

KEEPALIVE_S = 3.0
"""Seconds an idle connection is kept; below vLLM's and SGLang's uvicorn keep-alive (5 s)."""

Launcher = Callable[[], Awaitable[tuple[list[str], Callable[[], Any]]]]
"""Starts servers; returns their URLs and a callable that stops them."""


@dataclass(kw_only=True, slots=True)
class RemoteEngineConfig:
    """Timeouts, retries and health checks of a RemoteEngine."""

    request_timeout: float = 600.0
    """Seconds one generate call may take before it counts as failed."""
    max_retries: int = 3
    """Failed calls of one request retried (on other servers first) before its episode fails."""
    retry_backoff: float = 0.5
    """Seconds before the first retry; doubles each time."""
    health_interval: float = 5.0
    """Seconds between health checks of every server."""
    health_timeout: float = 5.0
    """A health check slower than this fails (a hung server is a dead one)."""
    unhealthy_after: int = 2
    """Consecutive failed health checks that take a server out of rotation: one slow
    answer from a saturated server is not a death."""
    connect_timeout: float = 120.0
    """How long start-up waits for attached servers to answer their health check."""

    def __post_init__(self) -> None:
        for name in ("request_timeout", "health_interval", "health_timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"inference.remote.{name} must be > 0, got {getattr(self, name)}")
        if self.unhealthy_after < 1:
            raise ValueError(
                f"inference.remote.unhealthy_after must be >= 1, got {self.unhealthy_after}"
            )
        if self.max_retries < 0 or self.retry_backoff < 0:
            raise ValueError("inference.remote.max_retries and retry_backoff must be >= 0")


@dataclass(slots=True)
class _Pending:
    """One agenerate call while it runs: its current chunk and whether it was aborted."""

    task: asyncio.Task[Chunk] | None = None
    aborted: bool = False


@dataclass(slots=True)
class EngineStats:
    """Counters a run logs: how often the remote path had to work around trouble."""

    chunks: int = 0
    retries: int = 0
    interrupted: int = 0
    discarded_chunks: int = 0
    discarded_tokens: int = 0
    server_downs: int = 0
    server_rejoins: int = 0
    load_failures: int = 0
    failed_requests: int = 0


class RemoteEngine:
    """Generates on one or more vLLM / SGLang servers.

    Args:
        kind: ``"vllm"`` or ``"sglang"``.
        urls: servers to attach to (empty when ``launcher`` starts them).
        config: timeouts, retries, health checks.
        update_mode: ``interrupt`` (abort and continue) or ``drain``.
        probe_ids: our tokenizer's ids of ``api.PROBE_TEXT``, to check each server
            serves the same model; None skips the check.
        launcher: starts servers at :meth:`start` and stops them at :meth:`close`.
        version: the version of the weights the servers start with.
        lora_adapters: updates may be LoRA adapters applied on the servers' base
            model (vLLM only; servers need run-time LoRA, checked at start).

    Raises:
        ValueError: an unknown kind or update mode, no servers, or ``lora_adapters``
            on a kind that cannot load adapters.
    """

    def __init__(
        self,
        kind: str,
        urls: Sequence[str] = (),
        config: RemoteEngineConfig | None = None,
        *,
        update_mode: UpdateMode = "interrupt",
        probe_ids: Sequence[int] | None = None,
        launcher: Launcher | None = None,
        version: int = 0,
        lora_adapters: bool = False,
    ) -> None:
        if kind not in SERVER_APIS:
            raise ValueError(f"unknown server kind {kind!r}; known: {sorted(SERVER_APIS)}")
        if update_mode not in ("interrupt", "drain"):
            raise ValueError(f"update_mode must be 'interrupt' or 'drain', got {update_mode!r}")
        if lora_adapters and kind != "vllm":
            raise ValueError(
                f"inference.lora_adapters=true needs inference.backend=vllm, got {kind!r} "
                "(SGLang adapters are not supported here)"
            )
        if not urls and launcher is None:
            raise ValueError(
                "a remote engine needs servers: set inference.servers=[http://...] or "
                "inference.launch=true"
            )
        self.kind = kind
        self.config = config or RemoteEngineConfig()
        self.update_mode: UpdateMode = update_mode
        self.stats = EngineStats()
        self._urls = list(urls)
        self._probe_ids = None if probe_ids is None else list(probe_ids)
        self._launcher = launcher
        self._stop_servers: Callable[[], Any] | None = None
        self._servers: list[Server] = []
        self._router: Router | None = None
        self._version = version
        self._initial_version = version
        self._epoch = 0
        self._pauses = 0
        """Pauses begun so far: tells which pause aborted a returning chunk."""
        self._latest_path: str | None = None
        self.lora_adapters = lora_adapters
        self._adapter: str | None = None
        """Name of the adapter new chunks generate with (None: the base weights)."""
        self._latest_adapter = False
        self._base_path: str | None = None
        """Full weights under the adapters (None: the servers' own start-up model)."""
        self._base_pushed = False
        self._adapter_users: dict[str | None, int] = {}
        self._loaded: dict[Server, set[str]] = {}
        self._paused = False
        self._closed = False
        self._pending: dict[str, _Pending] = {}
        self._sends = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()
        self._started = False

    # ---- protocol -------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Weight version that new chunks are labelled with."""
        return self._version

    @property
    def weight_transports(self) -> tuple[WeightTransport, ...]:
        """Servers in other processes load HF-format folders (or LoRA adapters) from disk."""
        return ("lora_adapter", "disk") if self.lora_adapters else ("disk",)

    @property
    def needs_base(self) -> bool:
        """The next adapter update should carry the base weights (``WeightUpdate.base_path``).

        True until the first adapter update of this engine brought one: the servers
        start on the model folder, the trainer's base may be another (warm-started,
        resumed), and an adapter is only right on its own base.
        """
        return self.lora_adapters and not self._base_pushed

    @property
    def adapter(self) -> str | None:
        """The LoRA adapter new chunks generate with (None: the servers' base weights)."""
        return self._adapter

    @property
    def servers(self) -> list[Server]:
        """The servers and their state (empty until :meth:`start`)."""
        return list(self._servers)

    def metrics(self) -> dict[str, float]:
        """Cumulative counters for the run's metrics (``inference/<name>``)."""
        out = {f"inference/{k}": float(v) for k, v in asdict(self.stats).items()}
        out["inference/servers_available"] = float(sum(s.available for s in self._servers))
        return out

    async def start(self) -> None:
        """Launch (if asked), wait for and check every server; idempotent.

        Raises:
            ServerStartupError: naming the server that is unreachable, of another
                kind, or serves a model with another tokenizer.
        """
        self._bind_loop()
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise RuntimeError("RemoteEngine is closed")
            if self._launcher is not None:
                urls, self._stop_servers = await self._launcher()
                self._urls = [*self._urls, *urls]
            apis = [
                SERVER_APIS[self.kind](u, timeout=self.config.request_timeout) for u in self._urls
            ]
            await asyncio.gather(*(self._connect(api) for api in apis))
            self._servers = [Server(api) for api in apis]
            self._router = Router(self._servers)
            self._started = True
            logger.info(
                "%s engine on %d server(s): %s", self.kind, len(apis), ", ".join(self._urls)
            )
        self._ensure_monitor()

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one completion, across weight updates and server failures.

        Raises:
            InferenceError: every retry failed, or a server refused the request
                (its own error text included); the episode fails, not the run.
        """
        await self.start()
        pending = _Pending()
        rid = request.request_id
        self._pending[rid] = pending
        ids: list[int] = []
        logprobs: list[float] = []
        versions: list[int] = []
        budget = request.sampling.max_new_tokens
        tried: set[Server] = set()
        retries, part = 0, 0
        last_error: Exception | None = None
        try:
            while True:
                if pending.aborted:
                    return _result(request, ids, logprobs, versions, "abort")
                await self._gate.wait()
                if pending.aborted:
                    return _result(request, ids, logprobs, versions, "abort")
                assert self._router is not None
                server = self._router.pick(request.session_id, exclude=tried)
                if server is None and tried:
                    tried.clear()  # every available server was tried: go round again
                    server = self._router.pick(request.session_id)
                if server is None:
                    retries += 1
                    if retries > self.config.max_retries:
                        raise self._give_up(request, retries, last_error or "no server available")
                    await self._backoff(retries)
                    continue
                # fixed before the send; the adapter always matches the version
                version, epoch, adapter = self._version, self._epoch, self._adapter
                pauses = self._pauses
                part += 1
                try:
                    chunk = await self._send(server, pending, request, ids, budget, part, adapter)
                except asyncio.CancelledError:
                    if _cancelling():
                        raise  # our caller cancelled us
                    if pending.aborted:
                        return _result(request, ids, logprobs, versions, "abort")
                    # The server was taken out of rotation mid-call: go elsewhere.
                    tried.add(server)
                    last_error = InferenceError(f"{server.url} went down mid-request")
                    continue
                except ServerError as e:
                    server.failures += 1
                    last_error = e
                    if not e.retryable:
                        raise self._give_up(request, retries, e) from e
                    retries += 1
                    if retries > self.config.max_retries:
                        raise self._give_up(request, retries, e) from e
                    self.stats.retries += 1
                    tried.add(server)
                    self._check_soon(server)
                    await self._backoff(retries)
                    continue
                if not self._trust(chunk, epoch, pauses):
                    continue
                if chunk.finish_reason == "abort" and self._epoch == epoch:
                    # Aborted with no update of ours: the server's doing; keep the
                    # tokens (they are this version's) and retry the rest, counted.
                    retries += 1
                    last_error = InferenceError(f"{server.url} aborted the request")
                    if retries > self.config.max_retries:
                        raise self._give_up(request, retries, last_error)
                    self.stats.retries += 1
                    await self._backoff(retries)
                ids += chunk.output_ids
                logprobs += chunk.output_logprobs
                versions += [version] * len(chunk.output_ids)
                if chunk.finish_reason != "abort" or len(ids) >= budget:
                    reason = chunk.finish_reason if chunk.finish_reason != "abort" else "length"
                    return _result(request, ids, logprobs, versions, reason)
                self.stats.interrupted += 1  # continues from prompt + tokens so far
        finally:
            self._pending.pop(rid, None)

    async def update_weights(self, update: WeightUpdate) -> None:
        """Load ``update.path`` on every available server, then move the version.

        Servers that fail to load are taken out of rotation (they rejoin after
        reloading); the update fails only when no server could load it. With
        ``update.adapter`` the folder is a LoRA adapter, loaded as
        ``policy-v<version>``; new chunks generate with it from then on.

        Raises:
            ValueError: the update is a state dict (servers load from disk), or an
                adapter for an engine without ``lora_adapters``.
            RuntimeError: no server loaded the weights.
        """
        if update.path is None:
            raise ValueError("a remote engine loads weights from disk: give WeightUpdate a path")
        if update.adapter and not self.lora_adapters:
            raise ValueError(
                "a LoRA adapter update needs inference.lora_adapters=true (servers started "
                "with run-time LoRA)"
            )
        name = adapter_name(update.version) if update.adapter else None
        await self.start()
        async with self._update_lock:
            was_paused = self._paused
            if not was_paused:
                await self.pause()
            try:
                self._epoch += 1  # from here on, returning chunks may straddle the load
                targets = [s for s in self._servers if s.healthy]
                results = await asyncio.gather(
                    *(self._load(s, update, name) for s in targets),
                    return_exceptions=True,
                )
                errors = {s.url: r for s, r in zip(targets, results, strict=True) if r is not None}
                if len(errors) == len(targets):
                    raise RuntimeError(
                        f"no inference server loaded weights v{update.version} from "
                        f"{update.path}: {errors or 'no healthy server'}"
                    )
                self._version = update.version
                self._adapter = name
                self._latest_path = update.path
                self._latest_adapter = update.adapter
                if update.base_path is not None:
                    self._base_path, self._base_pushed = update.base_path, True
                elif not update.adapter:
                    self._base_path = update.path
                for server in self._servers:
                    server.trusted = server in targets and server.url not in errors
                self._unload_stale()
            finally:
                if not was_paused:
                    await self.resume()

    async def abort(self, request_ids: Collection[str] | None = None) -> int:
        """End requests now; they return their tokens so far with ``finish_reason="abort"``."""
        wanted = self._pending.keys() if request_ids is None else set(request_ids)
        ended = 0
        for rid in list(wanted):
            pending = self._pending.get(rid)
            if pending is None or pending.aborted:
                continue
            pending.aborted = True
            if pending.task is not None:
                pending.task.cancel()  # closing the connection aborts it on the server
            ended += 1
        return ended

    async def pause(self) -> None:
        """Hold new chunks; interrupt (abort) or drain the ones in flight."""
        await self.start()
        if not self._paused:
            self._pauses += 1  # before the abort: the chunks it ends see the new count
        self._paused = True
        self._gate.clear()
        if self.update_mode == "interrupt":
            await asyncio.gather(*(self._pause_server(s) for s in self._servers if s.healthy))
        else:
            await self._drained.wait()

    async def resume(self) -> None:
        """Let held and new chunks go again."""
        self._bind_loop()
        if self.update_mode == "interrupt" and self._started:
            await asyncio.gather(*(self._resume_server(s) for s in self._servers if s.healthy))
        self._paused = False
        self._gate.set()

    async def close(self) -> None:
        """Stop the monitor, close connections, stop servers this engine launched."""
        self._closed = True
        await self.abort()
        for task in list(self._checks):
            task.cancel()
        monitor, self._monitor = self._monitor, None
        if monitor is not None and not monitor.done():
            monitor.cancel()
            if monitor.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await monitor
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None
        stop, self._stop_servers = self._stop_servers, None
        if stop is not None:
            result = stop()
            if asyncio.iscoroutine(result):
                await result

    # ---- one chunk ------------------------------------------------------------------

    async def _send(
        self,
        server: Server,
        pending: _Pending,
        request: GenerationRequest,
        ids: list[int],
        budget: int,
        part: int,
        adapter: str | None = None,
    ) -> Chunk:
        assert self._session is not None
        prompt = [*request.input_ids, *ids]
        call = server.api.generate(
            self._session,
            prompt,
            request.sampling,
            budget - len(ids),
            f"{request.request_id}-{part}",
            adapter,
        )
        task: asyncio.Task[Chunk] = asyncio.ensure_future(call)
        pending.task = task
        server.inflight.add(task)  # type: ignore[arg-type]
        server.requests += 1
        self._sends += 1
        self._drained.clear()
        self.stats.chunks += 1
        self._adapter_users[adapter] = self._adapter_users.get(adapter, 0) + 1
        try:
            return await task
        finally:
            pending.task = None
            server.inflight.discard(task)  # type: ignore[arg-type]
            self._sends -= 1
            if self._sends == 0:
                self._drained.set()
            self._adapter_users[adapter] -= 1
            if not self._adapter_users[adapter]:
                del self._adapter_users[adapter]
            if adapter is not None and adapter != self._adapter:
                self._unload_stale()  # maybe the last chunk of an old adapter

    def _trust(self, chunk: Chunk, epoch: int, pauses: int) -> bool:
        """Whether ``chunk``'s tokens surely came from the version read at its send.

        ``epoch`` and ``pauses`` are the engine's counts read at the send.
        """
        if self._epoch == epoch:
            return True
        if (
            chunk.finish_reason == "abort"
            and self._epoch == epoch + 1
            and self._pauses == pauses + 1
        ):
            return True  # aborted by the pause that preceded the (one) load
        self.stats.discarded_chunks += 1
        self.stats.discarded_tokens += len(chunk.output_ids)
        return False

    def _give_up(
        self, request: GenerationRequest, retries: int, error: Exception | str
    ) -> InferenceError:
        self.stats.failed_requests += 1
        return InferenceError(
            f"request {request.request_id} failed after {retries} retr"
            f"{'y' if retries == 1 else 'ies'} on {self.kind} servers: {error}"
        )

    async def _backoff(self, attempt: int) -> None:
        await asyncio.sleep(self.config.retry_backoff * 2 ** (attempt - 1))

    # ---- servers --------------------------------------------------------------------

    async def _connect(self, api: ServerAPI) -> None:
        """Wait for ``api`` to be healthy, then identify it; ServerStartupError otherwise."""
        assert self._session is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.connect_timeout
        while not await api.healthy(self._session, self.config.health_timeout):
            if loop.time() > deadline:
                raise ServerStartupError(
                    f"{self.kind} server {api.url} did not answer {api.health_path} within "
                    f"{self.config.connect_timeout:.0f} s (inference.servers / inference.launch)"
                )
            await asyncio.sleep(0.5)
        try:
            await api.identify(self._session, self._probe_ids)
            if self.lora_adapters:
                await api.check_lora(self._session)
        except ServerError as e:
            raise ServerStartupError(f"{self.kind} server {e}") from e

    async def _load(self, server: Server, update: WeightUpdate, adapter: str | None) -> None:
        assert self._session is not None and update.path is not None
        try:
            if update.base_path is not None:
                await server.api.load_weights(self._session, update.base_path, update.version)
            await self._load_on(server, update.path, update.version, adapter)
        except ServerError:
            self.stats.load_failures += 1
            self._take_down(server, "failed to load weights")
            raise

    async def _load_on(self, server: Server, path: str, version: int, adapter: str | None) -> None:
        """Load full weights, or the adapter ``adapter``, on one server."""
        assert self._session is not None
        if adapter is None:
            await server.api.load_weights(self._session, path, version)
            return
        await server.api.load_adapter(self._session, adapter, path, version)
        self._loaded.setdefault(server, set()).add(adapter)

    def _unload_stale(self) -> None:
        """Unload, on every server, adapters that are not current and no chunk names."""
        if self._loop is None or self._closed:
            return
        for server, names in self._loaded.items():
            for name in sorted(names):
                if name != self._adapter and self._adapter_users.get(name, 0) == 0:
                    names.discard(name)
                    task = self._loop.create_task(self._unload(server, name))
                    self._checks.add(task)
                    task.add_done_callback(self._checks.discard)

    async def _unload(self, server: Server, name: str) -> None:
        assert self._session is not None
        try:
            await server.api.unload_adapter(self._session, name)
        except ServerError as e:  # harmless: vLLM evicts unused adapters itself
            logger.warning("%s server %s: unloading %s failed: %s", self.kind, server.url, name, e)

    async def _pause_server(self, server: Server) -> None:
        assert self._session is not None
        try:
            await server.api.pause(self._session)
        except ServerError as e:
            self._take_down(server, f"failed to pause: {e}")

    async def _resume_server(self, server: Server) -> None:
        assert self._session is not None
        try:
            await server.api.resume(self._session)
        except ServerError as e:
            self._take_down(server, f"failed to resume: {e}")

    def _take_down(self, server: Server, reason: str) -> None:
        """Out of rotation; its calls are cancelled and retried elsewhere."""
        if server.healthy:
            server.healthy = False
            server.downs += 1
            self.stats.server_downs += 1
            logger.warning("%s server %s out of rotation: %s", self.kind, server.url, reason)
        for task in list(server.inflight):
            task.cancel()

    def _check_soon(self, server: Server) -> None:
        """A call failed: check the server's health now rather than at the next round."""
        if self._loop is not None:
            task = self._loop.create_task(self._check(server))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _check(self, server: Server) -> None:
        assert self._session is not None
        ok = await server.api.healthy(self._session, self.config.health_timeout)
        if not ok:
            server.failed_checks += 1
            if server.failed_checks >= self.config.unhealthy_after:
                self._take_down(server, f"{server.failed_checks} health checks failed in a row")
            return
        server.failed_checks = 0
        if not server.available:
            await self._rejoin(server)

    async def _rejoin(self, server: Server) -> None:
        """Bring a healthy-again server back once it holds the current weights."""
        assert self._session is not None
        if self._paused or self._update_lock.locked():
            return  # an update is under way; the next round will see
        async with self._update_lock:
            try:
                reported = await server.api.weight_version(self._session)
                current = str(self._version)
                fresh = reported in (None, "default") and self._version == self._initial_version
                if reported != current and not fresh:
                    if self._latest_path is None:
                        raise ServerError(
                            server.url,
                            f"reports weights {reported!r}, not v{current}, and no weight folder "
                            "has been pushed to reload",
                            retryable=False,
                        )
                    adapter = self._adapter if self._latest_adapter else None
                    if adapter is not None:
                        self._loaded[server] = set()  # a restarted server holds none
                        if self._base_path is not None:  # the base under the adapter first
                            await server.api.load_weights(
                                self._session, self._base_path, self._version
                            )
                    await self._load_on(server, self._latest_path, self._version, adapter)
                if self.update_mode == "interrupt":
                    await server.api.resume(self._session)  # it may have been paused by us
            except ServerError as e:
                logger.warning("%s server %s cannot rejoin yet: %s", self.kind, server.url, e)
                return
            server.healthy = server.trusted = True
            server.rejoins += 1
            self.stats.server_rejoins += 1
            logger.info("%s server %s rejoined at v%d", self.kind, server.url, self._version)

    async def _watch(self) -> None:
        """Health checks every ``health_interval`` seconds, for the engine's life."""
        while True:
            await asyncio.sleep(self.config.health_interval)
            await asyncio.gather(*(self._check(s) for s in self._servers), return_exceptions=True)

    # ---- event-loop binding ---------------------------------------------------------

    def _bind_loop(self) -> None:
        """Sessions, events and locks belong to one loop; a new loop gets new ones."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        # Idle connections are dropped before the servers' own keep-alive timeout
        # (uvicorn: 5 s), so a reused connection is never one the server just closed.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
        self._session = aiohttp.ClientSession(connector=connector)
        self._gate = asyncio.Event()
        if not self._paused:
            self._gate.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._sends = 0
        self._update_lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._monitor = None
        self._checks = set()

    def _ensure_monitor(self) -> None:
        if self._monitor is None or self._monitor.done():
            assert self._loop is not None
            self._monitor = self._loop.create_task(self._watch(), name="RemoteEngine-health")


def adapter_name(version: int) -> str:
    """The name a LoRA adapter of weight ``version`` is loaded and requested under."""
    return f"policy-v{version}"


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _result(
    request: GenerationRequest,
    ids: list[int],
    logprobs: list[float],
    versions: list[int],
    reason: Any,
) -> GenerationResult:
    return GenerationResult(
        request_id=request.request_id,
        input_ids=request.input_ids,
        output_ids=ids,
        output_logprobs=logprobs,
        output_versions=versions,
        finish_reason=reason,
    )
