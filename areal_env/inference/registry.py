"""Inference engines chosen by config: ``inference.backend`` names a factory here.

``local`` is the in-process transformers engine (the embedded default);
``vllm`` and ``sglang`` generate on servers, attached to
(``inference.servers=[http://...]``) or launched by us
(``inference.launch=true``, ``inference.num_servers``, ``inference.server_python``).
Every factory gets the same ``EngineContext``; only the local engine loads a model
copy in this process.

Example:
    >>> sorted(ENGINES)
    ['local', 'sglang', 'vllm']
    >>> InferenceConfig(backend="tgi")
    Traceback (most recent call last):
    ...
    ValueError: inference.backend must be one of ['local', 'sglang', 'vllm'], got 'tgi'
    >>> InferenceConfig(backend="vllm")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: inference.backend='vllm' needs servers: inference.servers=[...] or ...
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from areal_env.config import ModelConfig
from areal_env.inference.chat_client import SamplingConfig
from areal_env.inference.engine import InferenceEngine
from areal_env.inference.local import LocalEngine, LocalEngineConfig
from areal_env.inference.remote.api import PROBE_TEXT
from areal_env.inference.remote.engine import Launcher, RemoteEngine, RemoteEngineConfig
from areal_env.models.load import load_for_inference, model_dir
from areal_env.models.tiny import load_chat_tokenizer

REMOTE_BACKENDS = ("vllm", "sglang")


@dataclass(kw_only=True, slots=True)
class InferenceConfig:
    """How rollouts are generated."""

    backend: str = "local"
    """Key of ``ENGINES``: 'local' (in-process transformers), 'vllm' or 'sglang' (servers)."""
    update_mode: str = "interrupt"
    """On a weight update, 'interrupt' aborts in-flight generation, which continues from
    prompt + tokens so far on the new weights (AReaL); 'drain' waits for it to finish."""
    local: LocalEngineConfig = field(default_factory=LocalEngineConfig)
    """Settings of the local engine."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Default sampling of every completion."""
    servers: list[str] = field(default_factory=list)
    """vllm/sglang: URLs of running servers to attach to."""
    launch: bool = False
    """vllm/sglang: start ``num_servers`` servers as subprocesses (stopped at exit)."""
    num_servers: int = 1
    """Servers to launch."""
    server_python: str | None = None
    """Python that runs launched servers (e.g. a venv with vllm); None: this one."""
    server_args: list[str] = field(default_factory=list)
    """Extra command-line arguments of launched servers (e.g. ``--enforce-eager``)."""
    max_model_len: int | None = None
    """Context length of launched servers; None: the model's max_position_embeddings."""
    startup_timeout: float = 600.0
    """Seconds launched servers may take to become healthy."""
    remote: RemoteEngineConfig = field(default_factory=RemoteEngineConfig)
    """Timeouts, retries and health checks of the server engines."""
    lora_adapters: bool = False
    """vllm with train.lora.rank > 0: push only the LoRA adapter, loaded by vLLM at run time
    (launched servers get --enable-lora; attached ones must have it, see docs/inference.md),
    instead of merged full weights."""

    def __post_init__(self) -> None:
        if self.backend not in ENGINES:
            raise ValueError(
                f"inference.backend must be one of {sorted(ENGINES)}, got {self.backend!r}"
            )
        if self.update_mode not in ("interrupt", "drain"):
            raise ValueError(
                f"inference.update_mode must be 'interrupt' or 'drain', got {self.update_mode!r}"
            )
        remote = self.backend in REMOTE_BACKENDS
        if remote and not (self.servers or self.launch):
            raise ValueError(
                f"inference.backend={self.backend!r} needs servers: "
                "inference.servers=[http://host:port, ...] or inference.launch=true"
            )
        if not remote and (self.servers or self.launch):
            raise ValueError(
                "inference.servers and inference.launch are for the vllm and sglang backends, "
                f"not {self.backend!r}"
            )
        bad = [u for u in self.servers if not u.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"inference.servers must be http(s) URLs, got {bad}")
        if self.num_servers < 1:
            raise ValueError(f"inference.num_servers must be >= 1, got {self.num_servers}")
        if self.lora_adapters and self.backend != "vllm":
            raise ValueError(
                "inference.lora_adapters=true needs inference.backend=vllm (run-time LoRA "
                f"loading), got {self.backend!r}"
            )


VLLM_UNSUPPORTED_LORA_TARGETS = ("lm_head", "embed_tokens", "embed", "wte", "wpe")
"""Modules whose adapters vLLM's run-time LoRA does not apply (output head, embeddings)."""


