"""LocalEngine against the offline tiny Qwen2 model: correctness of batching, logprobs,
stop rules, pause/resume and weight updates."""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch

from areal_env.errors import InferenceError
from areal_env.inference.engine import InferenceEngine
from areal_env.inference.kv_cache import KVBatch
from areal_env.inference.local import LocalEngine, LocalEngineConfig
from areal_env.types import GenerationRequest, SamplingParams, WeightUpdate

PROMPTS = ["Hello world", "2+2=", "The quick brown fox jumps", "a", "<|im_start|>user\nhi"]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


@pytest.fixture
def model_tok(tiny_model_and_tokenizer):
    return tiny_model_and_tokenizer


@pytest.fixture
async def engine(model_tok):
    model, tok = model_tok
    eng = LocalEngine(model, tok)
    yield eng
    await eng.close()


def ids_of(tok, text: str) -> tuple[int, ...]:
    return tuple(tok(text)["input_ids"])


def req(tok, text: str, sampling: SamplingParams = GREEDY) -> GenerationRequest:
    return GenerationRequest(input_ids=ids_of(tok, text), sampling=sampling)


async def run_all(engine: LocalEngine, requests: list[GenerationRequest]):
    return await asyncio.gather(*(engine.agenerate(r) for r in requests))


async def until(predicate, limit: int = 100_000) -> None:
    """Yield to the event loop until ``predicate()`` holds (bounded, never timed)."""
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


def forward_logprobs(model, prompt, output, temperature: float) -> torch.Tensor:
    full = torch.tensor([list(prompt) + list(output)])
    with torch.no_grad():
        logits = model(input_ids=full).logits[0, len(prompt) - 1 : -1].float()
    logprobs = (logits / temperature).log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(output).unsqueeze(-1)).squeeze(-1)


def test_engine_satisfies_protocol(model_tok):
    assert isinstance(LocalEngine(*model_tok), InferenceEngine)


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, 0), (0.7, 0), (0.7, 5), (0.0, 0)])
async def test_logprobs_match_a_plain_forward_pass(engine, model_tok, temperature, top_k):
    model, tok = model_tok
    sampling = SamplingParams(max_new_tokens=16, temperature=temperature, top_k=top_k)
    results = await run_all(engine, [req(tok, p, sampling) for p in PROMPTS[:3]])
    reference_t = temperature or 1.0
    for r in results:
        assert r.num_output_tokens == 16
        expected = forward_logprobs(model, r.input_ids, r.output_ids, reference_t)
        torch.testing.assert_close(torch.tensor(r.output_logprobs), expected, atol=1e-4, rtol=0)


async def test_batched_and_unbatched_greedy_agree(engine, model_tok):
    _, tok = model_tok
    requests = [req(tok, p) for p in PROMPTS]
    batched = await run_all(engine, requests)
    alone = [await engine.agenerate(r) for r in requests]
    assert [b.output_ids for b in batched] == [a.output_ids for a in alone]
    assert len({tuple(a.output_ids) for a in alone}) > 1  # prompts really differ


