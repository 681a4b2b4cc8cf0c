"""``python -m areal_env.launch.ray``: trainer ranks and inference servers as Ray actors.

Runs on a local Ray cluster (4 CPUs) started once for the module. The ranks
import this file by name (``--env PYTHONPATH=<this folder>``) for the helpers
below that they run as ``--setup`` / ``--entry``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import ray
import torch
from omegaconf import OmegaConf

from areal_env.launch import ray as ray_launch
from areal_env.metrics import read_metrics
from areal_env.testing import PARITY_ENV_ID, SMALL_RUN_OVERRIDES, TINY_MODEL_OVERRIDES

HERE = Path(__file__).resolve().parent
FAKE_SERVER = HERE.parent / "inference" / "remote" / "fake_server_process.py"
IMPORT_THIS = f"--env=PYTHONPATH={HERE}"

SMALL_GRPO = [
    *TINY_MODEL_OVERRIDES,
    *SMALL_RUN_OVERRIDES,
    "checkpoint.every_steps=2",
    f"env.id={PARITY_ENV_ID}",
    "warm_start.enabled=false",
    "torch_threads=1",
]
"""tests/trainers/test_fsdp.py's 2-rank GRPO run (train.backend=fsdp is added by the launcher)."""


# --- run inside the rank actors --------------------------------------------------------


def fail_on_rank_one() -> None:
    """--setup: rank 1 raises before joining the group; rank 0 then waits for it forever."""
    if os.environ["RANK"] == "1":
        raise RuntimeError("boom on rank 1")


def record_run(argv: list[str]) -> int:
    """--entry: write what the rank got (argv, torchrun's variables, the servers' health)."""
    out = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")))
    servers = next((a for a in argv if a.startswith("inference.servers=")), "=[]")
    urls = json.loads(servers.split("=", 1)[1])
    health = [urllib.request.urlopen(u + "/health", timeout=5).status for u in urls]
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    record = {"argv": argv, "env": {k: os.environ[k] for k in keys}, "health": health}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))
    return 0


# --- tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


