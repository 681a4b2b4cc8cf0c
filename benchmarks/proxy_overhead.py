"""What the OpenAI-compatible server costs: sessions over HTTP against the in-process client.

The same engine (a LocalEngine on the embedded tiny model) plays the same load
both ways: ``--sessions`` episodes at once, each ``--turns`` chat turns (user
message, reply, next user message...) with a token budget per turn of
``--max-tokens`` or, with ``--lengths varied`` (the default), between half of it
and all of it, differing across episodes and turns, so that episodes drift apart
as rollouts do (``equal``: every episode in lockstep, HTTP's worst case):

1. in-process: each episode calls ``EpisodeClient.chat.completions.create``, as
   our own agents do;
2. HTTP: each episode opens a session of an ``OpenAIServer`` in this process and
   an agent calls its ``base_url`` with its key, as a wrapped agent program
   would, through an aiohttp client (``--client aiohttp``, the lightest) or the
   official ``AsyncOpenAI`` (``--client openai``; one per process, each episode
   a copy with its own base URL and key). The agents run on the server's own
   event loop (``--agents here``, the default: the client's work is counted too,
   and it holds the interpreter lock the engine's forward also needs) or in a
   process of their own (``--agents process``, as agent programs run; on a small
   machine it takes cores from the engine).

Decoding is greedy by default, so both sides do the same engine work: the
benchmark checks every episode's turns and prints both sides' token counts.
Each side is timed ``--repeats`` times, alternating, after one untimed warm-up;
the best run counts. The ratio printed is in-process completions/s over HTTP
completions/s: 1.10 means HTTP costs 10% more.

Usage::

    python benchmarks/proxy_overhead.py
    python benchmarks/proxy_overhead.py --client openai --sessions 32 --turns 4 --max-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import torch
from openai import AsyncOpenAI

from areal_env.inference.chat_client import ChatClient, SamplingConfig
from areal_env.inference.local import LocalEngine
from areal_env.models.tiny import build_tiny_model, load_model_and_tokenizer
from areal_env.serving import OpenAIServer
from areal_env.types import Trajectory


def questions(i: int, turn: int) -> dict[str, str]:
    return {"role": "user", "content": f"{i % 90 + 10}+{turn + 1}="}


async def in_process(client: ChatClient, args: argparse.Namespace, i: int) -> Trajectory:
    episode = client.episode()
    history: list[Any] = []
    for turn in range(args.turns):
        history.append(questions(i, turn))
        resp = await episode.chat.completions.create(messages=history, **sampling(args, i, turn))
        history.append(resp.choices[0].message)
    return episode.trajectory


_OPENAI: list[AsyncOpenAI] = []


def openai_client() -> AsyncOpenAI:
    """One AsyncOpenAI per process; episodes take copies with their own URL and key.

    Building a client costs ~30 ms (an SSL context); a program builds one, so the
    benchmark counts only the calls.
    """
    if not _OPENAI:
        _OPENAI.append(AsyncOpenAI(base_url="http://unused/v1", api_key="unused", max_retries=0))
    return _OPENAI[0]


async def agent(
    base_url: str, api_key: str, http: aiohttp.ClientSession, args: argparse.Namespace, i: int
) -> None:
    """One episode as a wrapped agent plays it: only a base URL and a key."""
    history: list[Any] = []
    if args.client == "openai":
        client = openai_client().with_options(base_url=base_url, api_key=api_key)
        for turn in range(args.turns):
            history.append(questions(i, turn))
            resp = await client.chat.completions.create(
                model="policy", messages=history, **sampling(args, i, turn)
            )
            history.append(resp.choices[0].message.to_dict(exclude_none=True))
        return
    url, auth = base_url + "/chat/completions", {"Authorization": f"Bearer {api_key}"}
    for turn in range(args.turns):
        history.append(questions(i, turn))
        body = {"model": "policy", "messages": history, **sampling(args, i, turn)}
        async with http.post(url, json=body, headers=auth) as r:
            reply = (await r.json())["choices"][0]["message"]
        history.append({k: v for k, v in reply.items() if v is not None})


def sampling(args: argparse.Namespace, i: int, turn: int) -> dict[str, Any]:
    """Turn ``turn`` of episode ``i``: ``--max-tokens``, or with ``--lengths varied`` a
    budget between half of it and all of it that differs across episodes and turns."""
    budget = args.max_tokens
    if args.lengths == "varied":
        half = args.max_tokens // 2
        budget = half + (7 * i + 3 * turn) % (args.max_tokens - half + 1)
    return {"max_tokens": budget, "temperature": args.temperature}


async def timed(run: Callable[[], Awaitable[list[Trajectory]]]) -> tuple[float, list[Trajectory]]:
    start = time.perf_counter()
    out = await run()
    return time.perf_counter() - start, out


class WorkerProcess:
    """The agents in another process (``--agents process``): as wrapped agent programs run.

    It reads one JSON line of ``[[base_url, api_key], ...]`` per run, plays those
    episodes at once, and answers a line when all are done.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, args: argparse.Namespace) -> WorkerProcess:
        cmd = [sys.executable, __file__, "--worker", "--client", args.client]
        cmd += ["--turns", str(args.turns), "--max-tokens", str(args.max_tokens)]
        cmd += ["--temperature", str(args.temperature), "--lengths", args.lengths]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def play(self, sessions: list[tuple[str, str]]) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(sessions) + "\n").encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if line.strip() != b"done":
            raise RuntimeError(f"the agents' process failed: {line!r}")

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


