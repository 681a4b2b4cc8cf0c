"""The root config tree of the GRPO-family trainers.

Every component owns its config dataclass (ModelConfig in areal_env.config,
RolloutConfig beside the scheduler, LocalEngineConfig beside the engine, ...);
this module only assembles them. The defaults are the embedded default run:
a tiny Qwen2 built offline, a short SFT warm start, then GRPO on 1-2 digit
addition/subtraction, which learns on 2 CPU cores in a few minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from areal_env.config import CheckpointConfig, EnvConfig, MetricsConfig, ModelConfig
from areal_env.inference.chat_client import SamplingConfig
from areal_env.inference.local import LocalEngineConfig
from areal_env.rollout.scheduler import RolloutConfig
from areal_env.trainers.algorithms.presets import PRESETS
from areal_env.trainers.backends.base import TrainConfig

AGENTS = ("single_turn",)
"""Valid values of ``agent.name``."""


@dataclass(kw_only=True, slots=True)
class AlgorithmConfig:
    """A preset name plus optional overrides of its choices (None keeps the preset's)."""

    preset: str = "grpo"
    """Key of trainers/algorithms/presets.PRESETS."""
    kl_coef: float | None = None
    """Weight of the KL penalty to the frozen reference (warm-start) model."""
    kl_estimator: str | None = None
    """k1, k2 or k3."""
    clip_low: float | None = None
    """PPO ratio lower clip (1 - clip_low)."""
    clip_high: float | None = None
    """PPO ratio upper clip (1 + clip_high)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(
                f"algorithm.preset must be one of {sorted(PRESETS)}, got {self.preset!r}"
            )


@dataclass(kw_only=True, slots=True)
class InferenceConfig:
    """How rollouts are generated."""

    backend: str = "local"
    """'local': the in-process transformers engine."""
    local: LocalEngineConfig = field(default_factory=LocalEngineConfig)
    """Settings of the local engine."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Default sampling of every completion."""

    def __post_init__(self) -> None:
        if self.backend != "local":
            raise ValueError(f"inference.backend must be one of ('local',), got {self.backend!r}")


@dataclass(kw_only=True, slots=True)
class AgentConfig:
    """Which agent plays the episodes."""

    name: str = "single_turn"
    """One of AGENTS."""

    def __post_init__(self) -> None:
        if self.name not in AGENTS:
            raise ValueError(f"agent.name must be one of {AGENTS}, got {self.name!r}")


@dataclass(kw_only=True, slots=True)
class WarmStartConfig:
    """Supervised warm start on the env's reference answers before RL.

    A from-scratch model never samples a correct answer, so GRPO would see only
    all-zero groups. SFT stops as soon as sampled accuracy reaches the target,
    leaving mostly mixed groups for RL to learn from.
    """

    enabled: bool = True
    """Run the warm start (skipped on resume)."""
    lr: float = 2e-3
    """Peak learning rate."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    batch_size: int = 128
    """Demonstrations per step."""
    max_steps: int = 1500
    """Give up growing accuracy after this many steps."""
    target_accuracy: float = 0.2
    """Stop once sampled accuracy (at the rollout temperature) reaches this."""
    eval_every: int = 10
    """Steps between accuracy checks; frequent checks stop close to the target (at 25,
    one seed overshot to 0.24 and its RL gain fell below 0.2)."""
    eval_episodes: int = 128
    """Episodes per accuracy check."""
    num_demos: int = 4096
    """Size of the demonstration pool drawn from the env."""


@dataclass(kw_only=True, slots=True)
class GRPOConfig:
    """Root config of trainers/grpo.py."""

    seed: int = 1
    """Seeds torch, numpy, python and the task stream."""
    output_dir: str = "outputs/grpo"
    """Metrics, plots, checkpoints and the final model go here."""
    recover: bool = False
    """Continue from the last checkpoint in output_dir (also: --resume)."""
    torch_threads: int = 0
    """Intra-op CPU threads for torch; 0 keeps torch's default (one per core)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    inference: InferenceConfig = field(
        default_factory=lambda: InferenceConfig(
            sampling=SamplingConfig(max_new_tokens=6, temperature=1.0)
        )
    )
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=lambda: AlgorithmConfig(kl_coef=0.1))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, lr=2.5e-4))
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def main() -> None:
    """Print the config reference of the GRPO trainer (docs/config.md)."""
    from areal_env.config_reference import render_reference

    print(render_reference(GRPOConfig, "Config reference: trainers/grpo.py"), end="")


if __name__ == "__main__":
    main()
