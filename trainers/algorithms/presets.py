"""Algorithm presets: each named algorithm is a row of choices, not a code branch.

A preset names its loss (a key of ``LOSSES``) and the loss's choices (ratio level,
aggregation, clip range, KL), its advantage estimator and its group filtering.
Adding an algorithm means adding a row here plus, at most, one estimator in
``advantages.py`` or one loss function: ``grpo.py`` does not change. Presets whose
advantage needs a learned critic (``CRITIC_PRESETS``: ``ppo``, GAE) are rows too, but
only ``trainers/ppo.py`` runs them; ``trainers/grpo.py`` refuses them with a pointer there.

Only GRPO keeps a KL penalty to the reference model, as in its paper (k3; β 0.1
rather than the paper's 0.04, because the embedded run from a tiny SFT'd model
collapses without it, see ENVIRONMENT notes in BENCHMARKS.md). The others drop it,
as their papers do with verifiable rewards, which also saves the reference
model's forward pass. Any choice can be overridden from the config
(``algorithm.kl_coef=0.04``); a key the user leaves unset keeps the preset's.

Example:
    >>> get_preset("dapo").clip_high
    0.28
    >>> resolve_preset("dapo", kl_coef=0.05).kl_coef, resolve_preset("dapo").kl_coef
    (0.05, 0.0)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from areal_env.trainers.algorithms.advantages import ADVANTAGE_ESTIMATORS
from areal_env.trainers.algorithms.losses.base import LossFn
from areal_env.trainers.algorithms.losses.cispo import cispo_loss
from areal_env.trainers.algorithms.losses.icepop import icepop_loss
from areal_env.trainers.algorithms.losses.m2po import m2po_loss
from areal_env.trainers.algorithms.losses.nll import nll_loss
from areal_env.trainers.algorithms.losses.ppo_clip import check_ppo_choices, ppo_clip_loss
from areal_env.trainers.algorithms.losses.sapo import sapo_loss

CRITIC_ESTIMATORS = frozenset({"gae"})
"""Advantages computed from a learned value model (``gae.py``), not from rewards alone:
only a trainer with a critic (trainers/ppo.py) can compute them."""

LOSSES: dict[str, Callable[..., Any]] = {
    "ppo_clip": ppo_clip_loss,
    "sapo": sapo_loss,
    "cispo": cispo_loss,
    "m2po": m2po_loss,
    "icepop": icepop_loss,
    "nll": nll_loss,
}
"""Loss name -> function ``(LossInputs, **choices) -> (loss, metrics)``."""

LOSS_CHOICES: dict[str, tuple[str, ...]] = {
    "ppo_clip": (
        "clip_low",
        "clip_high",
        "aggregation",
        "ratio_level",
        "kl_coef",
        "kl_estimator",
        "dual_clip_c",
    ),
    "sapo": ("tau_pos", "tau_neg", "aggregation", "kl_coef", "kl_estimator"),
    "cispo": ("clip_high", "aggregation", "kl_coef", "kl_estimator"),
    "m2po": ("m2_threshold", "aggregation", "kl_coef", "kl_estimator"),
    "icepop": (
        "icepop_low",
        "icepop_high",
        "clip_low",
        "clip_high",
        "aggregation",
        "kl_coef",
        "kl_estimator",
    ),
    "nll": (),
}
"""Loss name -> the preset fields it takes as keyword arguments."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Preset:
    """The algorithmic choices that name an RL algorithm."""

    advantage: str
    """Key of ``advantages.ADVANTAGE_ESTIMATORS``."""
    loss: str = "ppo_clip"
    """Key of ``LOSSES``: the loss function the trainer calls."""
    ratio_level: str = "token"
    """Importance ratio per ``"token"`` (PPO) or per ``"sequence"`` (GSPO)."""
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
    dual_clip_c: float | None = None
    """Dual-clip constant (> 1) bounding the loss of negative advantages; None: off."""
    tau_pos: float = 1.0
    """SAPO gate temperature for positive advantages (> 0)."""
    tau_neg: float = 1.05
    """SAPO gate temperature for negative advantages (> 0); sharper than ``tau_pos``."""
    m2_threshold: float = 0.04
    """M2PO bound on the mean squared log ratio of the kept tokens (> 0)."""
    icepop_low: float = 0.5
    """IcePop: tokens with train/inference ratio below this are masked."""
    icepop_high: float = 5.0
    """IcePop: tokens with train/inference ratio above this are masked."""
    filter_all_equal_groups: bool = False
    """Whether the scheduler drops groups whose rewards are all equal (zero advantage,
    so no gradient), as in DAPO's dynamic sampling."""
    overlong_buffer_frac: float = 0.0
    """DAPO's soft overlong punishment: the ramp starts this fraction of the token budget
    before it (``overlong.py``); 0 turns it off."""
    overlong_factor: float = 1.0
    """DAPO's overlong penalty at the budget (the ramp's depth)."""
    description: str = ""
    """One line on the algorithm and its paper."""

    def __post_init__(self) -> None:
        self._check_advantage()
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} unknown; valid: {sorted(LOSSES)}")
        check_ppo_choices(
            self.clip_low,
            self.clip_high,
            self.aggregation,
            self.ratio_level,
            self.kl_coef,
            self.kl_estimator,
        )
        if self.dual_clip_c is not None and self.dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c must be > 1 or None, got {self.dual_clip_c}")
        if self.tau_pos <= 0.0 or self.tau_neg <= 0.0:
            raise ValueError(f"tau_pos and tau_neg must be > 0, got {self.tau_pos}, {self.tau_neg}")
        if self.m2_threshold <= 0.0:
            raise ValueError(f"m2_threshold must be > 0, got {self.m2_threshold}")
        if not 0.0 <= self.overlong_buffer_frac < 1.0 or self.overlong_factor < 0.0:
            raise ValueError(
                "overlong_buffer_frac must be in [0, 1) and overlong_factor >= 0, got "
                f"{self.overlong_buffer_frac}, {self.overlong_factor}"
            )
        if not 0.0 <= self.icepop_low < self.icepop_high:
            raise ValueError(
                f"icepop_low and icepop_high must satisfy 0 <= icepop_low < icepop_high, "
                f"got {self.icepop_low}, {self.icepop_high}"
            )

    def _check_advantage(self) -> None:
        if self.advantage not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"advantage={self.advantage!r} unknown; valid: {sorted(ADVANTAGE_ESTIMATORS)}"
            )

    @property
    def needs_critic(self) -> bool:
        """True when a learned value model computes the advantage (trainers/ppo.py only)."""
        return self.advantage in CRITIC_ESTIMATORS

    @property
    def group_relative(self) -> bool:
        """True when the advantage compares episodes of one group (needs n_samples >= 2)."""
        return self.advantage in GROUP_ESTIMATORS

    def loss_fn(self, *, max_len: int | None = None) -> LossFn:
        """The preset's loss with its choices bound: ``fn(LossInputs) -> (loss, metrics)``.

        Args:
            max_len: the generation budget, Dr.GRPO's constant length divisor.
        """
        choices = {k: getattr(self, k) for k in LOSS_CHOICES[self.loss]}
        if "aggregation" in choices:
            choices["max_len"] = max_len
        return functools.partial(LOSSES[self.loss], **choices)