async def test_greedy_matches_hf_generate(engine, model_tok):
    model, tok = model_tok
    for text in PROMPTS[:2]:
        r = await engine.agenerate(req(tok, text))
        out = model.generate(
            torch.tensor([r.input_ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False
        )
        assert out[0, len(r.input_ids) :].tolist() == r.output_ids


async def test_requests_joining_a_running_batch_match_solo_runs(engine, model_tok):
    _, tok = model_tok
    long_req = req(tok, PROMPTS[0], SamplingParams(max_new_tokens=60, temperature=0.0))
    joiners = [req(tok, p) for p in PROMPTS[1:4]]
    first = asyncio.create_task(engine.agenerate(long_req))
    await until(lambda: engine.num_running == 1)
    later = asyncio.gather(*(engine.agenerate(r) for r in joiners))
    seen = 0
    while not first.done():
        seen = max(seen, engine.num_running)
        await asyncio.sleep(0.001)
    joined = await later
    assert seen == 1 + len(joiners)  # they decoded alongside the long request
    solo = [await engine.agenerate(r) for r in [long_req, *joiners]]
    assert [r.output_ids for r in [first.result(), *joined]] == [s.output_ids for s in solo]


def test_kv_batch_merge_and_select_match_solo_forward(model_tok):
    model, tok = model_tok
    a, b = list(ids_of(tok, "a longer first prompt")), list(ids_of(tok, "hi"))

    def solo_next_logits(ids):
        return model(input_ids=torch.tensor([ids])).logits[0, -1]

    with torch.inference_mode():
        batch, _ = KVBatch.prefill(model, [a], pad_id=0)
        for tok_id in (5, 6, 7):
            batch.decode(model, torch.tensor([tok_id]))
        a += [5, 6, 7]
        other, _ = KVBatch.prefill(model, [b], pad_id=0)
        batch.merge(other)
        logits = batch.decode(model, torch.tensor([8, 9]))
        a, b = a + [8], b + [9]
        torch.testing.assert_close(logits[0], solo_next_logits(a), atol=1e-4, rtol=0)
        torch.testing.assert_close(logits[1], solo_next_logits(b), atol=1e-4, rtol=0)
        batch.select(torch.tensor([1]))
        assert batch.width == len(b)  # the long row's padding was trimmed
        logits = batch.decode(model, torch.tensor([10]))
        torch.testing.assert_close(logits[0], solo_next_logits(b + [10]), atol=1e-4, rtol=0)


def test_kv_batch_prefills_a_repeated_prompt_once(model_tok):
    model, tok = model_tok
    a, b = list(ids_of(tok, "a longer first prompt")), list(ids_of(tok, "hi"))
    seen: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            shared, logits = KVBatch.prefill(model, [a, b, a, a], pad_id=0)
            plain, plain_logits = KVBatch.prefill(model, [a, b], pad_id=0)
    finally:
        hook.remove()
    assert seen == [2, 2]  # two distinct prompts, one forward row each
    assert shared.lengths.tolist() == [len(a), len(b), len(a), len(a)]
    torch.testing.assert_close(logits[[0, 1]], plain_logits)
    torch.testing.assert_close(logits[2], logits[0])
    with torch.inference_mode():
        after = shared.decode(model, torch.tensor([5, 6, 7, 8]))
        expect = plain.decode(model, torch.tensor([5, 6]))
    torch.testing.assert_close(after[[0, 1]], expect, atol=1e-5, rtol=0)
    assert not torch.allclose(after[2], after[3])  # each copy decodes its own token


async def test_repeated_prompts_sample_independently(engine, model_tok):
    _, tok = model_tok
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0)
    results = await run_all(engine, [req(tok, PROMPTS[0], sampling) for _ in range(8)])
    assert len({tuple(r.output_ids) for r in results}) > 1
    greedy = await run_all(engine, [req(tok, PROMPTS[1]) for _ in range(3)])
    assert len({tuple(r.output_ids) for r in greedy}) == 1


async def test_stop_token_is_kept_and_finishes_with_stop(engine, model_tok):
    _, tok = model_tok
    free = await engine.agenerate(req(tok, PROMPTS[0]))
    stop_id = free.output_ids[3]
    cut = free.output_ids.index(stop_id) + 1
    stopped = await engine.agenerate(
        req(
            tok,
            PROMPTS[0],
            SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=(stop_id,)),
        )
    )
    assert stopped.finish_reason == "stop"
    assert stopped.output_ids == free.output_ids[:cut]
    assert stopped.output_ids[-1] == stop_id


async def test_stop_string_finishes_with_stop(engine, model_tok):
    _, tok = model_tok
    free = await engine.agenerate(req(tok, PROMPTS[1]))
    text = tok.decode(free.output_ids)
    stop = text[4:6]
    sampling = SamplingParams(max_new_tokens=12, temperature=0.0, stop=(stop,))
    stopped = await engine.agenerate(req(tok, PROMPTS[1], sampling))
    assert stopped.finish_reason == "stop"
    assert stop in tok.decode(stopped.output_ids)
    assert stop not in tok.decode(stopped.output_ids[:-1])
    assert stopped.output_ids == free.output_ids[: stopped.num_output_tokens]


async def test_no_stop_token_means_no_implicit_eos(engine, model_tok):
    _, tok = model_tok
    eos = tok.eos_token_id
    # Sample until some output holds EOS; without stop_token_ids it must not end there.
    sampling = SamplingParams(max_new_tokens=40, temperature=1.5)
    results = await run_all(engine, [req(tok, p, sampling) for p in PROMPTS * 4])
    assert all(r.finish_reason == "length" and r.num_output_tokens == 40 for r in results)
    assert any(eos in r.output_ids[:-1] for r in results)


