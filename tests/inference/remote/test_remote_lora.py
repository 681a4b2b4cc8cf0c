"""RemoteEngine pushing LoRA adapters to fake vLLM servers (``inference.lora_adapters``).

The fake server applies an adapter loaded from ``.../v00000N`` as weights ``N``
to the requests that name it as ``model``, so a token's logprob still says which
weights produced it, and a request naming an unloaded adapter fails as on vLLM.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from remote_fakes import FakeServer
from remote_harness import FAST, assert_provenance, engine_on, request, wait_for
from remote_harness import servers as any_servers

from areal_env.inference.registry import (
    EngineContext,
    InferenceConfig,
    check_lora_adapters,
    make_engine,
)
from areal_env.inference.remote.api import ServerStartupError
from areal_env.inference.remote.engine import RemoteEngine, adapter_name
from areal_env.inference.remote.launch import (
    LORA_SERVER_ENV,
    VLLM_MAX_LORA_RANKS,
    vllm_lora_args,
)
from areal_env.trainers.weight_sync import make_update
from areal_env.types import WeightUpdate


def servers(n=1, **kwargs):
    """Fake vLLM servers with run-time LoRA loading."""
    return any_servers(n, lora=True, **kwargs)


def lora_engine(fakes, **kwargs):
    return engine_on(fakes, lora_adapters=True, **kwargs)


def folder(version):
    return f"/adapters/v{version:06d}"


async def push_adapter(engine, version):
    await engine.update_weights(WeightUpdate(version=version, path=folder(version), adapter=True))


# ---- loading and naming -----------------------------------------------------------------


async def test_adapters_load_by_name_and_requests_switch_to_the_new_one():
    async with servers(2) as fakes, lora_engine(fakes) as engine:
        assert engine.weight_transports == ("lora_adapter", "disk")
        before = await engine.agenerate(request())
        assert [r["model"] for f in fakes for r in f.requests] == ["policy"]
        assert before.output_versions == [0] * 8 and engine.adapter is None
        await push_adapter(engine, 1)
        for fake in fakes:
            assert fake.adapter_loads == [("policy-v1", "/adapters/v000001")]
            assert fake.weight_version == "1"
            assert fake.loads == []  # no full-weight reload
        assert engine.adapter == adapter_name(1) == "policy-v1" and engine.version == 1
        after = await engine.agenerate(request())
        assert after.output_versions == [1] * 8
        assert_provenance(after)
        assert sorted(r["model"] for f in fakes for r in f.requests) == ["policy", "policy-v1"]


async def test_the_previous_adapter_is_unloaded_once_unused():
    async with servers() as fakes, lora_engine(fakes) as engine:
        await push_adapter(engine, 1)
        await push_adapter(engine, 2)
        await wait_for(lambda: fakes[0].adapter_unloads == ["policy-v1"])
        assert set(fakes[0].adapters) == {"policy-v2"}
        await push_adapter(engine, 3)
        await wait_for(lambda: fakes[0].adapter_unloads == ["policy-v1", "policy-v2"])
        result = await engine.agenerate(request())
        assert fakes[0].requests[-1]["model"] == "policy-v3"
        assert result.output_versions == [3] * 8
        assert_provenance(result)


async def test_an_update_interrupts_and_continues_on_the_new_adapter():
    async with servers(token_delay=0.005) as fakes, lora_engine(fakes) as engine:
        await push_adapter(engine, 1)
        task = asyncio.create_task(engine.agenerate(request((5,), 200)))
        await wait_for(lambda: fakes[0].requests)
        await asyncio.sleep(0.1)
        await push_adapter(engine, 2)
        assert not task.done()
        result = await task
        assert len(result.output_ids) == 200 and result.finish_reason == "length"
        n1 = result.output_versions.count(1)
        assert 0 < n1 < 200 and result.output_versions == [1] * n1 + [2] * (200 - n1)
        assert_provenance(result)
        assert [r["model"] for r in fakes[0].requests] == ["policy-v1", "policy-v2"]
        await wait_for(lambda: fakes[0].adapter_unloads == ["policy-v1"])


async def test_an_old_adapter_stays_while_a_late_request_still_names_it():
    """A chunk sent just before the pause reaches the server after the update: the
    adapter it names must still be there (it is discarded and generated again)."""
    async with (
        servers(token_delay=0.001, arrival_delay=0.05) as fakes,
        lora_engine(fakes) as engine,
    ):
        await push_adapter(engine, 1)
        task = asyncio.create_task(engine.agenerate(request((5,), 20)))
        await asyncio.sleep(0.01)  # sent, not yet arrived
        await push_adapter(engine, 2)
        assert "policy-v1" in fakes[0].adapters  # still named by the chunk in flight
        result = await task
        assert result.output_versions == [2] * 20
        assert_provenance(result)
        assert engine.stats.discarded_chunks == 1
        await wait_for(lambda: fakes[0].adapter_unloads == ["policy-v1"])


async def test_versions_never_lie_when_requests_race_adapter_updates():
    async with (
        servers(2, token_delay=0.001, arrival_delay=0.02) as fakes,
        lora_engine(fakes) as engine,
    ):
        tasks = [
            asyncio.create_task(engine.agenerate(request((i % 50 + 1,), 30, session=f"s{i}")))
            for i in range(30)
        ]
        for version in range(1, 5):
            await asyncio.sleep(0.015)
            await push_adapter(engine, version)
        results = await asyncio.gather(*tasks)
        for result in results:
            assert len(result.output_ids) == 30
            assert_provenance(result)
        assert engine.stats.failed_requests == 0
        await wait_for(lambda: all(set(f.adapters) == {"policy-v4"} for f in fakes))


async def test_a_rejoining_server_loads_the_latest_adapter():
    async with servers(2, token_delay=0.002) as fakes, lora_engine(fakes) as engine:
        await push_adapter(engine, 1)
        await fakes[1].stop()
        await wait_for(lambda: not engine.servers[1].available)
        await push_adapter(engine, 2)  # only server 0 gets it
        assert fakes[1].adapter_loads == [("policy-v1", "/adapters/v000001")]
        await fakes[1].restart()  # back with no adapter, version "default"
        await wait_for(lambda: engine.servers[1].available)
        assert fakes[1].adapter_loads[-1] == ("policy-v2", "/adapters/v000002")
        assert set(fakes[1].adapters) == {"policy-v2"} and fakes[1].weight_version == "2"
        fakes[1].requests.clear()
        results = await asyncio.gather(
            *(engine.agenerate(request((5,), 6, session=f"n{i}")) for i in range(6))
        )
        assert fakes[1].requests and {r["model"] for r in fakes[1].requests} == {"policy-v2"}
        for result in results:
            assert result.output_versions == [2] * 6
            assert_provenance(result)


async def test_the_first_adapter_push_carries_the_base_and_a_rejoin_reloads_it():
    async with servers(2, token_delay=0.002) as fakes, lora_engine(fakes) as engine:
        assert engine.needs_base
        update = WeightUpdate(
            version=1, path=folder(1), adapter=True, base_path="/weights/base/v000007"
        )
        await engine.update_weights(update)
        assert not engine.needs_base
        for fake in fakes:  # the base first, then the adapter on it
            assert fake.loads == ["/weights/base/v000007"] and fake.weights == 7
            assert fake.adapter_loads == [("policy-v1", "/adapters/v000001")]
        await push_adapter(engine, 2)
        assert fakes[0].loads == ["/weights/base/v000007"]  # not again
        await fakes[1].stop()
        await wait_for(lambda: not engine.servers[1].available)
        await fakes[1].restart()  # back on its start-up model
        await wait_for(lambda: engine.servers[1].available)
        assert fakes[1].weights == 7 and set(fakes[1].adapters) == {"policy-v2"}


async def test_full_weights_after_adapters_go_back_to_the_base_name():
    async with servers() as fakes, lora_engine(fakes) as engine:
        await push_adapter(engine, 1)
        await engine.update_weights(WeightUpdate(version=2, path="/weights/v000002"))
        assert engine.adapter is None
        result = await engine.agenerate(request())
        assert fakes[0].requests[-1]["model"] == "policy"
        assert result.output_versions == [2] * 8
        assert_provenance(result)
        await wait_for(lambda: fakes[0].adapter_unloads == ["policy-v1"])


# ---- errors ---------------------------------------------------------------------------


async def test_a_server_without_runtime_lora_routes_fails_start_up_naming_the_flags():
    fake = FakeServer("vllm", lora=False)
    await fake.start()
    try:
        engine = RemoteEngine("vllm", [fake.url], FAST, lora_adapters=True)
        with pytest.raises(ServerStartupError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            await engine.start()
        await engine.close()
    finally:
        await fake.stop()


async def test_a_server_without_enable_lora_fails_the_load_naming_the_flag():
    async with servers(lora_enabled=False) as fakes, lora_engine(fakes) as engine:
        with pytest.raises(RuntimeError, match="--enable-lora"):
            await push_adapter(engine, 1)
        assert engine.version == 0 and engine.adapter is None


async def test_adapter_updates_need_lora_adapters_on():
    async with servers() as fakes:
        engine = RemoteEngine("vllm", [f.url for f in fakes], FAST)
        try:
            assert engine.weight_transports == ("disk",)
            with pytest.raises(ValueError, match="inference.lora_adapters=true"):
                await push_adapter(engine, 1)
        finally:
            await engine.close()


def test_sglang_refuses_lora_adapters():
    with pytest.raises(ValueError, match="inference.backend=vllm"):
        RemoteEngine("sglang", ["http://127.0.0.1:1"], lora_adapters=True)
    with pytest.raises(ValueError, match="inference.lora_adapters=true needs inference.backend"):
        InferenceConfig(backend="sglang", servers=["http://127.0.0.1:1"], lora_adapters=True)


def test_config_checks_name_both_keys():
    with pytest.raises(ValueError, match="train.lora.rank > 0"):
        check_lora_adapters(0, ["q_proj"])
    with pytest.raises(ValueError, match=r"\['lm_head'\].*train.lora.target_modules"):
        check_lora_adapters(8, ["q_proj", "lm_head"])
    check_lora_adapters(8, ["q_proj", "v_proj"])
    config = InferenceConfig(backend="vllm", servers=["http://127.0.0.1:1"], lora_adapters=True)
    context = EngineContext(tokenizer=None, model_path="m", output_dir="o", load_model=dict)
    with pytest.raises(ValueError, match="train.lora.rank"):
        make_engine(config, context)


def test_grpo_config_refuses_lora_adapters_without_lora():
    from areal_env.trainers.config import GRPOConfig

    inference = InferenceConfig(backend="vllm", servers=["http://127.0.0.1:1"], lora_adapters=True)
    with pytest.raises(ValueError, match="train.lora.rank > 0"):
        GRPOConfig(inference=inference)


def test_vllm_lora_flags_round_the_rank_up_to_a_supported_one():
    assert vllm_lora_args(8) == ["--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"]
    assert vllm_lora_args(4)[2] == "8" and vllm_lora_args(17)[2] == "32"
    assert vllm_lora_args(1)[2] == "1"
    with pytest.raises(ValueError, match="train.lora.rank=600"):
        vllm_lora_args(VLLM_MAX_LORA_RANKS[-1] + 88)
    assert LORA_SERVER_ENV == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def test_vllm_venv_accepts_the_same_ranks():
    """Our list of ranks is vLLM's ``MaxLoRARanks`` (checked when the vLLM venv is here)."""
    source = Path(__file__).parents[3] / ".venv-vllm"
    found = list(source.glob("lib/python3*/site-packages/vllm/config/lora.py"))
    if not found:
        pytest.skip("no vLLM venv here")
    text = found[0].read_text()
    assert f"MaxLoRARanks = Literal[{', '.join(map(str, VLLM_MAX_LORA_RANKS))}]" in text


