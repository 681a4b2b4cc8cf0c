"""``accelerate launch`` starts the FSDP backend as torchrun does.

``accelerate launch --multi_gpu --num_processes 2`` runs torch's elastic launcher,
which sets the same ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_*`` as
torchrun; on this CPU-only machine the ranks pick gloo (``areal_env.devices``).
(``--cpu`` is not the flag for this: accelerate then starts ONE process and
expects an MPI launcher for more.)
"""

from __future__ import annotations

import os
import subprocess
import sys

from test_fsdp import REPO, SMALL_GRPO, WORKER, _check_run

from areal_env.trainers import distributed

TIMEOUT_S = 180


def accelerate_launch(nproc: int, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        f"--num_processes={nproc}",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={distributed.free_port()}",
        script,
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def test_grpo_under_accelerate_launch_on_two_ranks(tmp_path):
    out = tmp_path / "run"
    proc = accelerate_launch(
        2, str(WORKER), "grpo", *SMALL_GRPO, "train.steps=2", f"output_dir={out}"
    )
    assert proc.returncode == 0, (
        f"accelerate launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    _check_run(out, 2)
    backend_dir = out / "checkpoints" / "step_000002" / "backend"
    # Two ranks really shared the model: one DCP shard file each.
    assert sorted(p.name for p in backend_dir.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
