#!/usr/bin/env bash
# train.backend=megatron on GPUs: the layouts CI (CPU, gloo) cannot run. About a minute.
#
# For each layout (tensor x pipeline parallel) that fits the GPUs here, torchrun runs
# tests/trainers/megatron_worker_script.py on NCCL: the vocab-parallel logprobs against
# the full-vocabulary ones, then one MegatronBackend train_step against TorchBackend on
# the same batch (gradients, loss, metrics, weights after AdamW, weight sync to HF
# names, save/load), checked with the CPU test's tolerances (_check_parity).
#   TP=2 PP=1   2 GPUs (also run on CPU by the test)
#   TP=1 PP=2   2 GPUs (megatron-core's 1F1B schedule: CUDA only)
#   TP=2 PP=2   4 GPUs (skipped with fewer)
#
# Usage (repository root, dev extra installed): bash scripts/gpu_check_megatron.sh
# DEVICE=cpu runs the script's plumbing on 2 gloo ranks: TP=2 passes, PP=2 must FAIL there
# (the backend refuses PP > 1 off CUDA).
# OUT_DIR=... keeps the reports and logs there (default: a fresh temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE="${DEVICE:-cuda}"
NGPU="$(python -c 'import torch; print(torch.cuda.device_count())')"
[[ "$DEVICE" == cpu ]] && NGPU=2 && export OMP_NUM_THREADS=1
MODEL="$OUT/tiny_model"  # 2 layers, 4 heads: PP=2 puts one layer on each stage
python -c "from areal_env.models.tiny import build_tiny_model; build_tiny_model('$MODEL')"

failed=0
for layout in "2 1" "1 2" "2 2"; do
  read -r tp pp <<<"$layout"
  name="tp${tp}_pp${pp}"
  if (( tp * pp > NGPU )); then echo "SKIP $name (needs $((tp * pp)) GPUs, have $NGPU)"; continue; fi
  if python -m torch.distributed.run --nproc-per-node=$((tp * pp)) \
      tests/trainers/megatron_worker_script.py "$OUT" "$MODEL" "$tp" "$pp" "$DEVICE" \
      >"$OUT/$name.log" 2>&1 &&
    python - "$OUT/$name.json" >>"$OUT/$name.log" 2>&1 <<'EOF'
import json, sys
sys.path.insert(0, "tests/trainers")
from test_megatron_backend import _check_parity

report = json.load(open(sys.argv[1]))
vocab = report["vocab"]
assert vocab["logprob_max_diff"] <= 1e-5 and vocab["grad_max_diff"] <= 1e-6, vocab
_check_parity(report["parity"])
print(json.dumps(report["parity"], indent=1))
EOF
  then echo "PASS $name"; else echo "FAIL $name (log: $OUT/$name.log)"; failed=1; fi
done
exit "$failed"
