"""What the RemoteEngine tests share: fake servers started and stopped, an engine on
them with test-speed timings, requests, and the provenance check.

The fake model (remote_fakes.py) writes the weights that produced each token into
its logprob, so :func:`assert_provenance` can tell a wrong version label.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from remote_fakes import PROBE_IDS, FakeServer, weights_logprob

from areal_env.inference.remote.engine import RemoteEngine, RemoteEngineConfig
from areal_env.types import GenerationRequest, SamplingParams, WeightUpdate

FAST = RemoteEngineConfig(
    request_timeout=10,
    max_retries=3,
    retry_backoff=0.01,
    health_interval=0.1,
    health_timeout=0.5,
    connect_timeout=2,
)


@contextlib.asynccontextmanager
async def servers(n=1, kind="vllm", **kwargs):
    """``n`` running fake servers of ``kind`` (FakeServer's knobs as kwargs)."""
    fakes = [FakeServer(kind, **kwargs) for _ in range(n)]
    for fake in fakes:
        await fake.start()
    try:
        yield fakes
    finally:
        for fake in fakes:
            fake.hang = False
            await fake.stop()


@contextlib.asynccontextmanager
async def engine_on(fakes, kind="vllm", config=FAST, **kwargs):
    """A started RemoteEngine on ``fakes``, closed afterwards."""
    engine = RemoteEngine(kind, [f.url for f in fakes], config, probe_ids=PROBE_IDS, **kwargs)
    try:
        await engine.start()
        yield engine
    finally:
        await engine.close()


def request(prompt=(5,), n=8, session=None, **sampling):
    return GenerationRequest(
        input_ids=tuple(prompt),
        sampling=SamplingParams(max_new_tokens=n, **sampling),
        session_id=session,
    )


async def push(engine, version):
    """Full weights ``v<version>`` (the fakes read the version off the folder name)."""
    await engine.update_weights(WeightUpdate(version=version, path=f"/weights/v{version:06d}"))


async def wait_for(predicate, limit=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def assert_provenance(result):
    """Each token's label names the weights that produced it (logprob encodes them)."""
    for version, logprob in zip(result.output_versions, result.output_logprobs, strict=True):
        assert logprob == pytest.approx(weights_logprob(version)), (
            result.output_versions,
            result.output_logprobs,
        )