async def test_finished_rows_stop_growing(engine, model_tok):
    _, tok = model_tok
    budgets = [1, 3, 7, 12]
    results = await run_all(
        engine,
        [
            req(tok, p, SamplingParams(max_new_tokens=n, temperature=1.0))
            for p, n in zip(PROMPTS[:4], budgets, strict=True)
        ],
    )
    assert [r.num_output_tokens for r in results] == budgets
    assert all(r.finish_reason == "length" for r in results)


async def test_context_limit_clamps_or_rejects(engine, model_tok):
    model, tok = model_tok
    limit = model.config.max_position_embeddings
    near = GenerationRequest(input_ids=(10,) * (limit - 3), sampling=GREEDY)
    result = await engine.agenerate(near)
    assert result.num_output_tokens == 3
    assert result.finish_reason == "length"
    with pytest.raises(ValueError, match=rf"{limit}.*{limit}"):
        await engine.agenerate(GenerationRequest(input_ids=(10,) * limit, sampling=GREEDY))


async def test_top_k_one_equals_greedy(engine, model_tok):
    _, tok = model_tok
    greedy = await run_all(engine, [req(tok, p) for p in PROMPTS])
    top1 = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=1)
    sampled = await run_all(engine, [req(tok, p, top1) for p in PROMPTS])
    assert [r.output_ids for r in sampled] == [g.output_ids for g in greedy]


async def test_sampling_is_reproducible_per_seed(model_tok):
    model, tok = model_tok
    sampling = SamplingParams(max_new_tokens=20, temperature=1.0)
    outputs = []
    for seed in (0, 0, 1):
        eng = LocalEngine(model, tok, LocalEngineConfig(seed=seed))
        outputs.append(
            [r.output_ids for r in await run_all(eng, [req(tok, p, sampling) for p in PROMPTS])]
        )
        await eng.close()
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


async def test_max_batch_size_queues_the_rest(model_tok):
    model, tok = model_tok
    eng = LocalEngine(model, tok, LocalEngineConfig(max_batch_size=2))
    tasks = [asyncio.create_task(eng.agenerate(req(tok, p))) for p in PROMPTS]
    await until(lambda: eng.num_running == 2)
    assert eng.num_waiting == len(PROMPTS) - 2
    results = await asyncio.gather(*tasks)
    alone = [await eng.agenerate(req(tok, p)) for p in PROMPTS]
    assert [r.output_ids for r in results] == [a.output_ids for a in alone]
    await eng.close()


async def test_prefill_cap_spreads_admissions_over_steps(model_tok):
    model, tok = model_tok
    eng = LocalEngine(model, tok, LocalEngineConfig(max_prefill_tokens=8))
    tasks = [asyncio.create_task(eng.agenerate(req(tok, p))) for p in PROMPTS]
    await until(lambda: eng.num_running > 0)
    assert eng.num_waiting > 0
    results = await asyncio.gather(*tasks)
    alone = [await eng.agenerate(req(tok, p)) for p in PROMPTS]
    assert [r.output_ids for r in results] == [a.output_ids for a in alone]
    await eng.close()


async def test_pause_blocks_until_resume(engine, model_tok):
    _, tok = model_tok
    await engine.pause()
    tasks = [asyncio.create_task(engine.agenerate(req(tok, p))) for p in PROMPTS[:2]]
    for _ in range(10):
        await asyncio.sleep(0)
    assert not any(t.done() for t in tasks)
    assert engine.num_waiting == 2 and engine.num_running == 0
    await engine.resume()
    results = await asyncio.gather(*tasks)
    assert all(r.num_output_tokens == 12 for r in results)


async def test_pause_drains_in_flight_work(model_tok):
    model, tok = model_tok
    engine = LocalEngine(model, tok, update_mode="drain")
    task = asyncio.create_task(engine.agenerate(req(tok, PROMPTS[0])))
    await until(lambda: engine.num_running == 1)  # admitted to the batch
    await engine.pause()
    assert engine.num_running == 0
    await asyncio.sleep(0)
    assert task.done() and task.result().num_output_tokens == 12
    await engine.resume()
    await engine.close()


