"""The InferenceEngine protocol: what the chat client and the trainer rely on.

An engine turns token ids into sampled token ids with their logprobs and the
weight version that produced each token. Engines are async so that many
episodes can wait on one engine while it batches their requests together.

Lifecycle (the trainer drives it around every weight update)::

    await engine.pause()                  # admit nothing new; interrupt or drain in-flight work
    await engine.update_weights(update)   # load weights, version = update.version
    await engine.resume()                 # held and interrupted requests run on the new weights

Engines take an update mode (``inference.update_mode``): ``interrupt`` (AReaL's
design, the default) makes ``pause()`` stop in-flight generation at once; each
interrupted request keeps its tokens and continues from prompt + tokens so far
after ``resume()``, so one result may carry two versions, each token labelled
with the weights that sampled it. ``drain`` makes ``pause()`` wait for in-flight
generation to finish. ``abort`` ends requests now, with the tokens generated so
far and ``finish_reason="abort"``, and they do not continue. Engines say which
weight transports they take (``weight_transports``): an in-process state dict,
or a folder of HF-format weights on disk (servers in other processes).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal, Protocol, runtime_checkable

from areal_env.types import GenerationRequest, GenerationResult, WeightUpdate

WeightTransport = Literal["state_dict", "disk", "lora_adapter"]
"""How new weights reach an engine: a tensor dict in this process, an HF folder, or a
folder with only a peft LoRA adapter (servers with ``inference.lora_adapters``)."""


@runtime_checkable
class InferenceEngine(Protocol):
    """Generates tokens for requests; swaps weights between pauses."""

    @property
    def weight_transports(self) -> tuple[WeightTransport, ...]:
        """The ``WeightUpdate`` forms this engine loads, the preferred one first."""
        ...

    @property
    def version(self) -> int:
        """Weight version that new tokens are sampled with."""
        ...

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one completion; waits while the engine is paused."""
        ...

    async def update_weights(self, update: WeightUpdate) -> None:
        """Load new weights and set ``version`` to ``update.version``."""
        ...

    async def abort(self, request_ids: Collection[str] | None = None) -> int:
        """End the given requests (all when None) now; returns how many were ended.

        Their results carry the tokens generated so far and ``finish_reason="abort"``.
        """
        ...

    async def pause(self) -> None:
        """Stop starting new work; interrupt (or, in drain mode, finish) in-flight generation."""
        ...

    async def resume(self) -> None:
        """Start serving again after a pause."""
        ...

    async def close(self) -> None:
        """Release background tasks, sessions and memory."""
        ...
