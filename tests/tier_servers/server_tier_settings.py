"""Settings shared by the server tier's tests (not in conftest: only one conftest module
is importable by name in this suite).

On CPU (``.ci/run``) the tier runs vLLM-CPU; on a GPU machine
``scripts/gpu_check_inference.sh`` runs it again for vLLM and for SGLang with
``AREAL_SERVER_KIND``, ``AREAL_SERVER_PYTHON`` and ``AREAL_SERVER_ARGS``.
"""

from __future__ import annotations

import os
import shlex

KIND = os.environ.get("AREAL_SERVER_KIND", "vllm")
"""``vllm`` or ``sglang``."""

SERVER_PYTHON = os.environ.get("AREAL_SERVER_PYTHON") or os.environ.get("AREAL_VLLM_PYTHON")
"""The Python of the servers' virtual environment; None outside the server tier."""

CPU_SERVER_ARGS = [
    "--enforce-eager",
    "--kv-cache-memory-bytes",
    "67108864",
    "--dtype",
    "float32",
]
"""vLLM-CPU settings measured to work on the tiny model (../shared/ENVIRONMENT.md)."""

SERVER_ARGS = (
    shlex.split(os.environ["AREAL_SERVER_ARGS"])
    if "AREAL_SERVER_ARGS" in os.environ
    else CPU_SERVER_ARGS
)
"""Extra server flags: the vLLM-CPU ones unless ``AREAL_SERVER_ARGS`` says otherwise."""

SERVER_TINY_MODEL_OVERRIDES = (
    "model.tiny.hidden_size=64",
    "model.tiny.num_heads=2",
    "model.tiny.num_layers=1",
    "model.tiny.intermediate_size=128",
)
"""A tiny model for runs through servers: small, but vLLM-CPU's attention needs
head_dim >= 32 (16 fails on load)."""
