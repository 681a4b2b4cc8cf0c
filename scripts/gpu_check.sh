#!/usr/bin/env bash
# Run the accelerator paths that CI (CPU only) cannot: a few minutes on one GPU.
#
# Checks, each printed as PASS/FAIL (the script exits non-zero if any fails):
#   devices      areal_env.devices picks the accelerator, its collective library, its RNG
#   local_engine LocalEngine on the device: sampled logprobs match a full forward pass
#                (several temperatures/top-k), batched greedy == one-by-one greedy, and a
#                pause -> weight update -> resume mid-request continues under the new weights
#   grpo_torch   trainers/grpo.py, single-device backend, 3 steps
#   grpo_fsdp    torchrun --nproc-per-node $NPROC trainers/grpo.py train.backend=fsdp, 3 steps
#   grpo_20      trainers/grpo.py, 20 steps: exits 0, one metrics row per step, finite values
#
# Usage (repository root, our package installed in the current Python):
#   bash scripts/gpu_check.sh                 # DEVICE=cuda, NPROC=1
#   DEVICE=cpu bash scripts/gpu_check.sh      # the same checks on CPU (gloo), as a dry run
# OUT_DIR=... keeps the runs' outputs and logs there (default: a fresh temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
NPROC="${NPROC:-1}"
OUT="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false DEVICE

# The overrides of tests/trainers/test_grpo_end_to_end.py: a tiny model, a short warm start.
SMALL=(
  model.tiny.hidden_size=32 model.tiny.num_layers=1 model.tiny.num_heads=2
  model.tiny.intermediate_size=64
  warm_start.max_steps=4 warm_start.eval_every=2 warm_start.eval_episodes=8
  warm_start.num_demos=32 warm_start.batch_size=16
  rollout.batch_size=2 rollout.n_samples=4 rollout.max_concurrent_rollouts=16
  checkpoint.every_steps=2 metrics.wandb_mode=disabled metrics.progress=false
  "model.device=$DEVICE"
)

failed=()
# Inside `if`, bash ignores `set -e`: each check function chains its steps with && instead.
check() {  # name function [args...]
  local name=$1
  shift
  echo "== $name"
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "PASS $name"
  else
    echo "FAIL $name (log: $OUT/$name.log)"
    tail -n 40 "$OUT/$name.log" | sed 's/^/    /'
    failed+=("$name")
  fi
}

devices_check() {
  python - <<'PY'
import os

import torch

from areal_env import checkpoint, devices

want = os.environ["DEVICE"]
got = devices.resolve_device("auto")
print("auto ->", got, "| backend", devices.process_group_backend(got))
if want != "cpu":
    assert got == want, f"auto picked {got}, expected {want}"
    assert want in devices.rng_state(), "accelerator RNG missing from rng_state()"
    devices.set_local_device(want, 0)
    assert torch.get_device_module(want).current_device() == 0
state = checkpoint.capture_rng()
a = torch.rand(3, device=want)
checkpoint.restore_rng(state)
assert torch.equal(torch.rand(3, device=want), a), "device RNG not restored"
print("ok")
PY
}