def check_lora_adapters(rank: int, target_modules: Sequence[str]) -> None:
    """Raise ValueError unless adapters of this LoRA config can be served by vLLM.

    Checked where both ``inference.*`` and ``train.lora.*`` are visible (the
    trainer's root config), so a run fails at start-up rather than at its first
    weight push.
    """
    if rank <= 0:
        raise ValueError(
            "inference.lora_adapters=true needs LoRA training: set train.lora.rank > 0 "
            "(or inference.lora_adapters=false)"
        )
    bad = [m for m in target_modules if m.rsplit(".", 1)[-1] in VLLM_UNSUPPORTED_LORA_TARGETS]
    if bad:
        raise ValueError(
            f"inference.lora_adapters=true: vLLM does not apply LoRA adapters on {bad}; drop "
            "them from train.lora.target_modules or set inference.lora_adapters=false "
            "(merged full weights)"
        )


@dataclass(frozen=True, slots=True)
class EngineContext:
    """What any engine may need from the run, built once by the entry point."""

    tokenizer: Any
    model_path: str
    """The model folder (or hub id) the run starts from; servers are launched on it."""
    output_dir: str
    """Server logs go under ``<output_dir>/servers``."""
    load_model: Callable[[], torch.nn.Module]
    """Loads (or copies) the model into this process; only the local engine calls it."""
    lora_rank: int = 0
    """The trainer's ``train.lora.rank`` (0: none); sizes vLLM's LoRA slots with
    ``inference.lora_adapters``."""


EngineFactory = Callable[[InferenceConfig, EngineContext], InferenceEngine]
"""``(config, context) -> engine``."""


def _local(config: InferenceConfig, context: EngineContext) -> InferenceEngine:
    return LocalEngine(
        context.load_model(),
        context.tokenizer,
        config.local,
        update_mode=config.update_mode,  # type: ignore[arg-type]
    )


def _remote(kind: str) -> EngineFactory:
    def factory(config: InferenceConfig, context: EngineContext) -> InferenceEngine:
        if config.lora_adapters:
            check_lora_adapters(context.lora_rank, ())
        launcher = _launcher(kind, config, context) if config.launch else None
        probe = list(context.tokenizer.encode(PROBE_TEXT, add_special_tokens=False))
        return RemoteEngine(
            kind,
            config.servers,
            config.remote,
            update_mode=config.update_mode,  # type: ignore[arg-type]
            probe_ids=probe,
            launcher=launcher,
            lora_adapters=config.lora_adapters,
        )

    return factory


def _launcher(kind: str, config: InferenceConfig, context: EngineContext) -> Launcher:
    from areal_env.inference.remote.launch import LORA_SERVER_ENV, launch_servers, vllm_lora_args

    python = config.server_python or sys.executable
    max_len = config.max_model_len or _max_positions(context.model_path)
    extra_args, env = list(config.server_args), None
    if config.lora_adapters:
        extra_args = [*vllm_lora_args(context.lora_rank), *extra_args]
        env = LORA_SERVER_ENV

    async def launch() -> tuple[list[str], Callable[[], Any]]:
        group, urls = await launch_servers(
            kind,  # type: ignore[arg-type]
            python=python,
            model=context.model_path,
            count=config.num_servers,
            log_dir=Path(context.output_dir) / "servers",
            max_model_len=max_len,
            extra_args=extra_args,
            startup_timeout=config.startup_timeout,
            env=env,
        )
        return urls, group.stop_all

    return launch


def _max_positions(model_path: str) -> int:
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", 2048))


ENGINES: dict[str, EngineFactory] = {
    "local": _local,
    "vllm": _remote("vllm"),
    "sglang": _remote("sglang"),
}
"""``inference.backend`` name -> engine factory."""


def make_engine(config: InferenceConfig, context: EngineContext) -> InferenceEngine:
    """Build the engine ``config.backend`` names (the config was validated on creation)."""
    return ENGINES[config.backend](config, context)


def load_engine(
    model: ModelConfig, config: InferenceConfig, output_dir: str
) -> tuple[InferenceEngine, Any]:
    """Engine and tokenizer for an inference-only entry point (eval, serve).

    Only the local engine loads the model here; server engines need the tokenizer.

    Raises:
        ValueError: a model that cannot be loaded, naming ``model.path``.
    """
    path = model_dir(model, output_dir)
    if config.backend in REMOTE_BACKENDS:
        try:
            tokenizer = load_chat_tokenizer(path)
        except OSError as e:
            raise ValueError(f"model.path: cannot load the tokenizer of {path!r}: {e}") from e
        loaded = None
    else:
        loaded, tokenizer = load_for_inference(model, output_dir)

    def load_model() -> torch.nn.Module:
        assert loaded is not None
        return loaded

    context = EngineContext(
        tokenizer=tokenizer, model_path=path, output_dir=output_dir, load_model=load_model
    )
    return make_engine(config, context), tokenizer


async def start_engine(engine: InferenceEngine) -> None:
    """Launch or connect what the engine needs, where it has such a step.

    Entry points call this before the first rollout so that an unreachable or
    wrong server stops the run at start-up, naming the server, instead of
    failing episodes one by one.
    """
    start = getattr(engine, "start", None)
    if start is not None:
        await start()
