"""LocalEngine's interruptible generation: a pause sends running requests back to the
queue, and they continue from prompt + tokens so far under the new weights."""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch

from areal_env.inference.local import LocalEngine, LocalEngineConfig
from areal_env.types import GenerationRequest, GenerationResult, SamplingParams, WeightUpdate

PROMPTS = ["Hello world", "2+2=", "The quick brown fox jumps", "a", "<|im_start|>user\nhi"]
TEMPERATURE = 0.7


@pytest.fixture
def model_tok(tiny_model_and_tokenizer):
    return tiny_model_and_tokenizer


def ids_of(tok, text: str) -> tuple[int, ...]:
    return tuple(tok(text)["input_ids"])


def req(tok, text: str, max_new_tokens: int, temperature: float = TEMPERATURE):
    # No stop tokens or strings: every request runs to its budget.
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    return GenerationRequest(input_ids=ids_of(tok, text), sampling=sampling)


async def until(predicate) -> None:
    """Yield to the event loop until ``predicate()`` holds (at most a minute)."""
    async with asyncio.timeout(60):
        while not predicate():  # noqa: ASYNC110 - polls engine state, which has no event
            await asyncio.sleep(0)


def running_outputs(engine: LocalEngine) -> list[int]:
    return [len(r.output_ids) for r in engine._running.rows if not r.future.done()]


def forward_logprobs(model, prompt, output, temperature: float) -> torch.Tensor:
    """``log_softmax(logits / T)`` of each output token, from one full-sequence forward."""
    full = torch.tensor([list(prompt) + list(output)])
    with torch.no_grad():
        logits = model(input_ids=full).logits[0, len(prompt) - 1 : -1].float()
    logprobs = (logits / temperature).log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(output).unsqueeze(-1)).squeeze(-1)


def perturbed_state(model, seed: int) -> dict[str, torch.Tensor]:
    """Different weights: every parameter plus Gaussian noise (small enough that
    logits stay in the range where a cached and a full forward agree to 1e-4)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


def assert_logprobs_by_version(
    result: GenerationResult, models: dict[int, torch.nn.Module], temperature: float
) -> None:
    """Each token's logprob is the forward pass of the weights of its version."""
    got = torch.tensor(result.output_logprobs)
    versions = torch.tensor(result.output_versions)
    for version, model in models.items():
        where = versions == version
        if where.any():
            expected = forward_logprobs(model, result.input_ids, result.output_ids, temperature)
            torch.testing.assert_close(got[where], expected[where], atol=1e-4, rtol=0)


def split_at(versions: list[int]) -> int:
    """Number of leading version-0 tokens; asserts the rest are all version 1."""
    k = versions.count(0)
    assert versions == [0] * k + [1] * (len(versions) - k), versions
    return k


@pytest.fixture
def models(model_tok):
    """(engine's model, a frozen copy of the old weights, tokenizer)."""
    base, tok = model_tok
    return copy.deepcopy(base), copy.deepcopy(base), tok


async def test_pause_interrupts_and_the_request_continues_under_new_weights(models):
    model, old, tok = models
    engine = LocalEngine(model, tok)
    try:
        assert engine.update_mode == "interrupt"
        task = asyncio.create_task(engine.agenerate(req(tok, PROMPTS[0], 60)))
        await until(lambda: running_outputs(engine) and running_outputs(engine)[0] >= 5)
        await engine.pause()
        # pause returned mid-completion: the row waits, unfinished, at the queue's head.
        assert not task.done()
        assert engine.num_running == 0 and engine.num_waiting == 1
        assert engine.num_interrupted == 1
        row = engine._queue[0]
        at_pause = len(row.output_ids)
        assert 5 <= at_pause < 60
        assert row.output_versions == [0] * at_pause

        await engine.update_weights(WeightUpdate(version=1, state_dict=perturbed_state(old, 1)))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done() and len(row.output_ids) == at_pause  # still paused
        await engine.resume()
        result = await task
    finally:
        await engine.close()

    assert result.finish_reason == "length" and result.num_output_tokens == 60
    k = split_at(result.output_versions)
    assert k == at_pause and 0 < k < 60
    assert_logprobs_by_version(result, {0: old, 1: model}, TEMPERATURE)
    # The new tokens really come from the new weights, not the old ones.
    stale = forward_logprobs(old, result.input_ids, result.output_ids, TEMPERATURE)
    assert not torch.allclose(torch.tensor(result.output_logprobs[k:]), stale[k:], atol=1e-4)


