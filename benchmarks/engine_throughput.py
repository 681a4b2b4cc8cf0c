"""Throughput of LocalEngine against sequential ``model.generate`` calls, in one process.

Both sides serve the same prompts with the same model and sample exactly
``--new-tokens`` tokens per request (no stop token). Each side runs the whole
workload once as a warm-up, then once timed. The ratio engine / generate is
the figure to compare across machines.

Usage::

    python benchmarks/engine_throughput.py                     # tiny model, built offline
    python benchmarks/engine_throughput.py --model-path /path/to/hf_folder
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time

import torch

from areal_env.inference.local import LocalEngine
from areal_env.models.tiny import build_tiny_model, load_model_and_tokenizer
from areal_env.types import GenerationRequest, SamplingParams


def make_prompts(tokenizer, n: int) -> list[tuple[int, ...]]:
    texts = [f"Question {i}: what is {i * 7} + {i * i}? Think step by step." for i in range(n)]
    return [tuple(tokenizer(t)["input_ids"]) for t in texts]


async def engine_run(engine: LocalEngine, prompts, new_tokens: int) -> int:
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=1.0)
    requests = [GenerationRequest(input_ids=p, sampling=sampling) for p in prompts]
    results = await asyncio.gather(*(engine.agenerate(r) for r in requests))
    assert all(r.num_output_tokens == new_tokens for r in results)
    return sum(r.num_output_tokens for r in results)


def generate_run(model, tokenizer, prompts, new_tokens: int) -> int:
    total = 0
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt], device=model.device),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=model.device),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=True,
                pad_token_id=pad_id,
            )
            generated = out.shape[1] - len(prompt)
            assert generated == new_tokens
            total += generated
    return total


def timed(fn, *args) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = fn(*args)
    return tokens, time.perf_counter() - start


async def measure_engine(model, tokenizer, prompts, new_tokens: int) -> tuple[int, float]:
    engine = LocalEngine(model, tokenizer)
    try:
        await engine_run(engine, prompts, new_tokens)  # warm-up
        start = time.perf_counter()
        tokens = await engine_run(engine, prompts, new_tokens)
        return tokens, time.perf_counter() - start
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None, help="local HF folder; default: tiny model")
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model_path or build_tiny_model(tmp)
        model, tokenizer = load_model_and_tokenizer(path)
        model.eval()
        prompts = make_prompts(tokenizer, args.num_requests)
        torch.manual_seed(args.seed)

        eng_tokens, eng_s = asyncio.run(measure_engine(model, tokenizer, prompts, args.new_tokens))
        generate_run(model, tokenizer, prompts, args.new_tokens)  # warm-up
        gen_tokens, gen_s = timed(generate_run, model, tokenizer, prompts, args.new_tokens)

    eng_tps, gen_tps = eng_tokens / eng_s, gen_tokens / gen_s
    print(f"model: {args.model_path or 'tiny Qwen2 (built offline)'}")
    print(f"machine: {platform.machine()}, torch threads: {torch.get_num_threads()}")
    print(f"workload: {args.num_requests} requests x {args.new_tokens} new tokens (sampled)")
    print(f"LocalEngine (concurrent): {eng_tokens} tokens in {eng_s:.2f} s = {eng_tps:.0f} tok/s")
    print(
        f"model.generate (sequential): {gen_tokens} tokens in {gen_s:.2f} s = {gen_tps:.0f} tok/s"
    )
    print(f"ratio engine / generate: {eng_tps / gen_tps:.2f}x")


if __name__ == "__main__":
    main()