def test_two_trainer_actors_run_grpo(local_cluster, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--num-trainers=2", "--setup=areal_env.testing:register_test_envs", "--"]
    code = ray_launch.main([*argv, *SMALL_GRPO, "train.steps=2", f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "[launch] rank 0: ok" in err and "[launch] rank 1: ok" in err
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["train/version"] for r in rows] == [1.0, 2.0]
    assert all(r["train/rows"] > 0 for r in rows)
    initial, final = _weights(out / "tiny_model"), _weights(out / "final_model")
    assert any(not torch.equal(initial[k], final[k]) for k in initial), "weights unchanged"
    backend_dir = out / "checkpoints" / "step_000002" / "backend"
    # One DCP shard per rank: both actors joined one 2-rank FSDP group.
    assert sorted(p.name for p in backend_dir.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert OmegaConf.load(out / "config.yaml").train.backend == "fsdp"  # added by the launcher
    assert not ray.util.placement_group_table() or all(
        pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values()
    )


def test_a_rank_that_raises_fails_the_launch_and_ends_the_others(local_cluster, tmp_path, capsys):
    t0 = time.monotonic()
    code = ray_launch.main(
        [
            "--num-trainers=2",
            IMPORT_THIS,
            "--setup=areal_env.testing:register_test_envs",
            "--setup=test_ray_launcher:fail_on_rank_one",
            "--",
            *SMALL_GRPO,
            "train.steps=2",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert "rank 1 failed: RuntimeError: boom on rank 1" in err
    assert "rank 0: exit -9 (stopped after rank 1 failed)" in err  # not left waiting for rank 1
    assert time.monotonic() - t0 < 60


def test_bad_options_and_configs_are_named(local_cluster, tmp_path, capsys):
    assert ray_launch.main(["--num-trainers=0"]) == 2
    assert "--num-trainers must be >= 1" in capsys.readouterr().err
    assert ray_launch.main(["--gpus-per-trainer=2"]) == 2
    assert "--gpus-per-trainer must be 0 or 1" in capsys.readouterr().err
    assert ray_launch.main(["--", "train.no_such_key=1"]) == 2
    assert "config error: unknown config key 'train.no_such_key'" in capsys.readouterr().err
    assert ray_launch.main(["--num-trainers=2", "--cpus-per-trainer=100"]) == 1
    assert "2 trainers x 100 CPU = 200 CPU, but the Ray cluster has 4 CPU" in (
        capsys.readouterr().err
    )


def test_server_actors_start_servers_the_ranks_attach_to(local_cluster, tmp_path, capsys):
    out = tmp_path / "run"
    server = f"{sys.executable} {FAKE_SERVER} --host {{host}} --port {{port}} --model {{model}}"
    code = ray_launch.main(
        [
            "--num-trainers=2",
            "--num-servers=2",
            "--gpus-per-server=0",
            "--cpus-per-server=0.5",
            f"--server-command={server}",
            IMPORT_THIS,
            "--entry=test_ray_launcher:record_run",
            "--",
            *TINY_MODEL_OVERRIDES,
            f"output_dir={out}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, record in enumerate(records):
        env = record["env"]
        assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == (str(rank), "2", str(rank))
        assert env["MASTER_ADDR"] == records[0]["env"]["MASTER_ADDR"]
        assert record["health"] == [200, 200], "each rank reaches every server"
        argv = record["argv"]
        assert "inference.backend=vllm" in argv and "inference.launch=false" in argv
        assert "train.backend=fsdp" in argv
    # The servers were started by their actors, on the model the config names, and are
    # gone once the launch is over.
    pids = []
    for i in (0, 1):
        log = (out / "servers" / f"vllm-{i}.log").read_text()
        assert str(out / "tiny_model") in log
        pids.append(int(re.search(r"fake server pid=(\d+)", log).group(1)))
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "server processes outlived the launch"


def test_a_server_that_does_not_start_is_reported(local_cluster, tmp_path, capsys):
    server = f"{sys.executable} {FAKE_SERVER} --port {{port}} --exit-code 3"
    code = ray_launch.main(
        [
            "--num-servers=1",
            "--gpus-per-server=0",
            f"--server-command={server}",
            "--",
            *TINY_MODEL_OVERRIDES,
            f"output_dir={tmp_path}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "launch error: inference server 0 did not start" in err
    assert "exited with code 3" in err


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def test_rank_envs_share_a_node_s_gpus_and_index_them():
    nodes = [
        {"ip": "10.0.0.1", "gpus": ["3"]},
        {"ip": "10.0.0.2", "gpus": ["0"]},
        {"ip": "10.0.0.1", "gpus": ["1"]},
    ]
    envs = ray_launch.rank_envs(nodes, "10.0.0.1", 29500)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["1,3", "0", "1,3"]
    assert [e["LOCAL_RANK"] for e in envs] == ["1", "0", "0"]  # device LOCAL_RANK is its GPU
    assert [e["LOCAL_WORLD_SIZE"] for e in envs] == ["2", "1", "2"]
    assert {e["WORLD_SIZE"] for e in envs} == {"3"}
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {("10.0.0.1", "29500")}


def test_trainer_argv_adds_the_backend_and_the_servers():
    spec = ray_launch.LaunchSpec(num_trainers=2, trainer_args=["train.steps=3"])
    got = ray_launch.trainer_argv(spec, "sglang", ["http://10.0.0.1:8000", "http://10.0.0.2:8000"])
    assert got == [
        "train.steps=3",
        "train.backend=fsdp",
        "inference.backend=sglang",
        "inference.launch=false",
        'inference.servers=["http://10.0.0.1:8000","http://10.0.0.2:8000"]',
    ]
    one = ray_launch.LaunchSpec(num_trainers=1, trainer_args=["train.backend=torch"])
    assert ray_launch.trainer_argv(one, None, []) == ["train.backend=torch"]