async def worker(args: argparse.Namespace) -> None:
    """``--worker``: play the episodes each stdin line names; print ``done`` after each run."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            sessions = json.loads(line)
            await asyncio.gather(
                *(agent(url, key, http, args, i) for i, (url, key) in enumerate(sessions))
            )
            print("done", flush=True)


async def main(args: argparse.Namespace) -> None:
    path = build_tiny_model(tempfile.mkdtemp(prefix="proxy_overhead_"))
    model, tok = load_model_and_tokenizer(path)
    model.eval().requires_grad_(False)
    engine = LocalEngine(model, tok)
    client = ChatClient(engine, tok, sampling=SamplingConfig(max_new_tokens=args.max_tokens))
    n = args.sessions

    async def local() -> list[Trajectory]:
        return list(await asyncio.gather(*(in_process(client, args, i) for i in range(n))))

    best = {"in-process": float("inf"), "HTTP": float("inf")}
    tokens: dict[str, int] = {}
    process = await WorkerProcess.start(args) if args.agents == "process" else None
    async with OpenAIServer(client) as server:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def remote() -> list[Trajectory]:
                sessions = [server.sessions.open() for _ in range(n)]
                if process is not None:
                    await process.play([(s.base_url, s.api_key) for s in sessions])
                else:
                    await asyncio.gather(
                        *(
                            agent(s.base_url, s.api_key, http, args, i)
                            for i, s in enumerate(sessions)
                        )
                    )
                return [await s.close() for s in sessions]

            await local()
            await remote()  # warm-up: caches, connections, the engine's first batches
            for _ in range(args.repeats):
                for name, run in (("in-process", local), ("HTTP", remote)):
                    seconds, trajectories = await timed(run)
                    best[name] = min(best[name], seconds)
                    tokens[name] = sum(t.num_generated for t in trajectories)
                    assert all(t.num_turns == args.turns for t in trajectories), name
    if process is not None:
        await process.close()
    await engine.close()

    completions = n * args.turns
    where = "on the server's loop" if args.agents == "here" else "in another process"
    print(
        f"\n{n} concurrent episodes x {args.turns} turns, <= {args.max_tokens} tokens "
        f"({args.lengths} budgets), "
        f"T={args.temperature}; agents: {args.client} client {where}; "
        f"best of {args.repeats}"
    )
    for name, seconds in best.items():
        print(
            f"  {name:<10} {completions} completions in {seconds:.3f} s = "
            f"{completions / seconds:,.1f} completions/s ({tokens[name]} tokens)"
        )
    print(f"  ratio in-process / HTTP throughput: {best['HTTP'] / best['in-process']:.3f}x")
    if args.temperature == 0 and tokens["in-process"] != tokens["HTTP"]:
        print("  note: greedy runs generated different token counts (batch numerics)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=32, help="episodes at once")
    parser.add_argument("--turns", type=int, default=4, help="chat turns per episode")
    parser.add_argument("--max-tokens", type=int, default=16, help="token budget per turn")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument(
        "--lengths",
        choices=("varied", "equal"),
        default="varied",
        help="turn budgets that differ across episodes (episodes drift apart, as rollouts "
        "do), or all equal (every episode in lockstep: the worst case for HTTP)",
    )
    parser.add_argument("--client", choices=("aiohttp", "openai"), default="aiohttp")
    parser.add_argument(
        "--agents",
        choices=("here", "process"),
        default="here",
        help="agents on the server's event loop, or in a process of their own",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args))
        sys.exit(0)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    )
    asyncio.run(main(args))
