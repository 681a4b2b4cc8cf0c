"""The process group of a multi-rank run, and rank 0's command channel to the others.

A trainer launched as ``torchrun --nproc-per-node N trainers/grpo.py
train.backend=fsdp ...`` starts N copies of itself. Only rank 0 runs the
trainer proper (rollout scheduler, engine, envs, warm start, metrics and
checkpoint files); every other rank only holds a shard of the model and runs
the collective half of each backend call. Rank 0 tells them which call comes
next with :func:`send` (a ``broadcast_object_list`` from rank 0) and they read
it with :func:`receive`; :data:`STOP` ends their loop. Keeping the others in a
receive loop, rather than running the trainer on every rank, means rollouts
and envs exist once and nothing has to agree on what the envs did.

Without torchrun (``WORLD_SIZE`` unset) :func:`init` makes a 1-process group on
a free local port, so ``train.backend=fsdp`` runs unchanged on a laptop.

Example:
    >>> is_main(), world_size()  # no group yet: a single process is rank 0
    (True, 1)
"""

from __future__ import annotations

import datetime
import gc
import logging
import socket
from typing import Any

import torch.distributed as dist

from areal_env import devices

logger = logging.getLogger(__name__)

STOP = "stop"
"""The command that ends the other ranks' loop."""

_state = {"owned": False, "stopped": False}
"""Whether this module made the group (and so destroys it), and whether STOP went out."""


def device_type() -> str:
    """The accelerator this process trains on (``areal_env.devices.available_device_type``)."""
    return devices.available_device_type()


def free_port() -> int:
    """A TCP port nobody listens on now (for a 1-process group or a test's torchrun)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init(*, timeout_s: float = 3600.0, device: str | None = None) -> None:
    """Join the launcher's process group (or make a 1-process one); no-op when one exists.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``, which ``torchrun`` and ``accelerate launch`` both set. On an
    accelerator each rank takes device ``LOCAL_RANK`` (so the plain ``"cuda"``
    device of the config means that GPU).

    Args:
        timeout_s: how long a collective may wait; the other ranks wait this long
            for rank 0's next command while it runs rollouts or the warm start.
        device: the device type the ranks train on; None detects the best one
            (``areal_env.devices``). Picks the collective library (nccl, hccl,
            xccl, gloo).
    """
    if dist.is_initialized():
        return
    kind = devices.resolve_device(device or "auto").split(":", 1)[0]
    backend = devices.process_group_backend(kind)
    devices.set_local_device(kind, devices.local_rank())
    timeout = datetime.timedelta(seconds=timeout_s)
    if devices.launched():
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{free_port()}",
            rank=0,
            world_size=1,
            timeout=timeout,
        )
    _state.update(owned=True, stopped=False)
    logger.info("rank %d of %d (%s)", rank(), world_size(), backend)


def rank() -> int:
    """This process's global rank (0 without a group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the rank that runs rollouts and writes files."""
    return rank() == 0


def broadcast_object(obj: Any = None) -> Any:
    """``obj`` from rank 0, on every rank (others pass nothing); it must pickle."""
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def send(op: str, *args: Any) -> None:
    """Rank 0: tell the other ranks to run ``op(*args)`` next (no-op with one rank)."""
    if world_size() > 1 and is_main():
        broadcast_object((op, args))
        if op == STOP:
            _state["stopped"] = True


def receive() -> tuple[str, tuple[Any, ...]]:
    """Other ranks: wait for rank 0's next command ``(op, args)``."""
    op, args = broadcast_object()
    return op, tuple(args)


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if dist.is_initialized() and world_size() > 1:
        dist.barrier()


def shutdown(*, clean: bool = True, notify: bool = True) -> None:
    """End of the run: rank 0 sends STOP (once), all meet, the group made by :func:`init` goes.

    The meeting (a barrier) keeps rank 0 from tearing the group down while the
    others are still reading STOP.

    Args:
        clean: False when this rank is leaving on an error: the others may be
            inside a collective that STOP or the barrier would not match, so it
            just leaves, and torchrun ends the other ranks when it sees one fail.
        notify: False in SPMD scripts, where no rank waits in :func:`receive`.
    """
    if not dist.is_initialized() or not _state["owned"]:
        return
    if clean:
        if notify and not _state["stopped"]:
            send(STOP)
        barrier()
    # Sharded modules hold the group in reference cycles; freed only at interpreter
    # exit, gloo's threads are torn down too late and the process aborts.
    gc.collect()
    dist.destroy_process_group()
    gc.collect()
    _state.update(owned=False, stopped=False)
