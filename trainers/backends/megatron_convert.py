"""Hugging Face <-> Megatron-core weights and config for the Llama / Qwen2 families.

The Megatron backend trains megatron-core's ``GPTModel`` (tensor and pipeline
parallel on GPUs) while rollouts, checkpoints for servers and the final model
stay in Hugging Face format. These pure tensor maps are the bridge, and they
are what can be checked without a GPU: ``tests/trainers/test_megatron_convert.py``
loads converted weights into a real ``GPTModel`` on CPU and compares logits.

Layouts (megatron-core 0.12+):

* attention: one ``linear_qkv`` whose rows are grouped by query group: for each
  of the ``num_key_value_heads`` groups, its query heads, then its key head, then
  its value head (so a tensor-parallel split by rows keeps groups whole);
* MLP: one ``linear_fc1`` = ``[gate_proj; up_proj]`` (megatron's GLU applies
  the activation to the first half), ``linear_fc2`` = ``down_proj``;
* norms: with the local layer spec they are ``input_layernorm`` and
  ``pre_mlp_layernorm``; with Transformer Engine's spec (``fused_norms=True``)
  they live inside the next linear as ``layer_norm_weight``.

Departure: only dense decoder-only families with RMSNorm, RoPE, SwiGLU and
optional QKV bias (Llama, Mistral without sliding windows, Qwen2/2.5) are mapped;
others raise ``ValueError`` naming the architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def _check(hf_config: Any) -> None:
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"train.backend=megatron supports model types {SUPPORTED_MODEL_TYPES}, "
            f"got {model_type!r}"
        )


def _dims(hf_config: Any) -> tuple[int, int, int, int]:
    heads = hf_config.num_attention_heads
    groups = getattr(hf_config, "num_key_value_heads", None) or heads
    hidden = hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
    return heads, groups, head_dim, hidden


def _qkv_bias(hf_config: Any) -> bool:
    if hf_config.model_type == "qwen2":
        return True
    return bool(getattr(hf_config, "attention_bias", False))


def megatron_model_kwargs(hf_config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(TransformerConfig kwargs, GPTModel kwargs)`` describing ``hf_config``'s model.

    Only architecture fields; parallelism, precision and fusions are the
    backend's choice and are added by it.
    """
    _check(hf_config)
    heads, groups, head_dim, hidden = _dims(hf_config)
    transformer = {
        "num_layers": hf_config.num_hidden_layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_query_groups": groups,
        "kv_channels": head_dim,
        "ffn_hidden_size": hf_config.intermediate_size,
        "gated_linear_unit": True,
        "activation_func": torch.nn.functional.silu,
        "normalization": "RMSNorm",
        "layernorm_epsilon": hf_config.rms_norm_eps,
        "add_bias_linear": False,
        "add_qkv_bias": _qkv_bias(hf_config),
    }
    gpt = {
        "vocab_size": hf_config.vocab_size,
        "max_sequence_length": hf_config.max_position_embeddings,
        "position_embedding_type": "rope",
        "rotary_base": getattr(hf_config, "rope_theta", 10000.0),
        "share_embeddings_and_output_weights": bool(hf_config.tie_word_embeddings),
    }
    return transformer, gpt


def _norm_names(i: int, fused_norms: bool) -> tuple[str, str]:
    layer = f"decoder.layers.{i}"
    if fused_norms:
        return (
            f"{layer}.self_attention.linear_qkv.layer_norm_weight",
            f"{layer}.mlp.linear_fc1.layer_norm_weight",
        )
    return f"{layer}.input_layernorm.weight", f"{layer}.pre_mlp_layernorm.weight"


def _taker(state: dict[str, torch.Tensor], side: str) -> Callable[[str], torch.Tensor]:
    """``state[name]``, or a ValueError naming the missing weight and whose state dict it is."""

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise ValueError(f"{side} state dict has no {name!r}")
        return state[name]

    return take