local_engine_check() {
  python - <<'PY'
import asyncio
import copy
import os
import tempfile

import torch

from areal_env.inference.local import LocalEngine
from areal_env.models.tiny import build_tiny_model, load_model_and_tokenizer
from areal_env.types import GenerationRequest, SamplingParams, WeightUpdate

DEVICE = os.environ["DEVICE"]
ATOL = 1e-4 if DEVICE == "cpu" else 1e-3  # GPU kernels: other reduction orders
PROMPTS = ["12+3=", "What is 7*8? ", "Count: 1 2 3", "hello"]
model, tok = load_model_and_tokenizer(build_tiny_model(tempfile.mkdtemp()), device=DEVICE)
assert next(model.parameters()).device.type == DEVICE


def req(text, **sampling):
    ids = tuple(tok(text)["input_ids"])
    return GenerationRequest(input_ids=ids, sampling=SamplingParams(**sampling))


def forward_logprobs(m, prompt, output, temperature):
    full = torch.tensor([list(prompt) + list(output)], device=DEVICE)
    with torch.no_grad():
        logits = m(input_ids=full).logits[0, len(prompt) - 1 : -1].float()
    logprobs = (logits / temperature).log_softmax(-1)
    out = torch.tensor(output, device=DEVICE).unsqueeze(-1)
    return logprobs.gather(-1, out).squeeze(-1).cpu()


async def logprobs_and_batching():
    engine = LocalEngine(model, tok)
    try:
        for temperature, top_k in [(1.0, 0), (0.7, 0), (0.7, 5), (0.0, 0)]:
            reqs = [req(p, max_new_tokens=16, temperature=temperature, top_k=top_k) for p in PROMPTS]
            results = await asyncio.gather(*(engine.agenerate(r) for r in reqs))
            for r in results:
                assert r.num_output_tokens == 16
                want = forward_logprobs(model, r.input_ids, r.output_ids, temperature or 1.0)
                torch.testing.assert_close(torch.tensor(r.output_logprobs), want, atol=ATOL, rtol=0)
        greedy = [req(p, max_new_tokens=12, temperature=0.0) for p in PROMPTS]
        batched = await asyncio.gather(*(engine.agenerate(r) for r in greedy))
        alone = [await engine.agenerate(r) for r in greedy]
        assert [b.output_ids for b in batched] == [a.output_ids for a in alone]
    finally:
        await engine.close()


async def interrupt_and_continue():
    policy, old = copy.deepcopy(model), copy.deepcopy(model)
    engine = LocalEngine(policy, tok)
    try:
        task = asyncio.create_task(engine.agenerate(req(PROMPTS[0], max_new_tokens=60)))
        async with asyncio.timeout(60):
            while not any(len(r.output_ids) >= 5 for r in engine._running.rows):  # noqa: ASYNC110
                await asyncio.sleep(0)
        await engine.pause()
        gen = torch.Generator().manual_seed(1)
        new = {
            k: v + 0.1 * torch.randn(v.shape, generator=gen).to(v.device)
            for k, v in old.state_dict().items()
        }
        await engine.update_weights(WeightUpdate(version=1, state_dict=new))
        await engine.resume()
        result = await task
    finally:
        await engine.close()
    versions = result.output_versions
    k = versions.count(0)
    assert 0 < k < 60 and versions == [0] * k + [1] * (60 - k), versions
    got = torch.tensor(result.output_logprobs)
    for version, m in ((0, old), (1, policy)):
        want = forward_logprobs(m, result.input_ids, result.output_ids, 1.0)
        where = torch.tensor(versions) == version
        torch.testing.assert_close(got[where], want[where], atol=ATOL, rtol=0)
    print(f"interrupted after {k} tokens, continued under version 1")


asyncio.run(logprobs_and_batching())
asyncio.run(interrupt_and_continue())
print("ok")
PY
}

metrics_ok() {  # output_dir steps
  python - "$1" "$2" <<'PY'
import math
import sys
from pathlib import Path

from areal_env.metrics import read_metrics

out, steps = Path(sys.argv[1]), int(sys.argv[2])
rows = read_metrics(out / "metrics.jsonl")
assert [r["step"] for r in rows] == list(range(1, steps + 1)), [r["step"] for r in rows]
for key in ("rollout/reward_mean", "train/version", "time/step_s"):
    assert all(key in r and math.isfinite(r[key]) for r in rows), key
assert any((out / "final_model").glob("*.safetensors")), "final_model missing"
last = rows[-1]
print(f"{steps} steps, reward_mean {last['rollout/reward_mean']:.3f}, step {last['time/step_s']:.2f} s")
PY
}

grpo_torch() {
  python trainers/grpo.py "${SMALL[@]}" train.steps=3 "output_dir=$OUT/grpo_torch" &&
    metrics_ok "$OUT/grpo_torch" 3
}

grpo_fsdp() {
  local port
  port=$(python -c "from areal_env.trainers.distributed import free_port; print(free_port())") &&
    python -m torch.distributed.run --nproc-per-node "$NPROC" --master-port "$port" \
      trainers/grpo.py "${SMALL[@]}" train.backend=fsdp train.steps=3 \
      "output_dir=$OUT/grpo_fsdp" &&
    metrics_ok "$OUT/grpo_fsdp" 3 || return 1
  local shards
  shards=$(find "$OUT/grpo_fsdp/checkpoints" -name '*.distcp' -path '*step_000002*' | wc -l)
  [ "$shards" -eq "$NPROC" ] || { echo "expected $NPROC DCP shard files, found $shards"; return 1; }
}

grpo_20() {
  python trainers/grpo.py "${SMALL[@]}" train.steps=20 "output_dir=$OUT/grpo_20" &&
    metrics_ok "$OUT/grpo_20" 20
}

if [ "$DEVICE" != cpu ]; then
  python -c "from areal_env import devices; import sys; \
sys.exit(devices.available_device_type() != '$DEVICE')" \
    || { echo "no $DEVICE device here (DEVICE=cpu runs the checks on CPU)"; exit 2; }
fi
echo "device $DEVICE, $NPROC rank(s) for fsdp, outputs in $OUT"
check devices devices_check
check local_engine local_engine_check
check grpo_torch grpo_torch
check grpo_fsdp grpo_fsdp
check grpo_20 grpo_20
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "ALL PASS"
