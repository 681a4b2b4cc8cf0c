"""Settings of ``train.backend=megatron`` (``train.megatron.*``).

Kept in its own module, free of megatron-core imports, so that ``base.TrainConfig``
can hold it while megatron-core stays an optional extra.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True, slots=True)
class MegatronConfig:
    """Megatron-core model-parallel options; ignored by the other backends.

    The run needs ``tensor_parallel_size * pipeline_parallel_size`` ranks exactly
    (torchrun's ``--nproc-per-node``); data parallelism is not implemented here.
    """

    tensor_parallel_size: int = 1
    """Ranks each layer's weights are split over (heads, MLP columns, vocabulary).
    Must divide the attention heads, key/value heads and MLP width."""
    pipeline_parallel_size: int = 1
    """Pipeline stages; each stage holds ``num_layers / pipeline_parallel_size`` layers."""
    bf16: bool = False
    """Run forward/backward under bf16 autocast; parameters, gradients and AdamW
    stay fp32 (like ``train.fsdp.mixed_precision=bf16``). GPU only."""
    timeout_s: float = 3600.0
    """Collective timeout. Ranks other than 0 wait in a broadcast while rank 0 runs
    the warm start and the rollouts of a step, so this bounds that wait too."""

    def __post_init__(self) -> None:
        for key in ("tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"train.megatron.{key} must be an integer >= 1, got {value!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"train.megatron.timeout_s must be > 0, got {self.timeout_s}")

    @property
    def world_size(self) -> int:
        """Ranks the layout needs: one per (tensor, pipeline) coordinate."""
        return self.tensor_parallel_size * self.pipeline_parallel_size