def hf_to_megatron(
    state: dict[str, torch.Tensor], hf_config: Any, *, fused_norms: bool = False
) -> dict[str, torch.Tensor]:
    """Megatron ``GPTModel`` state dict from a HF causal-LM state dict.

    Raises:
        ValueError: an unsupported architecture, or a missing HF weight (named).
    """
    _check(hf_config)
    heads, groups, head_dim, hidden = _dims(hf_config)
    per_group = heads // groups
    bias = _qkv_bias(hf_config)
    take = _taker(state, "HF")

    out = {"embedding.word_embeddings.weight": take("model.embed_tokens.weight")}
    for i in range(hf_config.num_hidden_layers):
        hf, mg = f"model.layers.{i}", f"decoder.layers.{i}"
        q = take(f"{hf}.self_attn.q_proj.weight").view(groups, per_group * head_dim, hidden)
        k = take(f"{hf}.self_attn.k_proj.weight").view(groups, head_dim, hidden)
        v = take(f"{hf}.self_attn.v_proj.weight").view(groups, head_dim, hidden)
        out[f"{mg}.self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(
            -1, hidden
        )
        if bias:
            qb = take(f"{hf}.self_attn.q_proj.bias").view(groups, per_group * head_dim)
            kb = take(f"{hf}.self_attn.k_proj.bias").view(groups, head_dim)
            vb = take(f"{hf}.self_attn.v_proj.bias").view(groups, head_dim)
            out[f"{mg}.self_attention.linear_qkv.bias"] = torch.cat([qb, kb, vb], 1).reshape(-1)
        out[f"{mg}.self_attention.linear_proj.weight"] = take(f"{hf}.self_attn.o_proj.weight")
        out[f"{mg}.mlp.linear_fc1.weight"] = torch.cat(
            [take(f"{hf}.mlp.gate_proj.weight"), take(f"{hf}.mlp.up_proj.weight")], dim=0
        )
        out[f"{mg}.mlp.linear_fc2.weight"] = take(f"{hf}.mlp.down_proj.weight")
        attn_norm, mlp_norm = _norm_names(i, fused_norms)
        out[attn_norm] = take(f"{hf}.input_layernorm.weight")
        out[mlp_norm] = take(f"{hf}.post_attention_layernorm.weight")
    out["decoder.final_layernorm.weight"] = take("model.norm.weight")
    if not hf_config.tie_word_embeddings:
        out["output_layer.weight"] = take("lm_head.weight")
    return out


def megatron_to_hf(
    state: dict[str, torch.Tensor], hf_config: Any, *, fused_norms: bool = False
) -> dict[str, torch.Tensor]:
    """HF causal-LM state dict from a Megatron ``GPTModel`` state dict (the inverse).

    Megatron's ``_extra_state`` entries (Transformer Engine metadata) are ignored.

    Raises:
        ValueError: an unsupported architecture, or a missing Megatron weight (named).
    """
    _check(hf_config)
    heads, groups, head_dim, hidden = _dims(hf_config)
    per_group = heads // groups
    bias = _qkv_bias(hf_config)
    take = _taker(state, "Megatron")

    out = {"model.embed_tokens.weight": take("embedding.word_embeddings.weight")}
    sizes = [per_group * head_dim, head_dim, head_dim]
    for i in range(hf_config.num_hidden_layers):
        hf, mg = f"model.layers.{i}", f"decoder.layers.{i}"
        qkv = take(f"{mg}.self_attention.linear_qkv.weight").view(groups, -1, hidden)
        q, k, v = qkv.split(sizes, dim=1)
        out[f"{hf}.self_attn.q_proj.weight"] = q.reshape(-1, hidden)
        out[f"{hf}.self_attn.k_proj.weight"] = k.reshape(-1, hidden)
        out[f"{hf}.self_attn.v_proj.weight"] = v.reshape(-1, hidden)
        if bias:
            qb, kb, vb = (
                take(f"{mg}.self_attention.linear_qkv.bias").view(groups, -1).split(sizes, dim=1)
            )
            out[f"{hf}.self_attn.q_proj.bias"] = qb.reshape(-1)
            out[f"{hf}.self_attn.k_proj.bias"] = kb.reshape(-1)
            out[f"{hf}.self_attn.v_proj.bias"] = vb.reshape(-1)
        out[f"{hf}.self_attn.o_proj.weight"] = take(f"{mg}.self_attention.linear_proj.weight")
        gate, up = take(f"{mg}.mlp.linear_fc1.weight").chunk(2, dim=0)
        out[f"{hf}.mlp.gate_proj.weight"] = gate
        out[f"{hf}.mlp.up_proj.weight"] = up
        out[f"{hf}.mlp.down_proj.weight"] = take(f"{mg}.mlp.linear_fc2.weight")
        attn_norm, mlp_norm = _norm_names(i, fused_norms)
        out[f"{hf}.input_layernorm.weight"] = take(attn_norm)
        out[f"{hf}.post_attention_layernorm.weight"] = take(mlp_norm)
    out["model.norm.weight"] = take("decoder.final_layernorm.weight")
    if not hf_config.tie_word_embeddings:
        out["lm_head.weight"] = take("output_layer.weight")
    return out
