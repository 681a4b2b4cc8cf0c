"""The root config tree of the GRPO-family trainers.

Every component owns its config dataclass (ModelConfig in areal_env.config,
RolloutConfig beside the scheduler, LocalEngineConfig beside the engine, ...);
this module only assembles them. The defaults are the embedded default run:
a tiny Qwen2 built offline, a short SFT warm start, then GRPO on 1-2 digit
addition/subtraction, which learns on 2 CPU cores in a few minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from areal_env.agents.registry import AGENTS
from areal_env.config import (
    CheckpointConfig,
    EnvConfig,
    MetricsConfig,
    ModelConfig,
    TrainEvalConfig,
)
from areal_env.inference.chat_client import SamplingConfig
from areal_env.inference.registry import InferenceConfig, check_lora_adapters
from areal_env.rollout.scheduler import RolloutConfig
from areal_env.trainers.algorithms.decoupled import PROXIMAL_POLICIES, decoupled_loss
from areal_env.trainers.algorithms.losses.base import LossFn
from areal_env.trainers.algorithms.presets import PRESETS, Preset, resolve_preset
from areal_env.trainers.backends.base import TrainConfig


@dataclass(kw_only=True, slots=True)
class AlgorithmConfig:
    """A preset name plus optional overrides of its choices (None keeps the preset's)."""

    preset: str = "grpo"
    """Key of trainers/algorithms/presets.PRESETS."""
    kl_coef: float | None = None
    """Weight of the KL penalty to the frozen reference (warm-start) model (>= 0)."""
    kl_estimator: str | None = None
    """k1, k2 or k3."""
    clip_low: float | None = None
    """PPO ratio lower clip (1 - clip_low), in [0, 1)."""
    clip_high: float | None = None
    """PPO ratio upper clip (1 + clip_high), >= 0."""
    tau_pos: float | None = None
    """SAPO: gate temperature for positive advantages (> 0)."""
    tau_neg: float | None = None
    """SAPO: gate temperature for negative advantages (> 0)."""
    m2_threshold: float | None = None
    """M2PO: the bound on the kept tokens' mean squared log-ratio (> 0)."""
    icepop_low: float | None = None
    """IcePop: tokens whose train/inference probability ratio is below this are masked."""
    icepop_high: float | None = None
    """IcePop: tokens whose train/inference probability ratio is above this are masked."""
    overlong_buffer_frac: float | None = None
    """DAPO's overlong penalty ramps over this last fraction of the token budget; 0 = off."""
    overlong_factor: float | None = None
    """DAPO's overlong penalty at the token budget (>= 0)."""
    proximal_policy: str = "none"
    """Decoupled PPO (AReaL): "none" (ratio against the behaviour policy), "recompute"
    (ratio against the weights at the step's start, one extra forward pass) or
    "loglinear" (AReaL's version-interpolated approximation, no extra pass)."""
    behaviour_weight_cap: float | None = 5.0
    """Decoupled PPO: tokens whose behaviour weight pi_prox / pi_behav exceeds this are
    dropped (counted in loss/behav_dropped_frac); None: no cap. Unused with "none"."""

    def __post_init__(self) -> None:
        self.check_decoupled()
        if self.preset not in PRESETS:
            raise ValueError(
                f"algorithm.preset must be one of {sorted(PRESETS)}, got {self.preset!r}"
            )
        try:
            self.resolved()
        except ValueError as e:
            raise ValueError(f"algorithm.{e}") from None

    def check_decoupled(self) -> None:
        """Raise ValueError naming a bad decoupled-PPO key."""
        if self.proximal_policy not in PROXIMAL_POLICIES:
            raise ValueError(
                f"algorithm.proximal_policy must be one of {PROXIMAL_POLICIES}, "
                f"got {self.proximal_policy!r}"
            )
        if self.behaviour_weight_cap is not None and self.behaviour_weight_cap <= 1.0:
            raise ValueError(
                f"algorithm.behaviour_weight_cap must be > 1 or None, "
                f"got {self.behaviour_weight_cap}"
            )

    def step_loss(self, loss_fn: LossFn, *, version: int) -> LossFn:
        """The preset's loss for the step that starts at weight ``version``.

        Decoupled PPO wraps it; with ``proximal_policy=none`` it is ``loss_fn`` itself.
        """
        return decoupled_loss(
            loss_fn,
            proximal=self.proximal_policy,
            weight_cap=self.behaviour_weight_cap,
            proximal_version=version,
        )

    def resolved(self) -> Preset:
        """The preset with the keys the user set replaced."""
        return resolve_preset(
            self.preset,
            kl_coef=self.kl_coef,
            kl_estimator=self.kl_estimator,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            tau_pos=self.tau_pos,
            tau_neg=self.tau_neg,
            m2_threshold=self.m2_threshold,
            icepop_low=self.icepop_low,
            icepop_high=self.icepop_high,
            overlong_buffer_frac=self.overlong_buffer_frac,
            overlong_factor=self.overlong_factor,
        )


@dataclass(kw_only=True, slots=True)
class AgentConfig:
    """Which agent plays the episodes, and its options."""

    name: str = "single_turn"
    """A key of agents/registry.AGENTS."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the agent's constructor."""

    def __post_init__(self) -> None:
        if self.name not in AGENTS:
            raise ValueError(f"agent.name must be one of {sorted(AGENTS)}, got {self.name!r}")


@dataclass(kw_only=True, slots=True)
class WarmStartConfig:
    """Supervised warm start on the env's reference answers before RL.

    A from-scratch model never samples a correct answer, so GRPO would see only
    all-zero groups. SFT stops once sampled accuracy (the mean of the last
    ``accuracy_window`` checks) reaches the target, leaving mostly mixed groups for RL
    to learn from.
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
    accuracy_window: int = 3
    """Stop on the mean of this many most recent checks: one check of 128 episodes has a
    standard error of ~0.035 at 0.2, so the first single check over the target is mostly
    a lucky one (seed 4 stopped at a measured 0.227 and began RL at 0.155)."""
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
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, lr=2.5e-4))
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)
    """Evaluation on held-out tasks during training (off by default; docs/monitoring.md)."""

    def __post_init__(self) -> None:
        preset = self.algorithm.resolved()
        if preset.group_relative and self.rollout.n_samples < 2:
            raise ValueError(
                f"rollout.n_samples must be >= 2 for algorithm.preset={self.algorithm.preset!r}: "
                f"its advantage ({preset.advantage}) compares the episodes of a group, and a "
                f"group of {self.rollout.n_samples} has nothing to compare"
            )
        if self.inference.lora_adapters:
            check_lora_adapters(self.train.lora.rank, self.train.lora.target_modules)


def main() -> None:
    """Print the config reference of the GRPO trainer (docs/config.md)."""
    from areal_env.config_reference import render_reference

    print(render_reference(GRPOConfig, "Config reference: trainers/grpo.py"), end="")


if __name__ == "__main__":
    main()
