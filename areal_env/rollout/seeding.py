"""Per-episode sampling seeds: reproducible rollouts whatever the timing.

An engine that batches concurrent requests draws their tokens from one random
stream, in an order set by timing, so the same run samples different tokens each
time. With a seed per request (``SamplingParams.seed``) a request's tokens depend
only on its seed, prompt and weights. The scheduler (``rollout.deterministic``)
and the warm start's accuracy checks give each episode attempt a seed through a
context variable; the chat client derives one seed per model call from it, so no
agent or env signature changes.

Example:
    >>> with episode_seed(7):
    ...     a = (request_seed(0), request_seed(1))
    >>> a == (request_seed_of(7, 0), request_seed_of(7, 1)), request_seed(0) is None
    (True, True)
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from contextvars import ContextVar

EPISODE_SEED: ContextVar[int | None] = ContextVar("areal_episode_seed", default=None)
"""The running episode attempt's seed, or None (requests use the engine's stream)."""


def mix(*parts: int) -> int:
    """A stable 63-bit seed from integers (the same in every process and run).

    Example:
        >>> mix(1, 2) == mix(1, 2) != mix(2, 1)
        True
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def request_seed_of(seed: int, call_index: int) -> int:
    """The seed of an episode's ``call_index``-th model call."""
    return mix(seed, call_index)


def request_seed(call_index: int) -> int | None:
    """The seed of this episode's ``call_index``-th call, or None outside a seeded episode."""
    seed = EPISODE_SEED.get()
    return None if seed is None else request_seed_of(seed, call_index)


@contextlib.contextmanager
def episode_seed(seed: int | None) -> Iterator[None]:
    """Give the episode run inside the block (and its child tasks) ``seed``."""
    token = EPISODE_SEED.set(seed)
    try:
        yield
    finally:
        EPISODE_SEED.reset(token)
