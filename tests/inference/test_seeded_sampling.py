"""Per-request seeds: a seeded request draws the same tokens whatever else the engine runs."""

from __future__ import annotations

import asyncio

import pytest
import torch

from areal_env.inference.chat_client import ChatClient
from areal_env.inference.local import LocalEngine
from areal_env.inference.sampling import sample_next_tokens
from areal_env.rollout.seeding import episode_seed, request_seed_of
from areal_env.testing import ScriptedEngine, char_tokenizer
from areal_env.types import GenerationRequest, SamplingParams

PROMPTS = ["Hello world", "2+2=", "The quick brown fox", "a"]


def _request(tok, text, seed):
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0, seed=seed)
    return GenerationRequest(input_ids=tuple(tok(text)["input_ids"]), sampling=sampling)


async def test_a_seeded_request_is_reproducible_alone_and_in_any_batch(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    engine = LocalEngine(model, tok)
    try:
        alone = await engine.agenerate(_request(tok, PROMPTS[0], seed=11))
        # The same request among others (unseeded and differently seeded), twice over.
        seeds = (None, 5, None)
        crowd = [_request(tok, p, seed=s) for p, s in zip(PROMPTS[1:], seeds, strict=True)]
        together = await asyncio.gather(
            *(engine.agenerate(r) for r in [*crowd, _request(tok, PROMPTS[0], seed=11), *crowd])
        )
        other_seed = await engine.agenerate(_request(tok, PROMPTS[0], seed=12))
    finally:
        await engine.close()
    assert together[3].output_ids == alone.output_ids
    # Logprobs agree to float rounding: a batched forward sums in another order.
    assert together[3].output_logprobs == pytest.approx(alone.output_logprobs, abs=1e-5)
    assert other_seed.output_ids != alone.output_ids  # the seed matters (16 sampled tokens)


def test_row_generators_leave_unseeded_rows_on_the_shared_stream():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    temperature, top_k, top_p = torch.ones(3), torch.zeros(3, dtype=torch.long), torch.ones(3)
    own = torch.Generator().manual_seed(9)
    tokens, _ = sample_next_tokens(
        logits, temperature, top_k, top_p, torch.Generator().manual_seed(1), [None, own, None]
    )
    want_own = torch.multinomial(
        logits[1].softmax(-1), 1, generator=torch.Generator().manual_seed(9)
    )[0]
    want_shared = torch.multinomial(
        logits[[0, 2]].softmax(-1), 1, generator=torch.Generator().manual_seed(1)
    ).squeeze(-1)
    assert tokens[1] == want_own
    assert tokens[[0, 2]].tolist() == want_shared.tolist()


async def test_a_seeded_episode_gives_each_model_call_its_own_derived_seed():
    tok = char_tokenizer()
    engine = ScriptedEngine(replies=[tok.encode("7")])
    client = ChatClient(engine, tok)
    with episode_seed(42):
        episode = client.episode()
        for _ in range(2):
            await episode.chat.completions.create(messages=[{"role": "user", "content": "1+6"}])
    await client.episode().chat.completions.create(messages=[{"role": "user", "content": "x"}])
    seeds = [request.sampling.seed for request in engine.requests]
    assert seeds == [request_seed_of(42, 0), request_seed_of(42, 1), None]
