"""An InferenceEngine that replays given token outputs instead of sampling.

Two users: tests (every test double of an engine is this one, via
``areal_env.testing.ScriptedEngine``) and teacher forcing, where a gold
demonstration is played through the real agent -> client -> env path so its
token sequence is exactly what a rollout of the same replies would record
(warm starts build their SFT rows this way).

Example:
    >>> import asyncio
    >>> from areal_env.types import GenerationRequest, SamplingParams
    >>> engine = ReplayEngine(replies=[[5, 6]], logprob=0.0)
    >>> req = GenerationRequest(input_ids=(1,), sampling=SamplingParams(stop_token_ids=(9,)))
    >>> result = asyncio.run(engine.agenerate(req))
    >>> result.output_ids, result.finish_reason
    ([5, 6, 9], 'stop')
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from areal_env.inference.engine import WeightTransport
from areal_env.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    WeightUpdate,
)


class ReplayEngine:
    """Replays ``replies`` in order (cycling), one per request; an ``InferenceEngine``.

    Each reply is a list of token ids; the stop token of the request (its first
    ``stop_token_ids`` entry) is appended when ``append_stop`` is True, so the
    finish reason is "stop" as with a real model.
    """

    def __init__(
        self,
        replies: Sequence[Sequence[int]],
        *,
        logprob: float = -1.0,
        version: int = 0,
        append_stop: bool = True,
    ) -> None:
        if not replies:
            raise ValueError("ReplayEngine needs at least one reply")
        self.replies = [list(r) for r in replies]
        self.logprob = logprob
        self._version = version
        self.append_stop = append_stop
        self.requests: list[GenerationRequest] = []
        self.updates: list[WeightUpdate] = []
        self._resumed = asyncio.Event()
        self._resumed.set()

    @property
    def version(self) -> int:
        """Current weight version."""
        return self._version

    def set_version(self, version: int) -> None:
        """Set the version stamped on new tokens."""
        self._version = version

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        """Return the next reply (waits while paused)."""
        await self._resumed.wait()
        reply = list(self.replies[len(self.requests) % len(self.replies)])
        self.requests.append(request)
        finish: FinishReason = "length"
        stops = request.sampling.stop_token_ids
        if self.append_stop and stops:
            reply.append(stops[0])
            finish = "stop"
        reply = reply[: request.sampling.max_new_tokens]
        if finish == "stop" and (not reply or reply[-1] != stops[0]):
            finish = "length"
        return GenerationResult(
            request_id=request.request_id,
            input_ids=request.input_ids,
            output_ids=reply,
            output_logprobs=[self.logprob] * len(reply),
            output_versions=[self._version] * len(reply),
            finish_reason=finish,
        )

    @property
    def weight_transports(self) -> tuple[WeightTransport, ...]:
        """Both: the update is recorded, never loaded."""
        return ("state_dict", "disk")

    async def abort(self, request_ids: Collection[str] | None = None) -> int:
        """Nothing runs long enough to abort: replies are immediate. Returns 0."""
        return 0

    async def update_weights(self, update: WeightUpdate) -> None:
        """Record the update and adopt its version."""
        self.updates.append(update)
        self._version = update.version

    async def pause(self) -> None:
        """Hold new requests until resume()."""
        self._resumed.clear()

    async def resume(self) -> None:
        """Release held requests."""
        self._resumed.set()

    async def close(self) -> None:
        """Nothing to release."""
        self._resumed.set()
