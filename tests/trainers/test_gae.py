"""GAE over generated tokens, checked against numbers worked out by hand."""

from __future__ import annotations

import pytest
import torch

from areal_env.trainers.algorithms.gae import gae_advantages, whiten


def test_gae_matches_a_hand_worked_row_with_a_skipped_tool_token():
    # Row: prompt p0, generated a1 a2, tool output o3 (skipped), generated a4; reward 1.
    # Steps are the generated tokens k = 1, 2, 3 at positions 1, 2, 4 with values
    # V1 = 0.5, V2 = 0.6, V3 = 0.8 (the values at positions 0 and 3 must be ignored).
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72; the reward is on the last step.
    #   delta3 = 1 + 0.9 * 0       - 0.8 = 0.2          A3 = 0.2
    #   delta2 = 0 + 0.9 * 0.8     - 0.6 = 0.12         A2 = 0.12 + 0.72 * 0.2   = 0.264
    #   delta1 = 0 + 0.9 * 0.6     - 0.5 = 0.04         A1 = 0.04 + 0.72 * 0.264 = 0.23008
    # Returns R_k = A_k + V_k: R1 = 0.73008, R2 = 0.864, R3 = 1.0.
    # (Check R2 as a lambda-return: 0.9 * ((1 - 0.8) * V3 + 0.8 * R3) = 0.9 * 0.96 = 0.864.)
    values = torch.tensor([[9.0, 0.5, 0.6, 9.0, 0.8]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])
    adv, ret = gae_advantages(torch.tensor([1.0]), values, mask, gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.0, 0.23008, 0.264, 0.0, 0.2], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0.0, 0.73008, 0.864, 0.0, 1.0], abs=1e-6)


def test_gae_rows_are_independent_and_padding_is_ignored():
    # Row 0 is the hand-worked row; row 1 is shorter (padded) with reward 0:
    # one step with V = 0.3: A = 0 + 0 - 0.3 = -0.3, R = 0.
    values = torch.tensor([[9.0, 0.5, 0.6, 9.0, 0.8], [0.0, 0.3, 7.0, 7.0, 7.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    adv, ret = gae_advantages(torch.tensor([1.0, 0.0]), values, mask, gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.0, 0.23008, 0.264, 0.0, 0.2], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([0.0, -0.3, 0.0, 0.0, 0.0], abs=1e-6)
    assert ret[1].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0], abs=1e-6)


def test_lambda_one_is_the_return_minus_the_value_and_lambda_zero_the_td_error():
    values = torch.tensor([[0.0, 0.2, 0.4, 0.7]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    # gamma = 0.5, lam = 1: A_k = 0.5^(K - k) * 1 - V_k -> [0.25 - 0.2, 0.5 - 0.4, 1 - 0.7].
    adv, _ = gae_advantages(torch.tensor([1.0]), values, mask, gamma=0.5, lam=1.0)
    assert adv[0, 1:].tolist() == pytest.approx([0.05, 0.1, 0.3], abs=1e-6)
    # lam = 0: A_k = r_k + gamma V_{k+1} - V_k -> [0.2 - 0.2, 0.35 - 0.4, 1 - 0.7].
    adv, _ = gae_advantages(torch.tensor([1.0]), values, mask, gamma=0.5, lam=0.0)
    assert adv[0, 1:].tolist() == pytest.approx([0.0, -0.05, 0.3], abs=1e-6)


def test_whiten_uses_only_masked_tokens():
    adv = torch.tensor([[5.0, 1.0, 3.0], [5.0, 2.0, 5.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    out = whiten(adv, mask)
    # Masked values 1, 3, 2: mean 2, population std sqrt(2/3).
    s = (2 / 3) ** 0.5
    assert out.flatten().tolist() == pytest.approx([0.0, -1 / s, 1 / s, 0.0, 0.0, 0.0], abs=1e-5)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="gamma and lam"):
        gae_advantages(torch.zeros(1), torch.zeros(1, 2), torch.ones(1, 2), gamma=1.1)
    with pytest.raises(ValueError, match="rewards"):
        gae_advantages(torch.zeros(2), torch.zeros(1, 2), torch.ones(1, 2))
