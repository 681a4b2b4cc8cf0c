"""Settings of ``train.backend=fsdp`` (``train.fsdp.*``).

Kept in its own module so that ``base.TrainConfig`` can hold it without
importing torch.distributed's FSDP machinery.
"""

from __future__ import annotations

from dataclasses import dataclass

MIXED_PRECISIONS = ("fp32", "bf16")
"""Valid values of ``train.fsdp.mixed_precision``."""


@dataclass(kw_only=True, slots=True)
class FSDPConfig:
    """FSDP2 options; ignored by the other backends."""

    mixed_precision: str = "fp32"
    """fp32, or bf16: parameters are cast to bf16 for forward/backward while the
    sharded master weights, optimizer state and gradient reduction stay fp32."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward (less memory, ~30% more compute)."""
    timeout_s: float = 3600.0
    """Collective timeout. Ranks other than 0 wait in a broadcast while rank 0 runs
    the warm start and the rollouts of a step, so this bounds that wait too."""

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"train.fsdp.mixed_precision must be one of {MIXED_PRECISIONS}, "
                f"got {self.mixed_precision!r}"
            )
        if self.timeout_s <= 0:
            raise ValueError(f"train.fsdp.timeout_s must be > 0, got {self.timeout_s}")