async def test_drain_mode_pause_waits_for_the_request(models):
    model, old, tok = models
    engine = LocalEngine(model, tok, update_mode="drain")
    try:
        task = asyncio.create_task(engine.agenerate(req(tok, PROMPTS[0], 60)))
        await until(lambda: running_outputs(engine) and running_outputs(engine)[0] >= 5)
        await engine.pause()
        assert engine.num_running == 0 and engine.num_waiting == 0
        await asyncio.sleep(0)
        assert task.done()
        await engine.update_weights(WeightUpdate(version=1, state_dict=perturbed_state(old, 1)))
        await engine.resume()
        result = await task
        assert engine.num_interrupted == 0
    finally:
        await engine.close()
    assert result.finish_reason == "length" and result.num_output_tokens == 60
    assert result.output_versions == [0] * 60
    assert_logprobs_by_version(result, {0: old}, TEMPERATURE)


async def test_concurrent_requests_are_requeued_in_order_and_all_complete(models):
    model, old, tok = models
    engine = LocalEngine(model, tok, LocalEngineConfig(max_batch_size=3))
    budgets = [20, 35, 50, 15]
    requests = [req(tok, p, n) for p, n in zip(PROMPTS, budgets, strict=False)]
    try:
        tasks = [asyncio.create_task(engine.agenerate(r)) for r in requests]
        await until(lambda: len(running_outputs(engine)) == 3 and min(running_outputs(engine)) >= 3)
        assert engine.num_waiting == 1  # the fourth waits for a free row
        await engine.pause()
        assert not any(t.done() for t in tasks)
        # The interrupted rows went back to the front, in order, before the waiting one.
        assert [r.request.request_id for r in engine._queue] == [r.request_id for r in requests]
        assert engine.num_running == 0 and engine.num_waiting == 4
        assert engine.num_interrupted == 3
        at_pause = [len(r.output_ids) for r in engine._queue]
        assert at_pause[3] == 0 and len(set(at_pause[:3])) == 1  # admitted together

        late = asyncio.create_task(engine.agenerate(req(tok, PROMPTS[4], 10)))
        await until(lambda: engine.num_waiting == 5)
        await engine.update_weights(WeightUpdate(version=1, state_dict=perturbed_state(old, 2)))
        await engine.resume()
        results = await asyncio.gather(*tasks, late)
        assert engine.num_interrupted == 3  # counted once each, cumulative
    finally:
        await engine.close()

    for result, budget, k in zip(results, [*budgets, 10], [*at_pause, 0], strict=True):
        assert result.finish_reason == "length"
        assert result.num_output_tokens == budget
        assert len(result.output_logprobs) == len(result.output_versions) == budget
        assert split_at(result.output_versions) == k
        assert_logprobs_by_version(result, {0: old, 1: model}, TEMPERATURE)


async def test_interrupt_without_an_update_continues_the_same_greedy_text(model_tok):
    model, tok = model_tok
    engine = LocalEngine(model, tok)
    request = req(tok, PROMPTS[2], 40, temperature=0.0)
    try:
        solo = await engine.agenerate(request)
        task = asyncio.create_task(engine.agenerate(request))
        await until(lambda: running_outputs(engine) and running_outputs(engine)[0] >= 5)
        await engine.pause()
        assert not task.done() and engine.num_interrupted == 1
        await engine.resume()
        again = await task
    finally:
        await engine.close()
    assert again.output_ids == solo.output_ids
    torch.testing.assert_close(
        torch.tensor(again.output_logprobs), torch.tensor(solo.output_logprobs), atol=1e-4, rtol=0
    )
    assert again.output_versions == [0] * 40


