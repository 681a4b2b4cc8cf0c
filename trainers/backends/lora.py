"""LoRA (Hu et al. 2021) through ``peft``: train low-rank adapters on a frozen base.

``train.lora.rank > 0`` turns it on: :class:`~areal_env.trainers.backends.torch_single.
TorchBackend` wraps the policy with ``peft.get_peft_model`` and optimises only the
adapters (``lora_A``/``lora_B``). Inference never sees an adapter: the weights pushed
to engines and written for servers are *merged*, ``W + (alpha / rank) * B @ A`` for
every targeted module, under the base model's own parameter names
(:func:`merged_state_dict`). Checkpoints hold only the adapter (peft's
``adapter_model.safetensors`` + ``adapter_config.json``), plus a fingerprint of the
frozen base (and of the frozen KL reference model, instead of a copy of it) so
that resuming onto different weights fails loudly (:func:`weights_fingerprint`).

The merge is computed per targeted module with peft's own ``get_delta_weight``
(one ``B @ A`` matmul each) into new tensors; the adapter and the base stay
untouched, and untargeted tensors are shared, not copied.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

ADAPTER = "default"
"""peft's name of the one adapter the backend trains."""


@dataclass(kw_only=True, slots=True)
class LoRAConfig:
    """Low-rank adapters instead of full fine-tuning (``train.lora.*``); off by default."""

    rank: int = 0
    """Adapter rank r; 0 turns LoRA off (full fine-tuning). LoRA usually wants a
    learning rate about 10x the full fine-tuning one."""
    alpha: float = 16.0
    """Scale numerator: the update is (alpha / rank) * B @ A (> 0)."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Names (suffixes) of the linear modules that get adapters, e.g. [q_proj, v_proj];
    non-empty when rank > 0."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training, in [0, 1)."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"train.lora.rank must be >= 0, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"train.lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"train.lora.dropout must be in [0, 1), got {self.dropout}")
        if self.rank > 0 and not list(self.target_modules):
            raise ValueError("train.lora.target_modules must be non-empty when rank > 0")

    @property
    def enabled(self) -> bool:
        """True when adapters are trained (rank > 0)."""
        return self.rank > 0


def wrap_with_lora(model: torch.nn.Module, config: LoRAConfig) -> Any:
    """``model`` wrapped by ``peft.get_peft_model``: only the adapters are trainable.

    peft injects the adapter layers into ``model`` in place, so ``model`` itself
    then holds ``base_layer``/``lora_*`` parameters; use :func:`merged_state_dict`
    for plain weights.
    """
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # hinted int; a float scales alike
        target_modules=list(config.target_modules),
        lora_dropout=config.dropout,
        bias="none",
    )
    return get_peft_model(model, peft_config, adapter_name=ADAPTER)


def lora_layers(peft_model: Any) -> dict[str, Any]:
    """``{module name in the base model: peft LoraLayer}`` for every targeted module."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    return {n: m for n, m in base.named_modules() if isinstance(m, LoraLayer)}


def _plain_name(key: str) -> str:
    return key.replace(".base_layer.", ".")


def _is_adapter_key(key: str) -> bool:
    return any(part.startswith("lora_") for part in key.split("."))


def merged_state_dict(peft_model: Any) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter merged in, under the base's names.

    Targeted weights are new tensors ``W + get_delta_weight()`` (peft's own
    ``(alpha / rank) * B @ A``); everything else is the live tensor, detached and
    shared, as in the full fine-tuning backend. The adapters are not modified.
    """
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in lora_layers(peft_model).items():
            weight = layer.get_base_layer().weight
            delta = layer.get_delta_weight(ADAPTER)
            merged[f"{name}.weight"] = (weight + delta.to(weight.dtype)).detach()
    out: dict[str, torch.Tensor] = {}
    for key, value in peft_model.get_base_model().state_dict().items():
        if _is_adapter_key(key):
            continue
        plain = _plain_name(key)
        out[plain] = merged.get(plain, value.detach())
    return out


def base_state_dict(peft_model: Any) -> dict[str, torch.Tensor]:
    """The frozen base's state dict under its own names, without the adapters.

    What a server that applies the adapter itself (``inference.lora_adapters``) must
    hold underneath it; shared tensors, no copy.
    """
    base = peft_model.get_base_model()
    return {
        _plain_name(k): v.detach() for k, v in base.state_dict().items() if not _is_adapter_key(k)
    }


def weights_fingerprint(model: Any) -> str:
    """SHA-256 over a model's parameter names and bytes; for a peft model, its frozen base.

    Checkpoints store only the adapter, so resume must put it back on the very
    base it was trained on (e.g. a warm-started one), next to the same frozen KL
    reference; this is how that is checked. A plain model and a peft model
    wrapped around an identical copy of it give the same fingerprint.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    digest = hashlib.sha256()
    for key, value in sorted(base.state_dict().items()):
        if _is_adapter_key(key):
            continue
        digest.update(_plain_name(key).encode())
        digest.update(str(value.dtype).encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
