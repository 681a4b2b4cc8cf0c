"""LocalEngine: an in-process InferenceEngine that decodes concurrent requests as one batch.

One background asyncio task (the worker) owns the running batch and loops::

    schedule -> forward (KV) -> sample -> update

1. **schedule**: wait until there is work; unless paused, move queued requests
   into the batch (up to ``max_batch_size`` rows); rows that finished or whose
   caller went away leave the batch and its KV cache.
2. **forward (KV)**: in a thread (so the event loop stays responsive), feed each
   running row its last sampled token through the shared KV cache, prefill the
   newly admitted prompts, and merge them into the running batch (continuous
   batching; see ``kv_cache.KVBatch`` for the left-padding invariant).
3. **sample**: choose every row's next token with its own sampling parameters
   and record its logprob (``log_softmax(logits / T)``, before top-k/top-p) and
   the engine version.
4. **update** (back on the event loop): append the tokens, apply the stop rules
   (stop token, stop string, token budget) and resolve finished rows' futures.

Weight updates: ``update_weights()`` loads weights only while the engine is paused
and idle (no step in flight), so no token is sampled from half-loaded weights.
``pause()`` stops admissions and has two modes (``update_mode``):

* ``"interrupt"`` (default, AReaL's interruptible generation): an update never
  waits for the longest completion. At the next step boundary the running rows
  leave the batch and its KV cache and go back to the front of the queue, in
  their order, with their futures unresolved and their tokens, logprobs and
  versions so far kept; ``pause()`` returns within one model step. After
  ``resume()`` such a row is admitted again by prefilling its prompt plus its
  output so far and decodes on under the new weights, with the same token
  budget (``max_new_tokens`` counts old and new tokens) and stop rules. Each
  token's version is the engine version at the step that sampled it, so a
  completion that spans an update carries both versions, and its per-token
  logprobs and versions tell the trainer which weights drew each token. The
  caller sees one result; only ``abort()`` ends a request early.
* ``"drain"``: ``pause()`` returns once the running rows have finished, so every
  token of a completion carries the same version, at the cost of waiting for
  the longest one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import numbers
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import torch

from areal_env.errors import InferenceError
from areal_env.inference.engine import WeightTransport
from areal_env.inference.kv_cache import KVBatch
from areal_env.inference.sampling import sample_next_tokens
from areal_env.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    WeightUpdate,
)

logger = logging.getLogger(__name__)

UpdateMode = Literal["interrupt", "drain"]
"""What ``pause()`` does with running rows: requeue them at once, or let them finish."""


@dataclass(kw_only=True, slots=True)
class LocalEngineConfig:
    """Settings of a LocalEngine."""

    max_batch_size: int = 256
    """Most rows decoded together; further requests wait in the queue."""
    seed: int = 0
    """Seed of the torch.Generator used for sampling."""
    max_prefill_tokens: int = 16384
    """Cap on padded prompt tokens (rows x longest prompt) admitted in one step; one
    request is always admitted, however long."""
    pad_token_id: int | None = None
    """Id written into padded prompt positions; None takes the tokenizer's (or 0)."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_prefill_tokens < 1:
            raise ValueError(
                "max_batch_size and max_prefill_tokens must be >= 1, got "
                f"{self.max_batch_size} and {self.max_prefill_tokens}"
            )


@dataclass(slots=True, eq=False)
class _Row:
    """One request while it waits or decodes."""

    request: GenerationRequest
    future: asyncio.Future[GenerationResult]
    budget: int
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_versions: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None
    """The request's own random source when it has a seed (made on first admission)."""

    @property
    def prefix(self) -> tuple[int, ...]:
        """What a (re)admission prefills: the prompt plus the tokens sampled so far."""
        return self.request.input_ids + tuple(self.output_ids)

    def result(self) -> GenerationResult:
        return GenerationResult(
            request_id=self.request.request_id,
            input_ids=self.request.input_ids,
            output_ids=self.output_ids,
            output_logprobs=self.output_logprobs,
            output_versions=self.output_versions,
            finish_reason=self.finish_reason or "abort",
        )


