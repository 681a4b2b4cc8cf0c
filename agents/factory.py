"""Resolving ``agent.kwargs.factory``: the user's function that builds their framework agent.

Adapters of other agent frameworks (the OpenAI Agents SDK, CAMEL) take the
user's agent through a factory named in config as ``"module:function"`` or
``"path/to/file.py:function"``. The file form works from any working directory:
``python trainers/grpo.py`` puts ``trainers/``, not the repo root, on ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any


def resolve_factory(factory: str | Callable[..., Any]) -> Callable[..., Any]:
    """``factory`` itself, or what ``"module:function"`` / ``"path/to/file.py:function"`` names.

    Raises:
        ValueError: when the string has no ``:``, its file cannot be loaded, or it
            names nothing callable.
    """
    if callable(factory):
        return factory
    module_name, sep, attr = str(factory).rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"agent.kwargs.factory must be 'module:function', got {factory!r}")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name).resolve()
        spec = importlib.util.spec_from_file_location(f"_areal_agent_factory_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ValueError(f"agent.kwargs.factory: cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    target = getattr(module, attr, None)
    if not callable(target):
        raise ValueError(f"agent.kwargs.factory {factory!r} names nothing callable")
    return target
