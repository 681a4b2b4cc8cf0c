"""Unit tests of the pure sampling functions."""

from __future__ import annotations

import math

import pytest
import torch

from areal_env.inference.sampling import (
    apply_temperature,
    gather_logprobs,
    greedy,
    sample_from_logits,
    sample_next_tokens,
    top_k_filter,
    top_p_filter,
)

NEG_INF = float("-inf")


def _logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


def test_apply_temperature_scales_rows_and_treats_zero_as_one():
    logits = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    out = apply_temperature(logits, torch.tensor([0.0, 0.5, 2.0]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]]))


def test_top_k_keeps_k_largest_per_row():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [0.1, 3.0, 2.0, -1.0], [5.0, 1.0, 2.0, 3.0]])
    out = top_k_filter(logits, torch.tensor([2, 0, 1]))
    assert out[0].tolist() == [NEG_INF, 3.0, 2.0, NEG_INF]
    assert out[1].tolist() == logits[1].tolist()  # k = 0 disables
    assert out[2].tolist() == [5.0, NEG_INF, NEG_INF, NEG_INF]


def test_top_k_larger_than_vocab_keeps_everything():
    logits = torch.randn(2, 5)
    assert torch.equal(top_k_filter(logits, torch.tensor([5, 99])), logits)


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(1.0, 4), (0.95, 3), (0.7, 2), (0.5, 1), (0.01, 1)],
)
def test_top_p_keeps_smallest_nucleus(top_p: float, kept: int):
    # shuffled so that the filter has to undo its sort
    probs = [0.15, 0.5, 0.05, 0.3]
    out = top_p_filter(_logits_of(probs), torch.tensor([top_p]))
    survivors = sorted(
        (p for p, v in zip(probs, out[0].tolist(), strict=True) if v != NEG_INF), reverse=True
    )
    assert survivors == sorted(probs, reverse=True)[:kept]


def test_top_p_mixed_rows():
    logits = torch.cat([_logits_of([0.6, 0.4]), _logits_of([0.6, 0.4])])
    out = top_p_filter(logits, torch.tensor([0.5, 1.0]))
    assert out[0, 1].item() == NEG_INF
    assert torch.isfinite(out[1]).all()


def test_greedy_and_gather_logprobs():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    tokens = greedy(logits)
    assert tokens.tolist() == [1, 0]
    expected = logits.log_softmax(-1)[[0, 1], [1, 0]]
    torch.testing.assert_close(gather_logprobs(logits, tokens), expected)


def test_sample_from_logits_is_seeded_and_never_draws_masked_tokens():
    logits = torch.tensor([[0.0, NEG_INF, 0.0, NEG_INF]]).expand(500, 4)
    a = sample_from_logits(logits, torch.Generator().manual_seed(3))
    b = sample_from_logits(logits, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert set(a.tolist()) == {0, 2}


def test_sample_from_logits_follows_the_distribution():
    probs = [0.6, 0.3, 0.1]
    logits = _logits_of(probs).expand(20000, 3)
    draws = sample_from_logits(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / draws.numel()
    torch.testing.assert_close(freq, torch.tensor(probs), atol=0.02, rtol=0)


def test_sample_next_tokens_logprob_is_untruncated_at_temperature():
    torch.manual_seed(0)
    logits = torch.randn(4, 11)
    temperature = torch.tensor([0.0, 1.0, 0.7, 0.7])
    top_k = torch.tensor([0, 0, 1, 3])
    top_p = torch.tensor([1.0, 1.0, 1.0, 0.5])
    tokens, logprobs = sample_next_tokens(
        logits, temperature, top_k, top_p, torch.Generator().manual_seed(0)
    )
    assert tokens[0] == logits[0].argmax()  # greedy row
    assert tokens[2] == logits[2].argmax()  # top-k = 1 row
    effective_t = torch.tensor([1.0, 1.0, 0.7, 0.7]).unsqueeze(-1)
    expected = (logits / effective_t).log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs, expected)
    assert logprobs[2].item() < 0  # not renormalised over the single top-k survivor
    assert math.isfinite(logprobs.sum().item())


def test_sample_next_tokens_top_k_one_equals_greedy():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(1))
    ones = torch.ones(16)
    tokens, _ = sample_next_tokens(
        logits, ones, torch.ones(16, dtype=torch.long), ones, torch.Generator()
    )
    assert torch.equal(tokens, logits.argmax(-1))