@dataclass(slots=True)
class _Running:
    """The decoding batch: rows, their KV cache and each row's last sampled token."""

    rows: list[_Row] = field(default_factory=list)
    kv: KVBatch | None = None
    last_tokens: torch.Tensor | None = None

    def select(self, keep: list[int]) -> _Running:
        if not keep:
            return _Running()
        if len(keep) == len(self.rows):
            return self
        assert self.kv is not None and self.last_tokens is not None
        index = torch.tensor(keep, dtype=torch.long, device=self.kv.lengths.device)
        self.kv.select(index)
        return _Running([self.rows[i] for i in keep], self.kv, self.last_tokens[index])


class LocalEngine:
    """InferenceEngine around an already-loaded Hugging Face causal LM, in this process.

    Example:
        >>> import asyncio, tempfile
        >>> from areal_env.types import SamplingParams
        >>> from areal_env.models.tiny import build_tiny_model, load_model_and_tokenizer
        >>> model, tok = load_model_and_tokenizer(build_tiny_model(tempfile.mkdtemp()))
        >>> engine = LocalEngine(model, tok)
        >>> request = GenerationRequest(input_ids=(5, 6), sampling=SamplingParams(max_new_tokens=3))
        >>> result = asyncio.run(engine.agenerate(request))
        >>> len(result.output_ids), result.output_versions, result.finish_reason
        (3, [0, 0, 0], 'length')
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any | None,
        config: LocalEngineConfig | None = None,
        *,
        version: int = 0,
        update_mode: UpdateMode = "interrupt",
    ) -> None:
        """Wrap ``model`` (already on its device) for batched generation.

        Args:
            model: a Hugging Face causal LM.
            tokenizer: its tokenizer (needed for stop strings), or None.
            config: batching and sampling settings.
            version: the weight version of ``model``.
            update_mode: ``"interrupt"`` requeues running requests at a pause (they
                continue under the new weights); ``"drain"`` lets them finish first.

        Raises:
            ValueError: ``update_mode`` is not one of ``UpdateMode``.
        """
        if update_mode not in get_args(UpdateMode):
            raise ValueError(
                f"update_mode must be one of {get_args(UpdateMode)}, got {update_mode!r}"
            )
        self.update_mode: UpdateMode = update_mode
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or LocalEngineConfig()
        self._version = version
        device = next(model.parameters()).device
        self._generator = torch.Generator(device=device).manual_seed(self.config.seed)
        self._vocab_size = int(cast(Any, model).get_input_embeddings().num_embeddings)
        self._max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        pad = self.config.pad_token_id
        if pad is None:
            pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = 0 if pad is None else int(pad)
        self._queue: deque[_Row] = deque()
        self._running = _Running()
        self._in_step: list[_Row] = []
        self._paused = False
        self._closed = False
        self._num_interrupted = 0
        self._new_loop_primitives()
        self._worker: asyncio.Task[None] | None = None
        self._worker_error: BaseException | None = None

    @property
    def version(self) -> int:
        """Weight version that new tokens are sampled with."""
        return self._version

    @property
    def num_running(self) -> int:
        """Requests currently decoding in the batch."""
        return sum(not r.future.done() for r in self._running.rows)

    @property
    def num_waiting(self) -> int:
        """Requests queued for the next admission (interrupted ones included)."""
        return len(self._queue)

    @property
    def num_interrupted(self) -> int:
        """Running requests a pause sent back to the queue so far (cumulative)."""
        return self._num_interrupted

    def metrics(self) -> dict[str, float]:
        """Cumulative counters for the run's metrics (``inference/<name>``)."""
        return {"inference/interrupted": float(self._num_interrupted)}

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one completion; waits while the engine is paused.

        Raises:
            ValueError: the prompt is empty, holds ids outside the vocabulary, is too
                long for the model, or stop strings are given without a tokenizer.
            RuntimeError: the engine is closed or its worker died.
        """
        self._check_open()
        budget = self._validate(request)
        self._ensure_worker()
        row = _Row(request, asyncio.get_running_loop().create_future(), budget)
        self._queue.append(row)
        self._wake.set()
        return await row.future

    async def update_weights(self, update: WeightUpdate) -> None:
        """Load ``update.state_dict`` or the safetensors of ``update.path`` and set the version.

        Pauses (in the engine's ``update_mode``) around the load when the engine is
        not paused already.

        Raises:
            ValueError: parameter names or shapes do not match the model.
            FileNotFoundError: ``update.path`` holds no ``*.safetensors`` file.
        """
        self._check_open()
        async with self._update_lock:
            was_paused = self._paused
            if not was_paused:
                await self.pause()
            try:
                await asyncio.to_thread(self._load_weights, update)
                self._version = update.version
            finally:
                if not was_paused:
                    await self.resume()

    @property
    def weight_transports(self) -> tuple[WeightTransport, ...]:
        """A state dict (shared tensors, no copy) first; an HF folder also loads."""
        return ("state_dict", "disk")

    async def abort(self, request_ids: Collection[str] | None = None) -> int:
        """End queued and running requests now, with the tokens they have so far.

        Args:
            request_ids: the requests to end; every request when None.

        Returns:
            How many requests were ended.
        """
        wanted = None if request_ids is None else set(request_ids)
        rows = [*self._queue, *self._running.rows, *self._in_step]
        ended = 0
        for row in dict.fromkeys(rows):  # a row may be listed twice during a step
            if row.future.done() or (wanted is not None and row.request.request_id not in wanted):
                continue
            row.finish_reason = "abort"
            row.future.set_result(row.result())
            ended += 1
        self._queue = deque(r for r in self._queue if not r.future.done())
        self._wake.set()
        return ended

    async def pause(self) -> None:
        """Stop admitting requests; return once no row decodes.

        In ``"interrupt"`` mode the running rows go back to the front of the queue at
        the next step boundary (at most one model step); in ``"drain"`` mode they
        finish first.
        """
        self._paused = True
        await self._idle.wait()

    async def resume(self) -> None:
        """Admit queued and new requests again."""
        self._paused = False
        self._wake.set()

    async def close(self) -> None:
        """Cancel the worker and fail every pending request with a RuntimeError."""
        if self._closed:
            return
        self._closed = True
        worker = self._worker
        if worker is not None and not worker.done():
            worker.cancel()
            if worker.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
        self._fail_all(RuntimeError("LocalEngine was closed before the request finished"))
        self._idle.set()

    # ---- request intake -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("LocalEngine is closed")
        if self._worker_error is not None:
            raise RuntimeError("LocalEngine worker died") from self._worker_error

    def _validate(self, request: GenerationRequest) -> int:
        """Check a request and return its token budget, clamped to the model's context."""
        ids, n = request.input_ids, len(request.input_ids)
        if n == 0:
            raise ValueError("prompt is empty: input_ids has no tokens")
        vocab = self._vocab_size
        bad = [t for t in ids if not isinstance(t, numbers.Integral) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"input_ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        if request.sampling.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this engine has none")
        budget = request.sampling.max_new_tokens
        if self._max_positions is not None:
            if n >= self._max_positions:
                raise ValueError(
                    f"prompt has {n} tokens but the model accepts {self._max_positions} "
                    "positions in all, leaving no room to generate"
                )
            budget = min(budget, self._max_positions - n)
        return budget

    # ---- worker ---------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is not None and not self._worker.done():
            if self._worker.get_loop() is not loop:
                raise RuntimeError("LocalEngine is serving another running event loop")
            return
        if self._worker is not None:
            # The loop that ran the old worker ended (asyncio.run cancels leftover
            # tasks); start over on this loop with fresh loop-bound primitives.
            self._queue = deque(r for r in self._queue if not r.future.done())
            self._running, self._in_step = _Running(), []
            self._new_loop_primitives()
        self._worker = loop.create_task(self._run(), name=f"LocalEngine-worker-{id(self):x}")
        self._worker.add_done_callback(self._on_worker_done)

    def _new_loop_primitives(self) -> None:
        self._wake, self._idle, self._update_lock = asyncio.Event(), asyncio.Event(), asyncio.Lock()
        self._idle.set()  # set while no row is decoding

    def _on_worker_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._worker_error = task.exception()
        error = RuntimeError(f"LocalEngine worker died: {self._worker_error!r}")
        self._fail_all(error)
        self._idle.set()

    async def _run(self) -> None:
        while True:
            if self._paused and self.update_mode == "interrupt":
                self._interrupt_running()
            await self._wait_for_work()
            admitted = self._admit()
            # Finished and cancelled rows leave the batch (and its KV cache) at this step.
            alive = [i for i, r in enumerate(self._running.rows) if not r.future.done()]
            if not admitted and not alive:
                self._running = _Running()
                self._idle.set()
                continue
            self._idle.clear()
            running, version = self._running, self._version
            self._in_step = [running.rows[i] for i in alive] + admitted
            try:
                self._running, tokens, logprobs = await asyncio.to_thread(
                    self._step, running, alive, admitted
                )
            except Exception as exc:  # deliver to every request of the failed step
                self._fail_step(exc)
                continue
            self._in_step = []
            self._update(tokens, logprobs, version)

    async def _wait_for_work(self) -> None:
        while not (self.num_running or (self._queue and not self._paused)):
            self._wake.clear()
            await self._wake.wait()

    def _interrupt_running(self) -> None:
        """Requeue the running rows at the front, in order, with their output so far.

        They leave the batch and its KV cache; their futures stay unresolved.
        """
        rows = [r for r in self._running.rows if not r.future.done()]
        self._queue.extendleft(reversed(rows))
        self._num_interrupted += len(rows)
        self._running = _Running()
        self._idle.set()

    def _admit(self) -> list[_Row]:
        admitted: list[_Row] = []
        room, longest = self.config.max_batch_size - self.num_running, 0
        while self._queue and len(admitted) < room and not self._paused:
            row = self._queue[0]
            # An interrupted row prefills its prompt and its output so far. Its
            # budget was clamped to the context for prompt + all output, so the
            # continued prompt (shorter than that) always fits.
            longest = max(longest, len(row.request.input_ids) + len(row.output_ids))
            if admitted and (len(admitted) + 1) * longest > self.config.max_prefill_tokens:
                break
            self._queue.popleft()
            if not row.future.done():
                admitted.append(row)
        return admitted

    def _fail_step(self, error: BaseException) -> None:
        # An episode error for each request of the step (their episodes are retried);
        # the traceback is logged once here, not once per episode.
        logger.error("LocalEngine step failed for %d requests", len(self._in_step), exc_info=error)
        for row in self._in_step:
            if not row.future.done():
                failure = InferenceError(f"local engine step failed: {error!r}")
                failure.__cause__ = error
                row.future.set_exception(failure)
        self._running, self._in_step = _Running(), []
        self._idle.set()

    def _fail_all(self, error: BaseException) -> None:
        rows = [*self._queue, *self._running.rows, *self._in_step]
        self._queue.clear()
        self._running, self._in_step = _Running(), []
        for row in rows:
            if not row.future.done():
                row.future.set_exception(error)

    # ---- forward and sample (in a worker thread) --------------------------------------

    def _step(
        self, running: _Running, alive: list[int], admitted: list[_Row]
    ) -> tuple[_Running, list[int], list[float]]:
        """Drop dead rows, run one forward, sample; return the batch, tokens and logprobs."""
        with torch.inference_mode():
            running = running.select(alive)
            logits = self._forward(running, admitted)
            running.rows = running.rows + admitted
            sampling = [r.request.sampling for r in running.rows]
            device = logits.device
            running.last_tokens, logprobs = sample_next_tokens(
                logits,
                torch.tensor([s.temperature for s in sampling], device=device),
                torch.tensor([s.top_k for s in sampling], dtype=torch.long, device=device),
                torch.tensor([s.top_p for s in sampling], device=device),
                self._generator,
                [self._row_generator(r, device) for r in running.rows],
            )
            return running, running.last_tokens.tolist(), logprobs.tolist()

    @staticmethod
    def _row_generator(row: _Row, device: torch.device) -> torch.Generator | None:
        seed = row.request.sampling.seed
        if seed is not None and row.generator is None:
            row.generator = torch.Generator(device=device).manual_seed(seed)
        return row.generator

    def _forward(self, running: _Running, admitted: list[_Row]) -> torch.Tensor:
        """Decode the running rows and prefill the admitted ones; ``[B, V]`` logits."""
        logits = []
        if running.rows:
            assert running.kv is not None and running.last_tokens is not None
            logits.append(running.kv.decode(self.model, running.last_tokens))
        if admitted:
            prompts = [r.prefix for r in admitted]
            kv, prefill_logits = KVBatch.prefill(self.model, prompts, self._pad_id)
            logits.append(prefill_logits)
            if running.kv is None:
                running.kv = kv
            else:
                running.kv.merge(kv)
        return torch.cat(logits).float()

    # ---- update (back on the event loop) ---------------------------------------------

    def _update(self, tokens: list[int], logprobs: list[float], version: int) -> None:
        """Record each row's new token, apply the stop rules and resolve finished rows."""
        for row, token, logprob in zip(self._running.rows, tokens, logprobs, strict=True):
            if row.future.done():  # cancelled during the step
                continue
            self._append(row, token, logprob, version)
            if row.finish_reason is not None:
                row.future.set_result(row.result())
        if not self.num_running:
            self._running = _Running()  # free the KV cache now, not at the next step
            self._idle.set()

    def _append(self, row: _Row, token: int, logprob: float, version: int) -> None:
        row.output_ids.append(token)
        row.output_logprobs.append(logprob)
        row.output_versions.append(version)
        sampling = row.request.sampling
        if token in sampling.stop_token_ids or self._hits_stop_string(row):
            row.finish_reason = "stop"
        elif len(row.output_ids) >= row.budget:
            row.finish_reason = "length"

    def _hits_stop_string(self, row: _Row) -> bool:
        stops = row.request.sampling.stop
        if not stops:
            return False
        # A new match must end in the newest token and spans at most 4 tokens per
        # character (byte-level BPE), so decoding a tail window is enough.
        assert self.tokenizer is not None  # agenerate refuses stop strings without one
        window = 4 * max(len(s) for s in stops) + 4
        text = self.tokenizer.decode(row.output_ids[-window:], skip_special_tokens=False)
        return any(s in text for s in stops)

    # ---- weights --------------------------------------------------------------------

    def _load_weights(self, update: WeightUpdate) -> None:
        state = update.state_dict
        if state is None:
            assert update.path is not None  # WeightUpdate guarantees one of the two
            state = _read_safetensors(Path(update.path), next(self.model.parameters()).device)
        _check_state_dict(self.model, state)
        with torch.no_grad():
            # Strictness is checked above; tied aliases (e.g. lm_head) may be absent.
            self.model.load_state_dict(state, strict=False)


def _read_safetensors(folder: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in weight folder {folder}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file), device=str(device)))
    return state


def _check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless ``state`` covers exactly the model's parameters and shapes."""
    expected = model.state_dict()
    aliases: dict[int, set[str]] = {}
    for name, tensor in expected.items():
        aliases.setdefault(tensor.data_ptr(), set()).add(name)
    missing = [n for n, t in expected.items() if not aliases[t.data_ptr()] & state.keys()]
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [
        f"{n}: got {tuple(state[n].shape)}, want {tuple(t.shape)}"
        for n, t in expected.items()
        if n in state and state[n].shape != t.shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"weight update does not match the model: missing={missing[:5]}, "
            f"unexpected={unexpected[:5]}, wrong shapes={wrong[:5]}"
        )