# ---- the trainer's side -----------------------------------------------------------------


class _Backend:
    def __init__(self, lora):
        self.lora = lora
        self.saved: list[tuple[str, str]] = []

    def save_adapter(self, path):
        Path(path).mkdir(parents=True)
        self.saved.append(("adapter", path))

    def save_weights(self, path):
        Path(path).mkdir(parents=True)
        self.saved.append(("weights", path))

    def weights_for_sync(self):
        return {"w": torch.zeros(1)}


class _Engine:
    weight_transports = ("lora_adapter", "disk")


def test_make_update_writes_only_the_adapter_for_a_lora_backend(tmp_path):
    backend = _Backend(lora=True)
    update = make_update(backend, _Engine(), version=3, weights_dir=tmp_path)
    assert update.adapter and update.path == str(tmp_path / "v000003")
    assert backend.saved == [("adapter", str(tmp_path / "v000003"))]
    full = _Backend(lora=False)
    update = make_update(full, _Engine(), version=4, weights_dir=tmp_path / "full")
    assert not update.adapter and full.saved == [("weights", str(tmp_path / "full/v000004"))]


def test_make_update_writes_the_base_when_the_engine_needs_it(tmp_path):
    class Backend(_Backend):
        def save_base(self, path):
            Path(path).mkdir(parents=True)
            self.saved.append(("base", path))

    class Engine(_Engine):
        needs_base = True

    backend = Backend(lora=True)
    update = make_update(backend, Engine(), version=0, weights_dir=tmp_path)
    assert update.adapter and update.base_path == str(tmp_path / "base")
    assert [kind for kind, _ in backend.saved] == ["base", "adapter"]
    for version in range(1, 4):  # pruning keeps the base
        make_update(backend, _Engine(), version=version, weights_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "v000002", "v000003"]


