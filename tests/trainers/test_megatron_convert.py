"""HF <-> Megatron weight conversion, checked against a REAL megatron-core GPTModel on CPU.

megatron-core runs on CPU for a forward pass with three test-only patches (it
names CUDA in its RoPE cache, its default causal mask and its RNG tracker); the
model itself, its fused QKV split and its GLU are megatron's own code.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from areal_env.trainers.backends.megatron_convert import (
    hf_to_megatron,
    megatron_model_kwargs,
    megatron_to_hf,
)


def _qwen2(tied=False):
    config = Qwen2Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,  # grouped-query attention: 4 query heads per group
        max_position_embeddings=64,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a wrong map shows
        for name, p in model.named_parameters():
            if name.endswith(("bias", "norm.weight", "layernorm.weight")):
                p.add_(torch.randn_like(p) * 0.3)
    return config, model


def _llama():
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    torch.manual_seed(1)
    return config, LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def megatron_on_cpu():
    """A 1-rank model-parallel world and the CPU patches, for the module's tests."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mrandom

    patcher = pytest.MonkeyPatch()
    patcher.setattr(torch.cuda, "current_device", lambda: "cpu")
    patcher.setattr(
        mrandom.CudaRNGStatesTracker, "fork", lambda self, name="": contextlib.nullcontext()
    )
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    started = not torch.distributed.is_initialized()
    if started:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
        )
    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()
    if started:
        torch.distributed.destroy_process_group()
    patcher.undo()


def _gpt_model(hf_config):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    transformer, gpt = megatron_model_kwargs(hf_config)
    config = TransformerConfig(
        **transformer,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    return GPTModel(config=config, transformer_layer_spec=spec, **gpt).eval()


def _megatron_logits(model, ids):
    n = ids.shape[1]
    mask = torch.triu(torch.ones(1, 1, n, n), diagonal=1).bool()
    with torch.no_grad():
        return model(ids, torch.arange(n)[None], attention_mask=mask)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_converted_weights_give_megatron_the_hf_logits(megatron_on_cpu, family):
    hf_config, hf_model = _qwen2() if family == "qwen2" else _llama()
    mg_model = _gpt_model(hf_config)
    converted = hf_to_megatron(hf_model.state_dict(), hf_config)
    missing, unexpected = mg_model.load_state_dict(converted, strict=False)
    assert not unexpected
    assert all(k.endswith("_extra_state") for k in missing), missing
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])
    with torch.no_grad():
        want = hf_model(ids).logits
    got = _megatron_logits(mg_model, ids)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_a_wrong_head_grouping_is_caught(megatron_on_cpu):
    """Guards the test itself: interleaving q/k/v across groups must change the logits."""
    hf_config, hf_model = _qwen2()
    mg_model = _gpt_model(hf_config)
    converted = hf_to_megatron(hf_model.state_dict(), hf_config)
    key = "decoder.layers.0.self_attention.linear_qkv.weight"
    groups, hidden = hf_config.num_key_value_heads, hf_config.hidden_size
    converted[key] = converted[key].view(groups, -1, hidden).flip(0).reshape(-1, hidden)
    mg_model.load_state_dict(converted, strict=False)
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        want = hf_model(ids).logits
    assert not torch.allclose(_megatron_logits(mg_model, ids), want, atol=1e-3)


@pytest.mark.parametrize("fused_norms", [False, True])
@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_is_exact(fused_norms, tied):
    hf_config, hf_model = _qwen2(tied=tied)
    state = {k: v for k, v in hf_model.state_dict().items() if not (tied and k == "lm_head.weight")}
    mg = hf_to_megatron(state, hf_config, fused_norms=fused_norms)
    assert ("output_layer.weight" in mg) is not tied
    norm = "decoder.layers.0.mlp.linear_fc1.layer_norm_weight"
    assert (norm in mg) is fused_norms
    back = megatron_to_hf(mg, hf_config, fused_norms=fused_norms)
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name


def test_unsupported_models_and_missing_weights_are_named():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="model types.*'gpt2'"):
        megatron_model_kwargs(GPT2Config())
    hf_config, hf_model = _qwen2()
    state = dict(hf_model.state_dict())
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        hf_to_megatron(state, hf_config)
