"""Fixtures for the server tests: a tokenizer, a server in a thread for the sync client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from areal_env.inference.chat_client import ChatClient
from areal_env.serving import OpenAIServer
from areal_env.testing import char_tokenizer


@pytest.fixture(scope="session")
def tok():
    return char_tokenizer()


class ThreadedServer:
    """An OpenAIServer on an event loop in a thread, so a blocking client can call it."""

    def __init__(self, client: ChatClient, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = OpenAIServer(client, **kwargs)
        self.call(self.server.start())

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def threaded() -> Iterator[Any]:
    """``threaded(client, **kwargs)`` -> a started ThreadedServer, stopped after the test."""
    servers: list[ThreadedServer] = []

    def start(client: ChatClient, **kwargs: Any) -> ThreadedServer:
        servers.append(ThreadedServer(client, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
