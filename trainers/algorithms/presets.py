"""Algorithm presets: each named algorithm is one row of choices, not a code branch.

Every preset uses the token-level PPO clipped loss (``losses/ppo_clip.py``); they
differ in advantage estimator, aggregation, clip range, KL and group filtering.
Adding an algorithm means adding a row here and, at most, one estimator or loss.

All presets leave ``kl_coef`` at 0: with verifiable rewards the reference KL is not
needed (DAPO, Dr.GRPO) and dropping it saves the reference model's forward pass.
Set ``kl_coef`` (e.g. 0.04 with k3, as in the GRPO paper) to bring it back.

Example:
    >>> get_preset("dapo").clip_high
    0.28
"""

from __future__ import annotations

from dataclasses import dataclass

from areal_env.trainers.algorithms.advantages import ADVANTAGE_ESTIMATORS
from areal_env.trainers.algorithms.kl import KL_ESTIMATORS
from areal_env.trainers.algorithms.losses.aggregation import AGGREGATIONS


@dataclass(frozen=True, kw_only=True, slots=True)
class Preset:
    """The algorithmic choices that name an RL algorithm."""

    advantage: str
    """Key of ``advantages.ADVANTAGE_ESTIMATORS``."""
    aggregation: str = "token_mean"
    """Key of ``losses.aggregation.AGGREGATIONS``: how the per-token loss is reduced."""
    clip_low: float = 0.2
    """PPO ratio lower bound is ``1 - clip_low``."""
    clip_high: float = 0.2
    """PPO ratio upper bound is ``1 + clip_high``; larger than clip_low is clip-higher."""
    kl_coef: float = 0.0
    """Weight of the per-token KL to the reference model; 0 needs no reference model."""
    kl_estimator: str = "k3"
    """Key of ``kl.KL_ESTIMATORS``, used when ``kl_coef != 0``."""
    filter_all_equal_groups: bool = False
    """Whether the scheduler drops groups whose rewards are all equal (zero advantage,
    so no gradient), as in DAPO's dynamic sampling."""
    description: str = ""
    """One line on the algorithm and its paper."""

    def __post_init__(self) -> None:
        checks = (
            ("advantage", self.advantage, ADVANTAGE_ESTIMATORS),
            ("aggregation", self.aggregation, AGGREGATIONS),
            ("kl_estimator", self.kl_estimator, KL_ESTIMATORS),
        )
        for key, value, valid in checks:
            if value not in valid:
                raise ValueError(f"Preset.{key}={value!r} unknown; valid: {sorted(valid)}")
        if not (0.0 <= self.clip_low < 1.0 and self.clip_high >= 0.0 and self.kl_coef >= 0.0):
            raise ValueError(
                "Preset needs 0 <= clip_low < 1, clip_high >= 0 and kl_coef >= 0, got "
                f"{self.clip_low}, {self.clip_high}, {self.kl_coef}"
            )


PRESETS: dict[str, Preset] = {
    # The GRPO paper reduces with seq_mean_token_mean; we use token_mean, as AReaL and
    # DAPO do, because a per-sequence mean gives tokens of long answers less weight.
    "grpo": Preset(
        advantage="group_mean_std",
        aggregation="token_mean",
        description="GRPO (Shao et al. 2024, arXiv:2402.03300), token-mean loss.",
    ),
    "dr_grpo": Preset(
        advantage="group_mean",
        aggregation="seq_mean_token_sum_norm",
        description="Dr.GRPO (Liu et al. 2025, arXiv:2503.20783): no std, no length bias.",
    ),
    "dapo": Preset(
        advantage="group_mean_std",
        aggregation="token_mean",
        clip_high=0.28,
        filter_all_equal_groups=True,
        description="DAPO (Yu et al. 2025, arXiv:2503.14476): clip-higher, dynamic sampling.",
    ),
    "rloo": Preset(
        advantage="rloo",
        aggregation="token_mean",
        description="RLOO (Ahmadian et al. 2024, arXiv:2402.14740): leave-one-out baseline.",
    ),
    # k2 because as a loss term its gradient is the true reverse-KL gradient on-policy.
    "reinforce_pp": Preset(
        advantage="batch_normalized",
        aggregation="token_mean",
        kl_estimator="k2",
        description="REINFORCE++ (Hu 2025, arXiv:2501.03262): batch-normalised advantages.",
    ),
}
"""Preset name -> choices."""


def get_preset(name: str) -> Preset:
    """Look up a preset by name.

    Args:
        name: a key of ``PRESETS``.

    Returns:
        The preset.

    Raises:
        ValueError: if ``name`` is not a known preset.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name]