PRESETS: dict[str, Preset] = {
    # The GRPO paper reduces with seq_mean_token_mean; we use token_mean, as AReaL and
    # DAPO do, because a per-sequence mean gives tokens of long answers less weight.
    "grpo": Preset(
        advantage="group_mean_std",
        aggregation="token_mean",
        kl_coef=0.1,
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
        overlong_buffer_frac=0.2,  # the paper's L_cache / L_max = 4096 / 20480
        description=(
            "DAPO (Yu et al. 2025, arXiv:2503.14476): clip-higher, dynamic sampling, "
            "soft overlong punishment."
        ),
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
    # GSPO-token form (see ppo_clip.py): the sequence ratio's value, per-token gradient;
    # with one advantage per answer its gradient is GSPO's. The clip range is the paper's.
    "gspo": Preset(
        advantage="group_mean_std",
        ratio_level="sequence",
        aggregation="seq_mean_token_mean",
        clip_low=3e-4,
        clip_high=4e-4,
        description="GSPO (Zheng et al. 2025, arXiv:2507.18071): sequence-level ratio and clip.",
    ),
    "lite_ppo": Preset(
        advantage="group_mean_batch_std",
        aggregation="token_mean",
        description="LitePPO (Liu et al. 2025, arXiv:2508.08221): group mean, batch std.",
    ),
    "sapo": Preset(
        advantage="group_mean_std",
        loss="sapo",
        aggregation="token_mean",
        description="SAPO (Gao et al. 2025, arXiv:2511.20347): sigmoid soft gate, no clip.",
    ),
    "cispo": Preset(
        advantage="group_mean_std",
        loss="cispo",
        aggregation="token_mean",
        clip_high=4.0,
        description="CISPO (MiniMax-M1 2025, arXiv:2506.13585): clipped IS weight, no drop.",
    ),
    "m2po": Preset(
        advantage="group_mean_std",
        loss="m2po",
        aggregation="token_mean",
        description="M2PO (Zheng et al. 2025, arXiv:2510.01161): second-moment token mask.",
    ),
    "icepop": Preset(
        advantage="group_mean_std",
        loss="icepop",
        aggregation="token_mean",
        description="IcePop (Ling Team 2025, arXiv:2510.18855): mask train/infer mismatch.",
    ),
}
"""Preset name -> choices."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CriticPreset(Preset):
    """A preset whose advantage a learned critic computes (``CRITIC_ESTIMATORS``).

    A class of its own so a plain ``Preset`` keeps refusing such an estimator: every
    ``PRESETS`` row must run in trainers/grpo.py, which has no critic.
    """

    def _check_advantage(self) -> None:
        if self.advantage not in CRITIC_ESTIMATORS:
            raise ValueError(
                f"advantage={self.advantage!r} is not a critic estimator; "
                f"valid: {sorted(CRITIC_ESTIMATORS)}"
            )


CRITIC_PRESETS: dict[str, Preset] = {
    # Not in PRESETS: trainers/grpo.py has no critic, and every PRESETS row must run there.
    "ppo": CriticPreset(
        advantage="gae",
        aggregation="token_mean",
        description=(
            "PPO with a critic (Schulman et al. 2017, arXiv:1707.06347) and GAE "
            "(Schulman et al. 2016, arXiv:1506.02438): trainers/ppo.py."
        ),
    ),
}
"""Presets whose advantage comes from a learned critic: run by trainers/ppo.py."""


GROUP_ESTIMATORS = frozenset({"group_mean_std", "group_mean", "rloo", "group_mean_batch_std"})
"""Estimators that compare the episodes of one group."""


def get_preset(name: str) -> Preset:
    """Look up a preset by name.

    Args:
        name: a key of ``PRESETS`` or ``CRITIC_PRESETS``.

    Returns:
        The preset.

    Raises:
        ValueError: if ``name`` is not a known preset.
    """
    if name in CRITIC_PRESETS:
        return CRITIC_PRESETS[name]
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {sorted({*PRESETS, *CRITIC_PRESETS})}")
    return PRESETS[name]


def critic_preset_hint(message: str) -> str:
    """A hint to append to a config error that rejected a critic preset, else "".

    ``trainers/grpo.py`` only knows ``PRESETS``; a user asking it for ``ppo`` should
    learn which trainer runs it rather than read a list of presets without it.
    """
    for name in CRITIC_PRESETS:
        if "algorithm.preset" in message and f"got {name!r}" in message:
            return (
                f"\nalgorithm.preset={name} learns a critic (GAE advantages), which "
                "trainers/grpo.py has not: run `python trainers/ppo.py` instead"
            )
    return ""


def resolve_preset(name: str, **overrides: Any) -> Preset:
    """The preset ``name`` with the choices the user set (non-None values) replaced.

    Raises:
        ValueError: for an unknown preset, an unknown choice or an invalid value.
    """
    preset = get_preset(name)
    fields = {f.name for f in dataclasses.fields(Preset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown preset choices {unknown}; valid: {sorted(fields)}")
    return dataclasses.replace(preset, **{k: v for k, v in overrides.items() if v is not None})
