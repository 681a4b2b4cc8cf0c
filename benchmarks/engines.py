"""The local engine against a vLLM-CPU server, and our client against raw HTTP to vLLM.

One load, three ways, on the same tiny model: ``--requests`` concurrent requests of
exactly ``--new-tokens`` sampled tokens each (no stop token), from the same prompts.

* ``local``: LocalEngine in this process (continuous batching, KV cache);
* ``client``: RemoteEngine -> a vLLM server this script launches;
* ``raw``: the very ``/v1/completions`` payloads our client sends, posted with
  aiohttp directly (no engine, routing, versions or result objects).

Rounds alternate the three sides (local, client, raw, local, ...) after a warm-up
so that drift on the machine hits each alike; the medians and their ratios are
printed. Targets (issue 11): client / raw <= 1.10; local at least as fast as vLLM.

Usage::

    python benchmarks/engines.py --vllm-python .venv-vllm/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import torch

from areal_env.inference.local import LocalEngine
from areal_env.inference.remote.api import PROBE_TEXT, VLLMAPI
from areal_env.inference.remote.engine import KEEPALIVE_S, RemoteEngine, RemoteEngineConfig
from areal_env.inference.remote.launch import launch_servers
from areal_env.models.tiny import build_tiny_model, load_model_and_tokenizer
from areal_env.types import GenerationRequest, SamplingParams

CPU_ARGS = ["--enforce-eager", "--kv-cache-memory-bytes", "67108864", "--dtype", "float32"]


def prompts_for(tokenizer, n: int) -> list[tuple[int, ...]]:
    texts = [f"Q: {i * 7}+{i * i}=? A:" for i in range(n)]
    return [tuple(tokenizer.encode(t, add_special_tokens=False)) for t in texts]


async def engine_round(engine, prompts, new_tokens: int) -> float:
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=1.0)
    start = time.perf_counter()
    results = await asyncio.gather(
        *(engine.agenerate(GenerationRequest(input_ids=p, sampling=sampling)) for p in prompts)
    )
    elapsed = time.perf_counter() - start
    assert all(r.num_output_tokens == new_tokens for r in results)
    return elapsed


async def raw_round(
    session: aiohttp.ClientSession, api: VLLMAPI, prompts, new_tokens: int
) -> float:
    """The very payloads our client sends, posted and parsed with nothing around them."""
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=1.0)

    async def one(i, prompt):
        payload = api.completion_payload(prompt, sampling, new_tokens, f"raw-{i}")
        async with session.post(api.url + "/v1/completions", json=payload) as response:
            body = await response.json()
        assert len(body["choices"][0]["token_ids"]) == new_tokens
        return body

    start = time.perf_counter()
    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return time.perf_counter() - start


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "tiny")
        model, tokenizer = load_model_and_tokenizer(path)
        model.eval()
        prompts = prompts_for(tokenizer, args.requests)
        local = LocalEngine(model, tokenizer)
        group, urls = await launch_servers(
            "vllm",
            python=args.vllm_python,
            model=str(path),
            count=1,
            log_dir=Path(args.log_dir),
            max_model_len=512,
            extra_args=CPU_ARGS,
            startup_timeout=300,
        )
        probe = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
        client = RemoteEngine("vllm", urls, RemoteEngineConfig(), probe_ids=probe)
        raw_api = VLLMAPI(urls[0])
        raw_api.model_name = "policy"
        try:
            await client.start()
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
            async with aiohttp.ClientSession(connector=connector) as session:
                sides = {
                    "local": lambda: engine_round(local, prompts, args.new_tokens),
                    "client": lambda: engine_round(client, prompts, args.new_tokens),
                    "raw": lambda: raw_round(session, raw_api, prompts, args.new_tokens),
                }
                for run in sides.values():  # warm-up
                    await run()
                times: dict[str, list[float]] = {k: [] for k in sides}
                for _ in range(args.rounds):
                    for name, run in sides.items():
                        times[name].append(await run())
        finally:
            await client.close()
            await local.close()
            group.stop_all()
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.requests * args.new_tokens
    print(f"load: {args.requests} requests x {args.new_tokens} tokens, {args.rounds} rounds")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name, seconds in med.items():
        print(f"  {name:<7} median {seconds:.3f} s  ({tokens / seconds:,.0f} tok/s)")
    print(f"client counters: {client.stats}")
    print(f"client / raw HTTP : {med['client'] / med['raw']:.3f}  (target <= 1.10)")
    print(f"local / vLLM raw  : {med['local'] / med['raw']:.3f}  (target <= 1.00)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--log-dir", default="outputs/bench-engines", help="server logs")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
