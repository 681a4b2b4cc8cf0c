"""The lifecycle every aiohttp server of ours shares: start on a port, report the URL, stop.

The retrieval server and the OpenAI-compatible server differ in routes only;
binding (``port=0`` picks a free port, which tests and runs rely on), cleanup
when binding fails, the URL of the bound address, and ``async with`` live here.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)


class HTTPService:
    """Base of our aiohttp servers; subclasses implement :meth:`make_app`."""

    service_name = "HTTP service"
    """How logs and errors name the server."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        """The aiohttp application (routes, middlewares, shutdown hooks)."""
        raise NotImplementedError

    @property
    def bound_url(self) -> str:
        """``http://host:port`` of the bound address (a wildcard host reads as 127.0.0.1)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError(f"{self.service_name} is not started")
        host, port = self._runner.addresses[0][:2]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """Where clients reach the server (the bound address unless a subclass says otherwise)."""
        return self.bound_url

    async def start(self) -> str:
        """Listen on ``host:port``; return :attr:`url`."""
        if self._runner is not None:
            raise RuntimeError(f"{self.service_name} is already started")
        runner = web.AppRunner(self.make_app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.info("%s listening on %s", self.service_name, self.url)
        return self.url

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
