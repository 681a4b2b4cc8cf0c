"""KL estimators, aggregation modes and the PPO clipped loss, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from areal_env.trainers.algorithms.kl import KL_ESTIMATORS, kl_penalty
from areal_env.trainers.algorithms.losses.aggregation import AGGREGATIONS, aggregate
from areal_env.trainers.algorithms.losses.base import LossInputs
from areal_env.trainers.algorithms.losses.ppo_clip import ppo_clip_loss as _ppo_clip_loss


def ppo_clip_loss(lp, old, adv, mask, *, ref_logprobs=None, proximal=None, counts=None, **kw):
    """The loss on tensors, advantages [B] broadcast over tokens as the batch does."""
    adv = adv.unsqueeze(-1).expand_as(lp) if adv.dim() == 1 else adv
    num_tokens, num_sequences = counts or (None, None)
    inputs = LossInputs(
        logprobs=lp,
        behaviour_logprobs=old,
        advantages=adv,
        loss_mask=mask,
        ref_logprobs=ref_logprobs,
        proximal_logprobs=proximal,
        num_tokens=num_tokens,
        num_sequences=num_sequences,
    )
    return _ppo_clip_loss(inputs, **kw)


# ----------------------------------------------------------------------------- kl


def test_kl_estimators_by_hand():
    lp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    # log_ratio = lp - ref = [0.5, -1.0]
    assert kl_penalty(lp, ref, "k1")[0].tolist() == pytest.approx([0.5, -1.0])
    assert kl_penalty(lp, ref, "k2")[0].tolist() == pytest.approx([0.125, 0.5])
    # k3 = exp(ref - lp) - (ref - lp) - 1
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    assert kl_penalty(lp, ref, "k3")[0].tolist() == pytest.approx(k3)


@pytest.mark.parametrize("name", KL_ESTIMATORS)
def test_kl_zero_when_policies_agree(name):
    lp = torch.tensor([[-0.3, -4.0, 0.0]])
    assert kl_penalty(lp, lp.clone(), name).tolist() == [[0.0, 0.0, 0.0]]


def test_kl_k3_nonnegative_and_finite_on_extreme_ratios():
    lp = torch.tensor([[-200.0, 0.0, -1.0]])
    ref = torch.tensor([[0.0, -200.0, -1.1]])
    out = kl_penalty(lp, ref, "k3")
    assert torch.isfinite(out).all() and (out >= 0).all()


def test_kl_unknown_estimator_lists_names():
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# ---------------------------------------------------------------------- aggregation

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # last row all masked


@pytest.mark.parametrize(
    ("mode", "kw", "expected"),
    [
        ("token_mean", {}, 7 / 3),  # (1 + 2 + 4) / 3 tokens
        ("seq_mean_token_mean", {}, 2.75),  # (1.5 + 4) / 2 non-empty rows
        ("seq_mean_token_sum", {}, 3.5),  # (3 + 4) / 2
        ("seq_mean_token_sum_norm", {"max_len": 4}, 0.875),  # (3/4 + 4/4) / 2
        ("seq_mean_token_sum_norm", {}, 7 / 6),  # max_len defaults to T=3: (1 + 4/3) / 2
    ],
)
def test_aggregation_modes_by_hand(mode, kw, expected):
    assert aggregate(VALUES, MASK, mode, **kw).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregation_all_masked_is_zero_with_finite_grad(mode):
    values = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]], requires_grad=True)
    out = aggregate(values, torch.zeros(2, 2), mode)
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(values.grad, torch.zeros(2, 2))


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregation_ignores_garbage_under_mask(mode):
    dirty = VALUES.clone()
    dirty[~MASK.bool()] = float("nan")
    assert aggregate(dirty, MASK, mode).item() == aggregate(VALUES, MASK, mode).item()


def test_aggregation_errors():
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(VALUES, MASK, "sum")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        aggregate(VALUES, MASK[:2], "token_mean")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(VALUES, MASK, "seq_mean_token_sum_norm", max_len=0)


# ---------------------------------------------------------------------- ppo_clip

# Worked 2x3 example (old_logprobs = 0, so ratio = exp(logprobs)), clip 0.2:
#   row 0, A = +1, ratios [1.0, 1.5, 0.9]:
#     pg = max(-A*r, -A*clamp(r, 0.8, 1.2)) = [-1.0, max(-1.5, -1.2) = -1.2 CLIPPED, -0.9]
#   row 1, A = -1, ratios [0.9, 1.0, (2.0 masked)]:
#     pg = [max(0.9, 0.9) = 0.9, 1.0, -]
#   token_mean = (-1.0 - 1.2 - 0.9 + 0.9 + 1.0) / 5 = -0.24
#   d loss / d logprobs = -A * r / 5 on unclipped tokens, 0 on clipped and masked ones.
RATIOS = torch.tensor([[1.0, 1.5, 0.9], [0.9, 1.0, 2.0]])
ADV = torch.tensor([1.0, -1.0])
LOSS_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def example_logprobs() -> torch.Tensor:
    return RATIOS.log().requires_grad_(True)


def test_ppo_clip_worked_example():
    lp = example_logprobs()
    loss, m = ppo_clip_loss(lp, torch.zeros(2, 3), ADV, LOSS_MASK)
    loss.backward()
    assert loss.item() == pytest.approx(-0.24)
    expected_grad = torch.tensor([[-0.2, 0.0, -0.18], [0.18, 0.2, 0.0]])
    torch.testing.assert_close(lp.grad, expected_grad)
    assert m["loss/pg"] == pytest.approx(-0.24)
    assert m["loss/clip_frac"] == pytest.approx(1 / 5)
    assert m["loss/ratio_mean"] == pytest.approx((1.0 + 1.5 + 0.9 + 0.9 + 1.0) / 5)
    # k3 of KL(old || new) per token is r - 1 - log r
    approx_kl = (0.5 - math.log(1.5) + 2 * (-0.1 - math.log(0.9))) / 5
    assert m["loss/approx_kl_old"] == pytest.approx(approx_kl)
    assert m["loss/kl_ref"] == 0.0 and m["loss/dual_clip_frac"] == 0.0
    assert all(isinstance(v, float) for v in m.values())


def test_ppo_clip_seq_mean_token_mean_aggregation():
    # row means: -3.1/3 and 1.9/2 -> (-31/30 + 19/20) / 2 = -1/24
    loss, _ = ppo_clip_loss(
        example_logprobs(), torch.zeros(2, 3), ADV, LOSS_MASK, aggregation="seq_mean_token_mean"
    )
    assert loss.item() == pytest.approx(-1 / 24)


def test_ppo_clip_token_advantages_match_broadcast():
    per_token = ADV.unsqueeze(-1).expand(2, 3).clone()
    a, _ = ppo_clip_loss(example_logprobs(), torch.zeros(2, 3), ADV, LOSS_MASK)
    b, _ = ppo_clip_loss(example_logprobs(), torch.zeros(2, 3), per_token, LOSS_MASK)
    assert a.item() == b.item()


@pytest.mark.parametrize(("clip_high", "pg", "grad"), [(0.2, -1.2, 0.0), (0.28, -1.25, -1.25)])
def test_clip_higher(clip_high, pg, grad):
    # A = +1, r = 1.25: outside 1 + 0.2 (clipped, no gradient), inside 1 + 0.28 (d(-r)/dlp = -r)
    lp = torch.tensor([[math.log(1.25)]], requires_grad=True)
    loss, m = ppo_clip_loss(
        lp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), clip_high=clip_high
    )
    loss.backward()
    assert loss.item() == pytest.approx(pg)
    assert lp.grad.item() == pytest.approx(grad)
    assert m["loss/clip_frac"] == (1.0 if grad == 0.0 else 0.0)


def test_clip_low_clips_negative_advantage():
    # A = -1, r = 0.5: max(0.5, 0.8) = 0.8, clipped, no gradient
    lp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    loss, m = ppo_clip_loss(lp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    loss.backward()
    assert loss.item() == pytest.approx(0.8)
    assert lp.grad.item() == 0.0 and m["loss/clip_frac"] == 1.0


def test_dual_clip_caps_negative_advantage_loss():
    # A = -1, r = 5: standard PPO gives max(5, 1.2) = 5; dual-clip c = 3 caps it at 3.
    lp = torch.tensor([[math.log(5.0)]], requires_grad=True)
    args = (lp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    plain, _ = ppo_clip_loss(*args)
    loss, m = ppo_clip_loss(*args, dual_clip_c=3.0)
    loss.backward()
    assert plain.item() == pytest.approx(5.0)
    assert loss.item() == pytest.approx(3.0)
    assert lp.grad.item() == 0.0 and m["loss/dual_clip_frac"] == 1.0


def test_ppo_clip_reference_kl_added_per_token():
    lp = example_logprobs()
    ref = lp.detach() - 0.5  # k1 = 0.5 on every token
    loss, m = ppo_clip_loss(
        lp, torch.zeros(2, 3), ADV, LOSS_MASK, ref_logprobs=ref, kl_coef=0.1, kl_estimator="k1"
    )
    assert loss.item() == pytest.approx(-0.24 + 0.1 * 0.5)
    assert m["loss/kl_ref"] == pytest.approx(0.5)
    assert m["loss/total"] == pytest.approx(m["loss/pg"] + 0.1 * m["loss/kl_ref"])


def test_ppo_clip_reports_kl_without_adding_it():
    lp = example_logprobs()
    loss, m = ppo_clip_loss(
        lp, torch.zeros(2, 3), ADV, LOSS_MASK, ref_logprobs=lp.detach() - 0.5, kl_estimator="k1"
    )
    assert loss.item() == pytest.approx(-0.24)
    assert m["loss/kl_ref"] == pytest.approx(0.5)


def test_ppo_clip_finite_with_inf_padding():
    lp = example_logprobs().detach().clone()
    lp[1, 2] = -float("inf")
    lp.requires_grad_(True)
    old = torch.zeros(2, 3)
    old[1, 2] = float("nan")
    loss, m = ppo_clip_loss(lp, old, ADV, LOSS_MASK, ref_logprobs=torch.zeros(2, 3), kl_coef=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert all(math.isfinite(v) for v in m.values())


def test_ppo_clip_empty_mask_is_zero():
    lp = example_logprobs()
    loss, m = ppo_clip_loss(lp, torch.zeros(2, 3), ADV, torch.zeros(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and m["loss/clip_frac"] == 0.0
    assert torch.equal(lp.grad, torch.zeros(2, 3))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"kl_coef": 0.1}, "ref_logprobs"),
        ({"kl_estimator": "k9"}, "kl_estimator.*k1"),
        ({"aggregation": "mean"}, "aggregation.*token_mean"),
        ({"ratio_level": "episode"}, "ratio_level"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"dual_clip_c": 1.0}, "dual_clip_c"),
        ({"clip_low": 1.0}, "clip_low"),
    ],
)
def test_ppo_clip_rejects_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        ppo_clip_loss(example_logprobs(), torch.zeros(2, 3), ADV, LOSS_MASK, **kw)


def test_ppo_clip_rejects_bad_shapes():
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip_loss(example_logprobs(), torch.zeros(2, 3), torch.zeros(2, 2), LOSS_MASK)
    with pytest.raises(ValueError, match="behaviour_logprobs"):
        ppo_clip_loss(example_logprobs(), torch.zeros(2, 2), ADV, LOSS_MASK)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_ppo_clip_split_rows_with_global_counts_sum_to_the_whole(aggregation):
    # Micro-batching: each part normalised by the whole batch's counts adds up to the whole.
    kw = {"aggregation": aggregation, "max_len": 4}
    whole_lp = example_logprobs()
    whole, _ = ppo_clip_loss(whole_lp, torch.zeros(2, 3), ADV, LOSS_MASK, **kw)
    whole.backward()
    counts = (float(LOSS_MASK.sum()), 2.0)
    lp = example_logprobs()
    parts = [
        ppo_clip_loss(
            lp[i : i + 1],
            torch.zeros(1, 3),
            ADV[i : i + 1],
            LOSS_MASK[i : i + 1],
            counts=counts,
            **kw,
        )[0]
        for i in (0, 1)
    ]
    sum(parts).backward()
    assert sum(parts).item() == pytest.approx(whole.item())
    torch.testing.assert_close(lp.grad, whole_lp.grad)
    if aggregation == "token_mean":  # without global counts a split gives another loss
        local = [
            ppo_clip_loss(
                lp[i : i + 1], torch.zeros(1, 3), ADV[i : i + 1], LOSS_MASK[i : i + 1], **kw
            )[0]
            for i in (0, 1)
        ]
        assert sum(local).item() != pytest.approx(whole.item())


def test_sequence_ratio_level_uses_the_rows_mean_log_ratio():
    # Row 0: log ratios [0, log 1.5, log 0.9] -> exp(mean) = (1.35)^(1/3) ~ 1.105, inside
    # the clip range; every token of the row gets that ratio, gradient through its own token.
    lp = example_logprobs()
    loss, m = ppo_clip_loss(lp, torch.zeros(2, 3), ADV, LOSS_MASK, ratio_level="sequence")
    loss.backward()
    r0 = 1.35 ** (1 / 3)
    r1 = 0.9**0.5  # row 1: [log 0.9, 0] over its 2 tokens
    assert m["loss/ratio_mean"] == pytest.approx((3 * r0 + 2 * r1) / 5)
    assert loss.item() == pytest.approx((-3 * r0 + 2 * r1) / 5)
    expected = torch.tensor([[-r0, -r0, -r0], [r1, r1, 0.0]]) / 5
    torch.testing.assert_close(lp.grad, expected)


def test_sequence_ratio_clips_the_whole_row():
    # One outlier token (ratio 3) pushes the row's mean ratio out of the range: all clipped.
    lp = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    loss, m = ppo_clip_loss(
        lp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), ratio_level="sequence"
    )
    loss.backward()
    assert m["loss/clip_frac"] == 1.0 and torch.equal(lp.grad, torch.zeros(1, 2))


def test_proximal_policy_takes_the_ratio_and_behaviour_only_weights_it():
    # behaviour -1, proximal -0.5: weight exp(0.5); ratio against proximal.
    lp = torch.tensor([[-0.5]], requires_grad=True)
    behav = torch.tensor([[-1.0]])
    prox = torch.tensor([[-0.5]])
    loss, m = ppo_clip_loss(lp, behav, torch.tensor([1.0]), torch.ones(1, 1), proximal=prox)
    loss.backward()
    w = math.exp(0.5)
    assert loss.item() == pytest.approx(-w)  # ratio 1 against the proximal policy
    assert lp.grad.item() == pytest.approx(-w)
    # Without the proximal policy the ratio exp(0.5) ~ 1.65 would be clipped.
    plain, m2 = ppo_clip_loss(lp.detach(), behav, torch.tensor([1.0]), torch.ones(1, 1))
    assert plain.item() == pytest.approx(-1.2) and m2["loss/clip_frac"] == 1.0
