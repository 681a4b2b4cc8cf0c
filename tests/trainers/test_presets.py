"""Every preset names components that exist, and runs end to end on a tiny batch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from areal_env.trainers.algorithms.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from areal_env.trainers.algorithms.kl import KL_ESTIMATORS
from areal_env.trainers.algorithms.losses.aggregation import AGGREGATIONS
from areal_env.trainers.algorithms.losses.base import LossInputs
from areal_env.trainers.algorithms.presets import (
    LOSSES,
    PRESETS,
    Preset,
    get_preset,
    resolve_preset,
)
from areal_env.types import EpisodeBatch, Trajectory


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_components_exist(name):
    p = get_preset(name)
    assert p is PRESETS[name]
    assert p.advantage in ADVANTAGE_ESTIMATORS
    assert p.aggregation in AGGREGATIONS
    assert p.kl_estimator in KL_ESTIMATORS
    assert p.loss in LOSSES and p.ratio_level in ("token", "sequence")
    assert 0.0 <= p.clip_low < 1.0 and p.clip_high >= p.clip_low
    assert p.description


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_runs_end_to_end(name):
    p = get_preset(name)
    batch = EpisodeBatch(
        groups=[[Trajectory(reward=r) for r in (1.0, 0.0, 0.0, 1.0)], [Trajectory(reward=1.0)]]
    )
    compute_advantages(batch, p.advantage)
    adv = torch.tensor([a for g in batch.advantages for a in g])
    lp = torch.full((5, 4), -1.0, requires_grad=True)
    mask = torch.ones(5, 4)
    inputs = LossInputs(
        logprobs=lp,
        behaviour_logprobs=torch.full((5, 4), -1.1),
        advantages=adv.unsqueeze(-1).expand(5, 4),
        loss_mask=mask,
        ref_logprobs=torch.full((5, 4), -1.2),
    )
    loss, metrics = p.loss_fn(max_len=4)(inputs)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


def test_required_presets_and_their_choices():
    assert {"grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp"} <= set(PRESETS)
    grpo, dr, dapo = get_preset("grpo"), get_preset("dr_grpo"), get_preset("dapo")
    assert (grpo.advantage, grpo.aggregation) == ("group_mean_std", "token_mean")
    assert (dr.advantage, dr.aggregation, dr.kl_coef) == (
        "group_mean",
        "seq_mean_token_sum_norm",
        0.0,
    )
    assert (dapo.clip_low, dapo.clip_high, dapo.kl_coef) == (0.2, 0.28, 0.0)
    assert dapo.filter_all_equal_groups and dapo.aggregation == "token_mean"
    assert get_preset("rloo").advantage == "rloo"
    assert get_preset("reinforce_pp").advantage == "batch_normalized"


def test_newer_presets_and_their_choices():
    assert {"gspo", "lite_ppo", "sapo", "m2po", "cispo", "icepop"} <= set(PRESETS)
    gspo = get_preset("gspo")
    assert (gspo.ratio_level, gspo.clip_low, gspo.clip_high) == ("sequence", 3e-4, 4e-4)
    lite = get_preset("lite_ppo")
    assert (lite.advantage, lite.aggregation) == ("group_mean_batch_std", "token_mean")
    assert lite.group_relative
    sapo = get_preset("sapo")
    assert (sapo.loss, sapo.tau_pos, sapo.tau_neg) == ("sapo", 1.0, 1.05)
    assert (get_preset("m2po").loss, get_preset("m2po").m2_threshold) == ("m2po", 0.04)
    assert (get_preset("cispo").loss, get_preset("cispo").clip_high) == ("cispo", 4.0)
    ice = get_preset("icepop")
    assert (ice.loss, ice.icepop_low, ice.icepop_high) == ("icepop", 0.5, 5.0)
    # Each preset's loss receives the choices it names (a typo would raise TypeError).
    for name in PRESETS:
        get_preset(name).loss_fn(max_len=4)


def test_only_the_keys_a_user_sets_override_a_preset():
    # The root config once set kl_coef=0.1 for everyone, so DAPO silently got a KL term.
    assert resolve_preset("dapo").kl_coef == 0.0
    assert resolve_preset("grpo").kl_coef == 0.1
    assert resolve_preset("dapo", kl_coef=None, clip_high=None).clip_high == 0.28
    assert resolve_preset("dapo", kl_coef=0.05).kl_coef == 0.05
    with pytest.raises(ValueError, match="clip_low"):
        resolve_preset("grpo", clip_low=1.5)
    with pytest.raises(ValueError, match="unknown preset choices"):
        resolve_preset("grpo", temperature=1.0)


def test_a_preset_binds_its_choices_into_its_loss():
    # Clip-higher: r = 1.25 with A = +1 is clipped by GRPO (0.2) but not by DAPO (0.28).
    lp = torch.tensor([[0.0, float(torch.log(torch.tensor(1.25)))]])
    inputs = LossInputs(
        logprobs=lp,
        behaviour_logprobs=torch.zeros(1, 2),
        advantages=torch.ones(1, 2),
        loss_mask=torch.tensor([[0.0, 1.0]]),
        ref_logprobs=lp.clone(),
    )
    assert resolve_preset("grpo").loss_fn()(inputs)[1]["loss/clip_frac"] == 1.0
    assert resolve_preset("dapo").loss_fn()(inputs)[1]["loss/clip_frac"] == 0.0


def test_preset_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("grpo").clip_high = 0.5  # type: ignore[misc]


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="dapo") as err:
        get_preset("ppo2")
    assert "'ppo2'" in str(err.value) and "grpo" in str(err.value)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"advantage": "gae"}, "advantage"),
        ({"advantage": "rloo", "aggregation": "sum"}, "aggregation"),
        ({"advantage": "rloo", "kl_estimator": "k4"}, "kl_estimator"),
        ({"advantage": "rloo", "clip_low": 1.5}, "clip_low"),
        ({"advantage": "rloo", "loss": "mse"}, "loss"),
        ({"advantage": "rloo", "ratio_level": "turn"}, "ratio_level"),
        ({"advantage": "rloo", "kl_coef": -1.0}, "kl_coef"),
        ({"advantage": "rloo", "tau_neg": 0.0}, "tau"),
        ({"advantage": "rloo", "m2_threshold": 0.0}, "m2_threshold"),
        ({"advantage": "rloo", "icepop_low": 5.0, "icepop_high": 0.5}, "icepop"),
    ],
)
def test_preset_rejects_unknown_components(kw, match):
    with pytest.raises(ValueError, match=match):
        Preset(**kw)
