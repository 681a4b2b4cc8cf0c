"""The one place that knows device types: cuda, npu, xpu, mps and cpu.

Everything else (config, engine, train backends, ``trainers/distributed.py``,
checkpoints, the launcher) asks this module and never names a device type
itself. Detection is Hugging Face accelerate's (``accelerate.utils``:
``is_npu_available`` imports ``torch_npu`` when it is installed,
``is_xpu_available``, ``is_mps_available``), in accelerate's order: NPU before
CUDA (``torch_npu.contrib.transfer_to_npu`` makes ``torch.cuda`` answer for the
NPU), then CUDA, XPU, MPS, CPU. Nothing here initialises a device or a process
group, so it is safe before ``fork`` and before ``init_process_group``.

Ranks come from the environment that both ``torchrun`` and ``accelerate launch``
set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; MPI launchers' names too, read as
accelerate's ``PartialState`` reads them), so the FSDP backend starts the same
way under either launcher::

    torchrun --nproc-per-node 2 trainers/grpo.py train.backend=fsdp
    accelerate launch --num_processes 2 --num_machines 1 --mixed_precision no
        --dynamo_backend no trainers/grpo.py train.backend=fsdp

Example:
    >>> process_group_backend("cpu"), process_group_backend("cuda")
    ('gloo', 'nccl')
    >>> resolve_device("cpu")
    'cpu'
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate import init_empty_weights
from accelerate.utils import (
    get_int_from_env,
    is_mps_available,
    is_npu_available,
    is_xccl_available,
    is_xpu_available,
)

DEVICE_TYPES = ("cuda", "npu", "xpu", "mps", "cpu")
"""Device types this project runs on, best first for ``"auto"`` (NPU is probed first)."""

_PG_BACKENDS = {"cuda": "nccl", "npu": "hccl", "xpu": "xccl", "mps": "gloo", "cpu": "gloo"}
"""Collective library per device type (``xpu``: ``ccl`` when torch lacks ``xccl``)."""

_RANK_ENV = ["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"]
_WORLD_ENV = ["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"]
_LOCAL_RANK_ENV = ["LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK"]
_LOCAL_RANK_ENV += ["MV2_COMM_WORLD_LOCAL_RANK"]


def available_device_type() -> str:
    """The best accelerator present: ``npu``, ``cuda``, ``xpu``, ``mps``, else ``cpu``."""
    if is_npu_available():
        return "npu"
    if torch.cuda.is_available():
        return "cuda"
    if is_xpu_available():
        return "xpu"
    if is_mps_available():
        return "mps"
    return "cpu"


def resolve_device(name: str, *, key: str = "model.device") -> str:
    """``"auto"`` -> :func:`available_device_type`; a known type (``"cuda"``, ``"cuda:1"``) as is.

    Args:
        name: ``"auto"``, a device type, or a device type with an index.
        key: the config key ``name`` came from, for the error message.

    Raises:
        ValueError: naming ``key`` when ``name`` is not ``auto`` or a device type.
    """
    if name == "auto":
        return available_device_type()
    if name.split(":", 1)[0] not in DEVICE_TYPES:
        raise ValueError(f"{key} must be 'auto' or one of {DEVICE_TYPES}, got {name!r}")
    return name


def process_group_backend(device_type: str) -> str:
    """The ``torch.distributed`` backend for ``device_type`` (nccl, hccl, xccl/ccl, gloo).

    Raises:
        ValueError: for an unknown device type.
    """
    kind = device_type.split(":", 1)[0]
    if kind not in _PG_BACKENDS:
        raise ValueError(f"no process-group backend for device type {device_type!r}")
    if kind == "xpu" and not is_xccl_available():
        return "ccl"  # oneCCL bindings (torch < 2.7)
    return _PG_BACKENDS[kind]


def set_local_device(device_type: str, local_rank: int) -> None:
    """Make accelerator ``local_rank`` this process's current device (no-op on cpu/mps).

    After this the plain ``"cuda"`` (``"npu"``, ``"xpu"``) device of the config
    means this rank's own accelerator.
    """
    if device_type in ("cpu", "mps"):
        return
    torch.get_device_module(device_type).set_device(local_rank)


def rng_state() -> dict[str, Any]:
    """The CPU RNG of torch (``"torch"``) and every device RNG of the accelerator present.

    The accelerator's states are stored under its type (``"cuda"``, ``"npu"``...),
    one per visible device (one for mps), which keeps checkpoints written before
    this module (``{"torch": ..., "cuda": [...]}``) loadable.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    kind = available_device_type()
    if kind != "cpu":
        mod = torch.get_device_module(kind)
        all_states = getattr(mod, "get_rng_state_all", None)
        state[kind] = all_states() if all_states is not None else [mod.get_rng_state()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`; an accelerator's states are skipped when it is absent."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    kind = available_device_type()
    if kind == "cpu" or kind not in state:
        return
    mod = torch.get_device_module(kind)
    states = list(state[kind])
    set_all = getattr(mod, "set_rng_state_all", None)
    if set_all is not None:
        set_all(states)
    elif states:
        mod.set_rng_state(states[0])


@contextmanager
def empty_init(*, include_buffers: bool = False) -> Iterator[None]:
    """Build modules with their parameters on the ``meta`` device (no memory, no init).

    A wrapper over ``accelerate.init_empty_weights``. Meant for loading a model
    too large for one device on the ranks of a sharded run: build it here on
    every rank, ``fully_shard`` it, then ``model.to_empty(device=...)`` and load
    each rank's shards (e.g. ``torch.distributed.checkpoint`` or
    ``set_model_state_dict`` with ``broadcast_from_rank0``). Buffers stay real by
    default (rotary tables are computed at init and are not in checkpoints).
    The FSDP backend does not use it yet: it broadcasts rank 0's full weights
    before sharding, which needs real tensors on every rank.

    Example:
        >>> with empty_init():
        ...     layer = torch.nn.Linear(4096, 4096)
        >>> layer.weight.device.type
        'meta'
    """
    with init_empty_weights(include_buffers=include_buffers):
        yield


def rank() -> int:
    """Global rank from the launcher's environment (0 when not launched)."""
    return int(get_int_from_env(_RANK_ENV, 0))


def local_rank() -> int:
    """Rank on this machine from the launcher's environment (0 when not launched)."""
    return int(get_int_from_env(_LOCAL_RANK_ENV, 0))


def world_size() -> int:
    """Number of processes the launcher started (1 when not launched)."""
    return int(get_int_from_env(_WORLD_ENV, 1))


def launched() -> bool:
    """True under ``torchrun`` / ``accelerate launch`` (both set ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ
