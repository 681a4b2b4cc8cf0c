"""KL estimators, aggregation modes and the PPO clipped loss, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from areal_env.trainers.algorithms.kl import KL_ESTIMATORS, kl_penalty
from areal_env.trainers.algorithms.losses.aggregation import AGGREGATIONS, aggregate
from areal_env.trainers.algorithms.losses.base import LossInputs
from areal_env.trainers.algorithms.losses.cispo import cispo_loss
from areal_env.trainers.algorithms.losses.icepop import icepop_loss
from areal_env.trainers.algorithms.losses.m2po import m2po_loss, second_moment_mask
from areal_env.trainers.algorithms.losses.ppo_clip import ppo_clip_loss as _ppo_clip_loss
from areal_env.trainers.algorithms.losses.sapo import sapo_loss


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


# -------------------------------------------- SAPO, CISPO, M2PO, IcePop, GSPO preset


def _inputs(lp, adv, mask=None, behav=None, proximal=None):
    """LossInputs with behaviour logprobs 0 (so r = exp(lp)) and advantages [B] broadcast."""
    adv = adv.unsqueeze(-1).expand_as(lp) if adv.dim() == 1 else adv
    return LossInputs(
        logprobs=lp,
        behaviour_logprobs=torch.zeros_like(lp) if behav is None else behav,
        advantages=adv,
        loss_mask=torch.ones_like(lp) if mask is None else mask,
        proximal_logprobs=proximal,
    )


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_sapo_soft_gate_values_and_gradients_by_hand():
    """Mutations caught: tau_pos/tau_neg swapped, the 4/tau scale dropped, the gate's
    sign test flipped to A < 0, a hard clip put back (gradient of r = 1.5 would be 0)."""
    r = torch.tensor([[1.0, 1.5], [1.0, 1.5]])
    lp = r.log().requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    loss, m = sapo_loss(_inputs(lp, adv), tau_pos=2.0, tau_neg=4.0)
    # Row 0, A=+1, tau 2: f = (4/2) sigmoid(2 (r - 1)) = [2 * 0.5, 2 * sig(1)].
    # Row 1, A=-1, tau 4: f = (4/4) sigmoid(4 (r - 1)) = [0.5, sig(2)]; pg = -A f = +f.
    pg = [-1.0, -2 * _sig(1.0), 0.5, _sig(2.0)]
    assert loss.item() == pytest.approx(sum(pg) / 4, rel=1e-5)
    # d pg / d lp = -A * 4 s (1 - s) * r, s the sigmoid; divided by 4 tokens.
    s1, s2 = _sig(1.0), _sig(2.0)
    want = [[-1.0 / 4, -4 * s1 * (1 - s1) * 1.5 / 4], [1.0 / 4, 4 * s2 * (1 - s2) * 1.5 / 4]]
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.tolist() == [pytest.approx(row, rel=1e-5) for row in want]
    # Gate weights 4 s (1 - s): [1, 4 s1 (1 - s1), 1, 4 s2 (1 - s2)].
    gate = (2 + 4 * s1 * (1 - s1) + 4 * s2 * (1 - s2)) / 4
    assert m["loss/sapo_gate_mean"] == pytest.approx(gate, rel=1e-5)


def test_sapo_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="tau"):
        sapo_loss(_inputs(torch.zeros(1, 1), torch.ones(1)), tau_neg=0.0)


def test_cispo_weight_is_clipped_and_stop_gradient_and_no_token_is_dropped():
    """Mutations caught: the weight not detached (grad of the r = 2 token becomes
    -(2 + 2 log 2) / 2), clipping the token out as PPO does (grad 0 at r = 8), the cap at
    clip_high instead of 1 + clip_high, a lower clip at 1 - clip_low."""
    r = torch.tensor([[2.0, 8.0]])
    lp = r.log().requires_grad_()
    loss, m = cispo_loss(_inputs(lp, torch.ones(1)), clip_high=4.0)
    # coef = sg(min(r, 5)) = [2, 5]; loss = -(2 log 2 + 5 log 8) / 2.
    assert loss.item() == pytest.approx(-(2 * math.log(2) + 5 * math.log(8)) / 2, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.tolist() == [pytest.approx([-2 / 2, -5 / 2])]  # -coef * A / N tokens
    assert m["loss/clip_frac"] == 0.5
    # Negative advantage, ratio 0.25: no lower clip, weight 0.25, still a gradient.
    lp2 = torch.tensor([[math.log(0.25)]], requires_grad=True)
    loss2, _ = cispo_loss(_inputs(lp2, -torch.ones(1)), clip_high=4.0)
    assert torch.autograd.grad(loss2, lp2)[0].item() == pytest.approx(0.25)


def test_second_moment_mask_drops_the_largest_until_the_mean_is_under_threshold():
    """Mutations caught: dropping the smallest first, comparing the sum (not the mean)
    with the threshold, ignoring the loss mask."""
    lr = torch.tensor([[0.3, -0.2, 0.1, 0.0]])  # squares 0.09, 0.04, 0.01, 0
    keep = torch.ones(1, 4, dtype=torch.bool)
    assert second_moment_mask(lr, keep, 0.04).tolist() == [[True] * 4]  # mean 0.035
    # 0.02: drop 0.09 -> mean(0.04, 0.01, 0) = 0.0167 < 0.02.
    assert second_moment_mask(lr, keep, 0.02).tolist() == [[False, True, True, True]]
    # 0.01: 0.0167 is not enough; drop 0.04 too -> mean(0.01, 0) = 0.005.
    assert second_moment_mask(lr, keep, 0.01).tolist() == [[False, False, True, True]]
    # A masked-out token never counts and never comes back.
    keep2 = torch.tensor([[False, True, True, True]])
    assert second_moment_mask(lr, keep2, 0.02).tolist() == [[False, True, True, True]]
    # Nothing gets under the bound: one token (the smallest) is kept, as in AReaL.
    assert second_moment_mask(lr, keep, 1e-9).tolist() == [[False, False, False, True]]


def test_m2po_masks_then_trains_the_unclipped_ratio_over_all_tokens():
    """Mutations caught: the normaliser counting only the kept tokens (/3 instead of /4),
    the mask not applied to pg (token 0 would get a gradient), the ratio clipped."""
    lr = torch.tensor([[0.3, -0.2, 0.1, 0.0]])
    lp = lr.clone().requires_grad_()
    loss, m = m2po_loss(_inputs(lp, torch.ones(1)), m2_threshold=0.02)
    kept = [math.exp(-0.2), math.exp(0.1), 1.0]  # r of the kept tokens; pg = -r * A
    assert loss.item() == pytest.approx(-sum(kept) / 4, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.tolist() == [pytest.approx([0.0] + [-r / 4 for r in kept], rel=1e-6)]
    assert m["loss/m2_masked_frac"] == 0.25


def test_icepop_masks_ratios_outside_the_band_and_weights_the_rest():
    """Mutations caught: the band test on the PPO ratio (always 1 here, nothing masked),
    the k weight dropped (loss -0.5), the normaliser counting only kept tokens (/2)."""
    k = torch.tensor([[1.0, 0.4, 6.0, 2.0]])  # train/inference ratios; band [0.5, 5]
    lp = k.log().requires_grad_()
    loss, m = icepop_loss(_inputs(lp, torch.ones(1)), icepop_low=0.5, icepop_high=5.0)
    # Kept: k = 1 and k = 2, each -k * r * A with r = 1; four trained tokens.
    assert loss.item() == pytest.approx(-(1.0 + 2.0) / 4, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.tolist() == [pytest.approx([-1 / 4, 0.0, 0.0, -2 / 4], rel=1e-6)]
    assert m["loss/icepop_masked_frac"] == 0.5
    assert m["loss/clip_frac"] == 0.0


def test_icepop_uses_the_proximal_policy_as_the_train_side():
    lp = torch.zeros(1, 2, requires_grad=True)
    prox = torch.tensor([[math.log(10.0), 0.0]])  # k = 10 is out of the band
    _, m = icepop_loss(_inputs(lp, torch.ones(1), proximal=prox))
    assert m["loss/icepop_masked_frac"] == 0.5


def test_gspo_preset_clips_on_the_rows_mean_log_ratio():
    """Mutations caught: the sequence ratio taken as exp(sum) instead of exp(mean)
    (row 0: exp(0.0006) > 1 + 4e-4 would be clipped, grad 0), the token ratio instead
    of the sequence one (row 1's token 0 at 1.0002 would keep its gradient)."""
    from areal_env.trainers.algorithms.presets import get_preset

    lr = torch.tensor([[2e-4, 4e-4], [2e-4, 1e-3]])  # row means 3e-4 (kept), 6e-4 (clipped)
    lp = lr.clone().requires_grad_()
    loss, m = get_preset("gspo").loss_fn()(_inputs(lp, torch.ones(2)))
    r0 = math.exp(3e-4)
    # seq_mean_token_mean: row 0 gives -r0, row 1 the clipped -(1 + 4e-4); mean of rows.
    assert loss.item() == pytest.approx(-(r0 + 1.0004) / 2, rel=1e-7)
    (grad,) = torch.autograd.grad(loss, lp)
    # Row 0: d(-r0 * mean_t 1)/d lp_t = -r0 / 2 tokens / 2 rows; row 1 is clipped.
    assert grad.tolist() == [pytest.approx([-r0 / 4, -r0 / 4]), [0.0, 0.0]]
    assert m["loss/clip_frac"] == 0.5