async def test_interrupted_request_near_the_context_limit_keeps_its_clamped_budget(model_tok):
    model, tok = model_tok
    limit = model.config.max_position_embeddings
    engine = LocalEngine(model, tok)
    request = GenerationRequest(
        input_ids=(10,) * (limit - 12), sampling=SamplingParams(max_new_tokens=100)
    )
    try:
        task = asyncio.create_task(engine.agenerate(request))
        await until(lambda: running_outputs(engine) and running_outputs(engine)[0] >= 3)
        await engine.pause()
        assert not task.done() and engine.num_interrupted == 1
        await engine.resume()
        result = await task
    finally:
        await engine.close()
    assert result.finish_reason == "length" and result.num_output_tokens == 12


async def test_abort_ends_an_interrupted_request_with_its_partial_tokens(models):
    model, _, tok = models
    engine = LocalEngine(model, tok)
    try:
        doomed_req, other_req = req(tok, PROMPTS[0], 60), req(tok, PROMPTS[1], 60)
        doomed = asyncio.create_task(engine.agenerate(doomed_req))
        other = asyncio.create_task(engine.agenerate(other_req))
        await until(lambda: len(running_outputs(engine)) == 2 and running_outputs(engine)[0] >= 4)
        await engine.pause()
        at_pause = len(engine._queue[0].output_ids)
        assert engine.num_waiting == 2 and engine.num_interrupted == 2
        assert await engine.abort([doomed_req.request_id]) == 1
        result = await doomed
        assert engine.num_waiting == 1
        assert result.finish_reason == "abort"
        assert 4 <= result.num_output_tokens == at_pause < 60
        assert result.output_versions == [0] * at_pause
        assert len(result.output_logprobs) == at_pause
        await engine.resume()
        finished = await other
        assert finished.finish_reason == "length" and finished.num_output_tokens == 60
        assert finished.output_versions == [0] * 60
    finally:
        await engine.close()


async def test_abort_all_while_paused_ends_interrupted_requests(model_tok):
    model, tok = model_tok
    engine = LocalEngine(model, tok)
    try:
        task = asyncio.create_task(engine.agenerate(req(tok, PROMPTS[0], 60)))
        await until(lambda: running_outputs(engine) and running_outputs(engine)[0] >= 2)
        await engine.pause()
        assert await engine.abort() == 1
        result = await task
        assert result.finish_reason == "abort" and 2 <= result.num_output_tokens < 60
        assert engine.num_waiting == engine.num_running == 0
        await engine.resume()
        assert (await engine.agenerate(req(tok, PROMPTS[1], 5))).num_output_tokens == 5
    finally:
        await engine.close()


def test_invalid_update_mode_is_rejected(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="'bogus'"):
        LocalEngine(model, tok, update_mode="bogus")  # type: ignore[arg-type]
    assert LocalEngine(model, tok, update_mode="drain").update_mode == "drain"


async def test_prefill_cap_counts_the_tokens_an_interrupted_row_already_has(models):
    model, _, tok = models
    prompts = [ids_of(tok, PROMPTS[0]), ids_of(tok, PROMPTS[2])]
    longest = max(len(p) for p in prompts)
    # Both prompts fit in one prefill; with 5+ generated tokens each, they no longer do.
    config = LocalEngineConfig(max_prefill_tokens=2 * longest + 4)
    engine = LocalEngine(model, tok, config)
    prefills: list[tuple[int, int]] = []

    def record(_, args, kwargs):
        shape = tuple(kwargs["input_ids"].shape)
        if shape[1] > 1:
            prefills.append(shape)

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    sampling = SamplingParams(max_new_tokens=30, temperature=TEMPERATURE)
    try:
        tasks = [
            asyncio.create_task(engine.agenerate(GenerationRequest(input_ids=p, sampling=sampling)))
            for p in prompts
        ]
        await until(lambda: len(running_outputs(engine)) == 2 and running_outputs(engine)[0] >= 5)
        await engine.pause()
        assert prefills == [(2, longest)]
        at_pause = len(engine._queue[0].output_ids)
        await engine.resume()
        results = await asyncio.gather(*tasks)
    finally:
        hook.remove()
        await engine.close()
    # Re-admitted one at a time, each prefilling prompt + output so far.
    assert prefills[1:] == [(1, len(p) + at_pause) for p in prompts]
    assert all(r.num_output_tokens == 30 for r in results)
