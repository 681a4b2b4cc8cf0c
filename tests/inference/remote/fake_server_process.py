"""A stand-in inference server for the launch tests.

Usage: python fake_server_process.py --port P [--delay-ready S] [--exit-code N] [--spawn-child]

GET /health answers 503 until --delay-ready seconds have passed, then 200.
--exit-code N prints a message to stderr and exits with N at once.
--spawn-child starts a ``sleep 300`` child (same process group) and prints its pid.
Unknown arguments (a vLLM / SGLang command line) are ignored, so a wrapper
script can stand in for ``server_python``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time


async def serve(host: str, port: int, delay_ready: float) -> None:
    from aiohttp import web

    ready_at = time.monotonic() + delay_ready

    async def health(request: web.Request) -> web.Response:
        ready = time.monotonic() >= ready_at
        return web.Response(status=200 if ready else 503, text="ok" if ready else "warming up")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"fake server listening on {host}:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--delay-ready", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int, default=None)
    parser.add_argument("--spawn-child", action="store_true")
    args, _unknown = parser.parse_known_args()
    print(f"fake server pid={os.getpid()} argv={sys.argv[1:]}", flush=True)
    if args.exit_code is not None:
        print(
            f"fake server failing on purpose (code {args.exit_code})", file=sys.stderr, flush=True
        )
        sys.exit(args.exit_code)
    if args.spawn_child:
        child = subprocess.Popen(["sleep", "300"])
        print(f"fake server child pid={child.pid}", flush=True)
    asyncio.run(serve(args.host, args.port, args.delay_ready))


if __name__ == "__main__":
    main()
