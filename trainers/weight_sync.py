"""Push the trainer's weights to inference: pause -> load -> version+1 -> resume.

The order matters. The engine drains in-flight work before it loads, so no
token is sampled from half-updated weights; the scheduler learns the new
version only after the engine has it, so the staleness bound is never
computed against a version the engine does not serve yet.
"""

from __future__ import annotations

from typing import Any

from areal_env.inference.engine import InferenceEngine
from areal_env.types import WeightUpdate


async def push_weights(
    backend: Any, engine: InferenceEngine, scheduler: Any | None, *, version: int
) -> None:
    """Load ``backend.weights_for_sync()`` into ``engine`` as ``version``.

    Args:
        backend: a TrainBackend.
        engine: an in-process engine (state-dict push).
        scheduler: a RolloutScheduler to tell about the new version, or None.
        version: the weight version after the update.
    """
    await engine.pause()
    try:
        await engine.update_weights(
            WeightUpdate(version=version, state_dict=backend.weights_for_sync())
        )
    finally:
        await engine.resume()
    if scheduler is not None:
        scheduler.set_version(version)