def test_make_update_names_a_backend_that_cannot_write_an_adapter(tmp_path):
    class NoAdapter:
        lora = True

    with pytest.raises(ValueError, match="cannot write its LoRA adapter"):
        make_update(NoAdapter(), _Engine(), version=1, weights_dir=tmp_path)


def test_torch_backend_saves_a_peft_adapter(tmp_path):
    from areal_env.models.tiny import build_tiny_model, load_model_and_tokenizer
    from areal_env.trainers.backends.base import TrainConfig
    from areal_env.trainers.backends.lora import LoRAConfig
    from areal_env.trainers.backends.torch_single import TorchBackend

    model, _ = load_model_and_tokenizer(build_tiny_model(tmp_path / "tiny"))
    backend = TorchBackend(model, TrainConfig(lora=LoRAConfig(rank=4)), pad_id=0)
    backend.save_adapter(str(tmp_path / "adapter"))
    written = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= written
    assert not any(name.startswith("model") for name in written)  # no full weights
    backend.save_base(str(tmp_path / "base"))
    from safetensors.torch import load_file

    saved = load_file(str(next((tmp_path / "base").glob("*.safetensors"))))
    assert not any("lora_" in k or "base_layer" in k for k in saved)
    plain = model.__class__(model.config).state_dict()
    assert set(saved) <= set(plain) and "model.layers.0.self_attn.q_proj.weight" in saved
    full = TorchBackend(model.__class__(model.config), TrainConfig(), pad_id=0)
    with pytest.raises(ValueError, match="train.lora.rank > 0"):
        full.save_adapter(str(tmp_path / "x"))