def _perturbed_state(model, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


async def test_update_weights_changes_outputs_and_versions(model_tok, tmp_path):
    base, tok = model_tok
    model = copy.deepcopy(base)
    eng = LocalEngine(model, tok, version=2)
    requests = [req(tok, p) for p in PROMPTS[:3]]
    before = await run_all(eng, requests)
    assert all(r.output_versions == [2] * 12 for r in before)

    new_state = _perturbed_state(model, seed=1)
    await eng.update_weights(WeightUpdate(version=3, state_dict=new_state))
    assert eng.version == 3
    after = await run_all(eng, requests)
    assert [r.output_ids for r in after] != [r.output_ids for r in before]
    assert all(r.output_versions == [3] * 12 for r in after)
    for r in after:  # logprobs come from the new weights
        expected = forward_logprobs(model, r.input_ids, r.output_ids, 1.0)
        torch.testing.assert_close(torch.tensor(r.output_logprobs), expected, atol=1e-4, rtol=0)

    base.save_pretrained(tmp_path / "v4")
    await eng.update_weights(WeightUpdate(version=4, path=str(tmp_path / "v4")))
    restored = await run_all(eng, requests)
    assert [r.output_ids for r in restored] == [r.output_ids for r in before]
    assert all(r.output_versions == [4] * 12 for r in restored)
    await eng.close()


async def test_update_weights_waits_for_in_flight_requests(model_tok):
    base, tok = model_tok
    eng = LocalEngine(copy.deepcopy(base), tok, update_mode="drain")
    sampling = SamplingParams(max_new_tokens=30, temperature=1.0)
    in_flight = asyncio.create_task(eng.agenerate(req(tok, PROMPTS[0], sampling)))
    await until(lambda: eng.num_running == 1)
    await eng.update_weights(WeightUpdate(version=7, state_dict=_perturbed_state(base, 2)))
    assert in_flight.done()
    assert in_flight.result().output_versions == [0] * 30
    assert not eng._paused
    later = await eng.agenerate(req(tok, PROMPTS[0], sampling))
    assert later.output_versions == [7] * 30
    await eng.close()


async def test_bad_weight_update_is_rejected_and_leaves_model_intact(model_tok, tmp_path):
    base, tok = model_tok
    model = copy.deepcopy(base)
    eng = LocalEngine(model, tok)
    before = await eng.agenerate(req(tok, PROMPTS[0]))
    state = _perturbed_state(model, 3)
    state.pop("lm_head.weight")
    with pytest.raises(ValueError, match="missing=.*lm_head"):
        await eng.update_weights(WeightUpdate(version=1, state_dict=state))
    state = _perturbed_state(model, 3)
    state["model.norm.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match="wrong shapes=.*model.norm.weight"):
        await eng.update_weights(WeightUpdate(version=1, state_dict=state))
    with pytest.raises(FileNotFoundError):
        await eng.update_weights(WeightUpdate(version=1, path=str(tmp_path)))
    assert eng.version == 0
    after = await eng.agenerate(req(tok, PROMPTS[0]))
    assert after.output_ids == before.output_ids
    await eng.close()


async def test_bad_inputs_fail_only_their_caller(engine, model_tok):
    model, tok = model_tok
    vocab = model.get_input_embeddings().num_embeddings
    good = req(tok, PROMPTS[0])
    out_of_vocab = GenerationRequest(input_ids=(1, vocab), sampling=GREEDY)
    negative = GenerationRequest(input_ids=(-1, 2), sampling=GREEDY)
    empty = GenerationRequest(input_ids=(1,), sampling=GREEDY)
    object.__setattr__(empty, "input_ids", ())  # bypass the dataclass check
    results = await asyncio.gather(
        *(engine.agenerate(r) for r in [good, out_of_vocab, negative, empty]),
        return_exceptions=True,
    )
    assert results[0].num_output_tokens == 12
    assert isinstance(results[1], ValueError) and str(vocab) in str(results[1])
    assert isinstance(results[2], ValueError) and "-1" in str(results[2])
    assert isinstance(results[3], ValueError) and "empty" in str(results[3])


async def test_stop_strings_need_a_tokenizer(model_tok):
    model, tok = model_tok
    eng = LocalEngine(model, None)
    with pytest.raises(ValueError, match="tokenizer"):
        await eng.agenerate(req(tok, "hi", SamplingParams(stop=("x",))))
    result = await eng.agenerate(req(tok, "hi"))
    assert result.num_output_tokens == 12
    await eng.close()


class _FlakyModel(torch.nn.Module):
    """Delegates to the real model but raises while ``fail`` is set."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.fail = False

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, **kwargs):
        if self.fail:
            raise RuntimeError("simulated device failure")
        return self.inner(**kwargs)


async def test_step_errors_reach_every_waiting_request(model_tok):
    model, tok = model_tok
    flaky = _FlakyModel(model)
    eng = LocalEngine(flaky, tok)
    flaky.fail = True
    results = await asyncio.gather(
        *(eng.agenerate(req(tok, p)) for p in PROMPTS[:3]), return_exceptions=True
    )
    # An episode error (retried by the rollout layer), naming the cause.
    assert all(isinstance(r, InferenceError) and "simulated" in str(r) for r in results)
    flaky.fail = False
    assert (await eng.agenerate(req(tok, PROMPTS[0]))).num_output_tokens == 12
    await eng.close()


async def test_cancelled_request_leaves_the_batch(engine, model_tok):
    _, tok = model_tok
    doomed = asyncio.create_task(
        engine.agenerate(req(tok, PROMPTS[0], SamplingParams(max_new_tokens=200, temperature=0.0)))
    )
    survivor = asyncio.create_task(engine.agenerate(req(tok, PROMPTS[1])))
    await until(lambda: engine.num_running == 2)
    doomed.cancel()
    result = await survivor
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await until(lambda: engine.num_running == 0)
    assert result.output_ids == (await engine.agenerate(req(tok, PROMPTS[1]))).output_ids


async def test_close_fails_pending_requests(model_tok):
    model, tok = model_tok
    eng = LocalEngine(model, tok)
    await eng.pause()
    pending = asyncio.create_task(eng.agenerate(req(tok, PROMPTS[0])))
    await until(lambda: eng.num_waiting == 1)
    await eng.close()
    with pytest.raises(RuntimeError, match="closed"):
        await pending
    with pytest.raises(RuntimeError, match="closed"):
        await eng.agenerate(req(tok, PROMPTS[0]))


def test_engine_survives_successive_event_loops(model_tok):
    model, tok = model_tok
    eng = LocalEngine(model, tok)
    first = asyncio.run(eng.agenerate(req(tok, PROMPTS[0])))
    second = asyncio.run(eng.agenerate(req(tok, PROMPTS[0])))
    assert first.output_ids == second.output_ids
    asyncio.run(eng.close())


async def test_abort_ends_running_and_queued_requests_with_their_tokens_so_far(model_tok):
    model, tok = model_tok
    long = SamplingParams(max_new_tokens=200, temperature=0.0)
    engine = LocalEngine(model, tok, LocalEngineConfig(max_batch_size=1))
    try:
        running = asyncio.create_task(engine.agenerate(req(tok, PROMPTS[0], long)))
        queued = asyncio.create_task(engine.agenerate(req(tok, PROMPTS[1], long)))
        await until(lambda: engine.num_running == 1 and engine.num_waiting == 1)
        await until(lambda: len(engine._running.rows[0].output_ids) >= 2)
        assert await engine.abort() == 2
        first, second = await running, await queued
        assert first.finish_reason == second.finish_reason == "abort"
        assert 2 <= first.num_output_tokens < 200 and second.num_output_tokens == 0
        assert len(first.output_logprobs) == len(first.output_versions) == first.num_output_tokens
        # The engine goes on serving; the aborted prefix continues the same greedy text.
        again = await engine.agenerate(req(tok, PROMPTS[0], GREEDY))
        assert again.output_ids[: first.num_output_tokens] == first.output_ids[:12]
        assert engine.num_running == engine.num_waiting == 0
    finally:
        await engine.close()


async def test_abort_by_id_leaves_the_other_requests_running(engine, model_tok):
    _, tok = model_tok
    keep = req(tok, PROMPTS[0])
    drop = req(tok, PROMPTS[1], SamplingParams(max_new_tokens=200, temperature=0.0))
    tasks = [asyncio.create_task(engine.agenerate(r)) for r in (keep, drop)]
    await until(lambda: engine.num_running == 2)
    assert await engine.abort([drop.request_id]) == 1
    kept, dropped = await asyncio.gather(*tasks)
    assert dropped.finish_reason == "abort" and dropped.num_output_tokens < 200
    assert kept.finish_reason == "length" and kept.num_output_tokens == 12
    assert await engine.abort(["no-such-request"]) == 0


def test_engine_takes_state_dicts_and_folders(model_tok):
    model, tok = model_tok
    assert LocalEngine(model, tok).weight_transports == ("state_dict", "disk")
