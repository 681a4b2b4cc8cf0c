"""Serve a model over OpenAI's API: ``python -m areal_env.serve [--config F.yaml] [k=v ...]``.

For inference on its own: try a model, point an OpenAI-client program or a
user simulator at it, or evaluate it from another tool. It loads the model as
the trainer does (``model.path``: a hub id or a folder such as a run's
``final_model``; unset, the embedded tiny model is built offline under
``output_dir``), runs the configured engine (``inference.*``), and listens at
``server.host``:``server.port`` until SIGINT/SIGTERM::

    python -m areal_env.serve model.path=outputs/grpo/final_model server.port=8000
    curl http://127.0.0.1:8000/v1/models

The shared ``/v1`` routes record nothing. Per-episode sessions (the
``/sessions/<id>/v1`` routes) are opened in-process by the code that runs the
episodes (:class:`areal_env.serving.OpenAIServer`); see ``docs/serving.md``.
The first line printed is ``serving <model> at http://host:port/v1``, so a
parent process started with ``server.port=0`` can read the address.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from areal_env.config import ModelConfig, load_config
from areal_env.inference.chat_client import ChatClient
from areal_env.inference.registry import InferenceConfig, load_engine, start_engine
from areal_env.serving import OpenAIServer

logger = logging.getLogger("areal_env.serve")

TINY_MODEL_NAME = "areal-env-tiny"
"""The name the embedded tiny model is served under."""


@dataclass(kw_only=True, slots=True)
class ServerSettings:
    """The ``server`` section: where to listen and how to present the model."""

    host: str = "127.0.0.1"
    """Interface to listen on (``0.0.0.0`` for every interface)."""
    port: int = 8000
    """TCP port; 0 picks a free one (printed at start)."""
    api_key: str | None = None
    """Key the ``/v1`` routes require (``Authorization: Bearer ...``); None: no key needed."""
    model_name: str | None = None
    """Name listed by ``/v1/models`` and returned in responses; None: ``model.path``, or
    ``areal-env-tiny`` for the embedded model."""
    public_url: str | None = None
    """``http://host:port`` written into session base URLs when agents reach the server
    at another address than the bound one; None: the bound address."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"server.port must be in [0, 65535], got {self.port}")


@dataclass(kw_only=True, slots=True)
class ServeConfig:
    """Root config of ``python -m areal_env.serve``: the trainer's model and inference sections."""

    seed: int = 1
    """Seeds torch (the engine samples with ``inference.local.seed``)."""
    output_dir: str = "outputs/serve"
    """Where the embedded tiny model is built when ``model.path`` is None."""
    torch_threads: int = 0
    """Intra-op CPU threads for torch; 0 keeps torch's default (one per core)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to serve."""
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    """Engine and the default sampling of a request that sets none."""
    server: ServerSettings = field(default_factory=ServerSettings)
    """Address, key and model name."""


def build_client(cfg: ServeConfig) -> ChatClient:
    """Load the model (building the tiny one if ``model.path`` is None), engine and client.

    Raises:
        ValueError: a model that cannot be loaded, naming ``model.path``.
    """
    torch.manual_seed(cfg.seed)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    engine, tokenizer = load_engine(cfg.model, cfg.inference, cfg.output_dir)
    name = cfg.server.model_name or cfg.model.path or TINY_MODEL_NAME
    return ChatClient(engine, tokenizer, sampling=cfg.inference.sampling, model_name=name)


async def serve(
    cfg: ServeConfig,
    client: ChatClient,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[OpenAIServer], None] | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None), then close.

    ``on_ready`` is called once the server listens (tests read its URL there).
    """
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    s = cfg.server
    server = OpenAIServer(
        client, host=s.host, port=s.port, api_key=s.api_key, public_url=s.public_url
    )
    try:
        await start_engine(client.engine)
        async with server:
            print(f"serving {client.model_name} at {server.base_url}", flush=True)
            if on_ready is not None:
                on_ready(server)
            await stop.wait()
    finally:
        await client.engine.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: config from argv, load, serve until interrupted.

    Returns:
        0 after a clean stop; 1 when the address cannot be bound; 2 for a config
        or model error.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(ServeConfig, argv)
        client = build_client(cfg)
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(cfg, client))
    except OSError as e:  # the address is taken or cannot be bound
        print(f"cannot listen on {cfg.server.host}:{cfg.server.port}: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["ServeConfig", "ServerSettings", "build_client", "main", "serve"]

if __name__ == "__main__":
    sys.exit(main())
