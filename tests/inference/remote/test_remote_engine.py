"""RemoteEngine against fake vLLM / SGLang servers: mapping, versions, interruption,
retries, routing, failover.

The fake model (remote_fakes.py) makes provenance checkable: a
token's logprob says which weights produced it, so a wrong version label shows.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from remote_fakes import PROBE_IDS, next_token
from remote_harness import (
    FAST,
    assert_provenance,
    engine_on,
    push,
    request,
    servers,
    wait_for,
)

from areal_env.errors import InferenceError
from areal_env.http_service import HTTPService
from areal_env.inference.remote.api import ServerStartupError
from areal_env.inference.remote.engine import RemoteEngine, RemoteEngineConfig
from areal_env.types import WeightUpdate


def expected_tokens(prompt_last, n):
    out, last = [], prompt_last
    for _ in range(n):
        last = next_token(last)
        out.append(last)
    return out


# ---- mapping --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
async def test_generate_maps_sampling_and_returns_ids_logprobs_versions(kind):
    async with servers(kind=kind) as fakes, engine_on(fakes, kind) as engine:
        result = await engine.agenerate(
            request(
                (5,), 6, temperature=0.7, top_p=0.9, top_k=20, stop_token_ids=(999,), stop=("END",)
            )
        )
        assert result.output_ids == expected_tokens(5, 6)
        assert result.finish_reason == "length"
        assert result.output_versions == [0] * 6
        assert_provenance(result)
        sent = fakes[0].requests[-1]
        params = sent if kind == "vllm" else sent["sampling_params"]
        assert params["temperature"] == 0.7 and params["top_p"] == 0.9 and params["top_k"] == 20
        assert params["stop_token_ids"] == [999] and params["stop"] == ["END"]
        assert params["ignore_eos"] is True  # we stop on exactly the ids we name
        assert (params["max_tokens"] if kind == "vllm" else params["max_new_tokens"]) == 6


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
async def test_stop_token_ends_generation_and_is_kept(kind):
    stop = expected_tokens(5, 4)[2]
    async with servers(kind=kind) as fakes, engine_on(fakes, kind) as engine:
        result = await engine.agenerate(request((5,), 10, stop_token_ids=(stop,)))
    assert result.output_ids == expected_tokens(5, 3) and result.finish_reason == "stop"


async def test_server_error_text_reaches_the_episode_and_is_not_retried():
    async with servers() as fakes, engine_on(fakes) as engine:
        with pytest.raises(InferenceError, match="maximum context length is 4096"):
            await engine.agenerate(request(tuple(range(1, 90)) * 50, 4))
        assert len(fakes[0].requests) == 1
        assert (await engine.agenerate(request((5,), 2))).output_ids == expected_tokens(5, 2)


async def test_5xx_is_retried_with_backoff_then_fails_the_episode_not_the_engine():
    async with servers() as fakes, engine_on(fakes) as engine:
        fakes[0].fail_next = [503, 500]
        result = await engine.agenerate(request((5,), 3))
        assert result.output_ids == expected_tokens(5, 3)
        assert engine.stats.retries == 2
        fakes[0].fail_next = [503] * 10
        with pytest.raises(InferenceError, match="failed after 4 retries.*fake failure 503"):
            await engine.agenerate(request((5,), 3))
        fakes[0].fail_next = []
        assert (await engine.agenerate(request((5,), 3))).output_ids == expected_tokens(5, 3)


# ---- start-up checks ------------------------------------------------------------------


async def test_unreachable_server_fails_at_start_naming_it():
    engine = RemoteEngine("vllm", ["http://127.0.0.1:9"], FAST)
    with pytest.raises(ServerStartupError, match=r"127\.0\.0\.1:9 did not answer /health"):
        await engine.start()
    await engine.close()


class HealthOnly(HTTPService):
    def make_app(self):
        async def health(request):
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/health", health)
        return app


@pytest.mark.parametrize(
    "kind, words", [("vllm", "not a vLLM server"), ("sglang", "not an SGLang")]
)
async def test_server_of_another_kind_fails_at_start(kind, words):
    async with HealthOnly() as other:
        engine = RemoteEngine(kind, [other.url], FAST)
        with pytest.raises(ServerStartupError, match=words) as err:
            await engine.start()
        assert other.url in str(err.value)
        await engine.close()


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
async def test_model_with_another_tokenizer_fails_at_start(kind):
    async with servers(kind=kind, probe_ids=[9, 9, 9]) as fakes:
        engine = RemoteEngine(kind, [fakes[0].url], FAST, probe_ids=PROBE_IDS)
        with pytest.raises(ServerStartupError, match="different tokenizer"):
            await engine.start()
        await engine.close()


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="inference.servers"):
        RemoteEngine("vllm", [])
    with pytest.raises(ValueError, match="update_mode"):
        RemoteEngine("vllm", ["http://x"], update_mode="later")
    with pytest.raises(ValueError, match="unknown server kind"):
        RemoteEngine("tgi", ["http://x"])
    with pytest.raises(ValueError, match="health_timeout"):
        RemoteEngineConfig(health_timeout=0)
    with pytest.raises(ValueError, match="unhealthy_after"):
        RemoteEngineConfig(unhealthy_after=0)


# ---- weight updates and interruption --------------------------------------------------


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
async def test_update_interrupts_and_continues_under_the_new_weights(kind):
    async with servers(kind=kind, token_delay=0.005) as fakes, engine_on(fakes, kind) as engine:
        task = asyncio.create_task(engine.agenerate(request((5,), 200)))
        await wait_for(lambda: fakes[0].requests)
        await asyncio.sleep(0.1)
        await push(engine, 1)
        assert not task.done()  # the update did not wait for the completion
        result = await task
        assert result.finish_reason == "length" and len(result.output_ids) == 200
        # the same tokens as an uninterrupted run: it continued from prompt + tokens so far
        assert result.output_ids == expected_tokens(5, 200)
        n0 = result.output_versions.count(0)
        assert 0 < n0 < 200 and result.output_versions == [0] * n0 + [1] * (200 - n0)
        assert_provenance(result)
        assert engine.stats.interrupted == 1 and engine.version == 1
        assert fakes[0].loads == ["/weights/v000001"]


async def test_drain_mode_waits_for_in_flight_requests():
    async with servers(token_delay=0.002) as fakes, engine_on(fakes, update_mode="drain") as engine:
        task = asyncio.create_task(engine.agenerate(request((5,), 100)))
        await wait_for(lambda: fakes[0].requests)
        await push(engine, 1)
        assert task.done()
        result = task.result()
        assert result.output_versions == [0] * 100
        assert_provenance(result)


async def test_versions_never_lie_when_requests_race_updates():
    """AReaL #1569: a request that reaches the server after the update's pause runs on
    the new weights; labelling it with the version read at send would be wrong."""
    async with servers(token_delay=0.001, arrival_delay=0.02) as fakes, engine_on(fakes) as engine:
        tasks = [
            asyncio.create_task(engine.agenerate(request((i % 50 + 1,), 30))) for i in range(40)
        ]
        for version in range(1, 6):
            await asyncio.sleep(0.015)
            await push(engine, version)
        results = await asyncio.gather(*tasks)
    for result in results:
        assert len(result.output_ids) == 30
        assert_provenance(result)
    assert engine.stats.discarded_chunks > 0  # the race happened and was caught


async def test_a_chunk_that_arrived_after_a_load_and_is_aborted_by_the_next_pause_is_not_kept():
    """The race above, forced: sent at v0, it reaches the server after v1 loaded,
    runs on v1 and is aborted by the pause of the update to v2. Kept, its v1
    tokens would carry the v0 label."""
    async with servers(token_delay=0.005, arrival_delay=0.3) as fakes, engine_on(fakes) as engine:
        task = asyncio.create_task(engine.agenerate(request((5,), 400)))
        await wait_for(lambda: fakes[0].requests)  # sent at v0, still on its way
        await push(engine, 1)  # loads before the request arrives
        fake = fakes[0]
        await wait_for(lambda: fake._resumed.is_set() and fake.weights == 1)
        await asyncio.sleep(0.4)  # it arrived and generates on v1
        await engine.pause()  # the next update's pause aborts it
        await wait_for(lambda: engine.stats.discarded_chunks == 1)
        await push(engine, 2)
        await engine.resume()
        result = await task
    assert_provenance(result)
    assert 2 in result.output_versions and 1 not in result.output_versions


async def test_update_needs_a_weight_folder():
    async with servers() as fakes, engine_on(fakes) as engine:
        assert engine.weight_transports == ("disk",)
        with pytest.raises(ValueError, match="from disk"):
            await engine.update_weights(WeightUpdate(version=1, state_dict={}))


async def test_abort_returns_the_tokens_so_far():
    async with servers(token_delay=0.005) as fakes, engine_on(fakes) as engine:
        req = request((5,), 500)
        task = asyncio.create_task(engine.agenerate(req))
        await wait_for(lambda: fakes[0].requests)
        assert await engine.abort([req.request_id]) == 1
        result = await task
        assert result.finish_reason == "abort"


# ---- many servers ---------------------------------------------------------------------


async def test_sessions_stick_to_a_server_and_new_ones_spread():
    async with servers(2, token_delay=0.002) as fakes, engine_on(fakes) as engine:
        for turn in range(3):
            await engine.agenerate(request((5 + turn,), 2, session="episode-a"))
        assert sorted(len(f.requests) for f in fakes) == [0, 3]
        await asyncio.gather(
            *(engine.agenerate(request((5,), 20, session=f"s{i}")) for i in range(10))
        )
        counts = sorted(len(f.requests) for f in fakes)
        assert counts[0] >= 4, counts  # spread by load


async def test_a_dead_server_is_failed_over_counted_and_rejoins_with_current_weights():
    async with servers(2, token_delay=0.003) as fakes, engine_on(fakes) as engine:
        await push(engine, 1)
        tasks = [
            asyncio.create_task(engine.agenerate(request((i + 1,), 60, session=f"s{i}")))
            for i in range(8)
        ]
        await wait_for(lambda: all(f.requests for f in fakes))
        await fakes[1].stop()  # dies mid-run
        results = await asyncio.gather(*tasks)
        assert all(len(r.output_ids) == 60 for r in results)
        for r in results:
            assert_provenance(r)
        await wait_for(lambda: not engine.servers[1].available)  # 2 failed checks
        assert engine.stats.server_downs >= 1
        await fakes[1].restart()  # back with the base weights, version "default"
        await wait_for(lambda: engine.servers[1].available)
        assert fakes[1].weights == 1 and fakes[1].weight_version == "1"  # reloaded first
        assert engine.stats.server_rejoins == 1
        fakes[1].requests.clear()
        results = await asyncio.gather(
            *(engine.agenerate(request((5,), 10, session=f"new{i}")) for i in range(6))
        )
        assert fakes[1].requests  # serving again
        for r in results:
            assert_provenance(r)


async def test_a_hung_server_is_taken_out_and_its_requests_move():
    async with servers(2, token_delay=0.002) as fakes, engine_on(fakes) as engine:
        fakes[1].hang = True
        results = await asyncio.gather(
            *(engine.agenerate(request((5,), 20, session=f"s{i}")) for i in range(6))
        )
        assert all(len(r.output_ids) == 20 for r in results)
        assert not engine.servers[1].healthy


async def test_a_server_that_fails_to_load_is_left_out_and_the_version_still_moves():
    async with servers(2, kind="sglang") as fakes, engine_on(fakes, "sglang") as engine:
        fakes[1].hang = False

        async def refuse(request):
            return web.json_response({"success": False, "message": "disk full"})

        fakes[1]._update_from_disk = refuse  # routes bind at start
        await fakes[1].stop()
        await fakes[1].start()
        await push(engine, 1)
        assert engine.version == 1
        assert not engine.servers[1].available
        result = await engine.agenerate(request((5,), 4))
        assert result.output_versions == [1] * 4
        assert_provenance(result)


async def test_metrics_count_what_the_engine_worked_around():
    async with servers(2, token_delay=0.002) as fakes, engine_on(fakes) as engine:
        fakes[0].fail_next = [503]  # the first pick; the retry goes to the other
        await engine.agenerate(request((5,), 3))
        metrics = engine.metrics()
        assert metrics["inference/retries"] == 1 and metrics["inference/chunks"] == 2
        assert metrics["inference/servers_available"] == 2


async def test_one_slow_health_check_does_not_take_a_busy_server_out():
    config = RemoteEngineConfig(
        health_interval=60, health_timeout=0.2, unhealthy_after=2, connect_timeout=2
    )
    async with servers(2) as fakes, engine_on(fakes, config=config) as engine:
        busy = engine.servers[1]
        fakes[1].hang = True
        await engine._check(busy)
        assert busy.available and busy.failed_checks == 1
        fakes[1].hang = False
        await engine._check(busy)  # one good answer resets the count
        assert busy.failed_checks == 0
        fakes[1].hang = True
        await engine._check(busy)
        await engine._check(busy)
        assert not busy.available and engine.stats.server_downs == 1
