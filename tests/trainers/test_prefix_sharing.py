"""The shared-prefix forward equals the plain forward wherever a loss reads it."""

from __future__ import annotations

import copy

import pytest
import torch

from areal_env.trainers.backends import prefix_sharing
from areal_env.trainers.backends.prefix_sharing import forward_logits


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two groups with prompts of different lengths and answers of different lengths."""
    rows = [
        ([5, 6, 7, 8, 9, 10], [11, 12, 3]),
        ([5, 6, 7, 8, 9, 10], [13, 3]),
        ([5, 6, 7, 8, 9, 10], [11, 14, 15, 3]),
        ([20, 21, 22, 23], [24, 3]),
        ([20, 21, 22, 23], [25, 26, 27, 28, 3]),
    ]
    length = max(len(p) + len(o) for p, o in rows)
    ids = torch.zeros((len(rows), length), dtype=torch.long)
    attn = torch.zeros_like(ids)
    mask = torch.zeros((len(rows), length))
    for i, (p, o) in enumerate(rows):
        ids[i, : len(p) + len(o)] = torch.tensor(p + o)
        attn[i, : len(p) + len(o)] = 1
        mask[i, len(p) : len(p) + len(o)] = 1
    return ids, attn, mask, torch.tensor([0, 0, 0, 1, 1])


def _scored(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The logits a loss reads: position t-1 for every scored token t."""
    return logits[:, :-1][mask[:, 1:].bool()]


def test_logits_and_gradients_match_the_plain_forward(tiny_model_and_tokenizer) -> None:
    model, _ = tiny_model_and_tokenizer
    shared_model = copy.deepcopy(model).train()
    plain_model = copy.deepcopy(model).train()
    ids, attn, mask, groups = _batch()
    calls: list[tuple[int, int]] = []
    shared_model.register_forward_pre_hook(
        lambda _, a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    shared = forward_logits(shared_model, ids, attn, mask, groups)
    plain = plain_model(input_ids=ids, attention_mask=attn).logits
    assert calls == [(2, 5), (5, 6)]  # the prompts once (less their last token), then suffixes
    torch.testing.assert_close(_scored(shared, mask), _scored(plain, mask), atol=1e-5, rtol=0)
    weights = torch.randn_like(_scored(plain, mask))
    (_scored(shared, mask) * weights).sum().backward()
    (_scored(plain, mask) * weights).sum().backward()
    for (name, a), b in zip(shared_model.named_parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_rows_without_a_common_prompt_take_the_plain_path(tiny_model_and_tokenizer) -> None:
    model, _ = tiny_model_and_tokenizer
    ids, attn, mask, _ = _batch()
    calls: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda _, a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            alone = forward_logits(model, ids, attn, mask, torch.arange(5))
            unmasked = forward_logits(model, ids, attn)
    finally:
        hook.remove()
    assert calls == [tuple(ids.shape), tuple(ids.shape)]
    torch.testing.assert_close(alone, unmasked)


def test_small_savings_take_the_plain_path(tiny_model_and_tokenizer, monkeypatch) -> None:
    model, _ = tiny_model_and_tokenizer
    ids, attn, mask, groups = _batch()
    monkeypatch.setattr(prefix_sharing, "MIN_SHARED_FRACTION", 0.99)
    calls: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda _, a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            forward_logits(model, ids, attn, mask, groups)
    finally:
        hook.remove()
    assert calls == [tuple(ids.shape)]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_agree(tiny_model_and_tokenizer, temperature: float) -> None:
    from areal_env.trainers.backends.base import gather_token_logprobs

    model, _ = tiny_model_and_tokenizer
    ids, attn, mask, groups = _batch()
    with torch.no_grad():
        shared = gather_token_logprobs(
            forward_logits(model, ids, attn, mask, groups), ids, temperature
        )
        plain = gather_token_logprobs(
            model(input_ids=ids, attention_mask=attn).logits, ids, temperature
        )
    torch.testing.assert_close(shared * mask, plain * mask, atol=1e-5, rtol=0)
