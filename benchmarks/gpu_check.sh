#!/usr/bin/env bash
# The GPU check: on a CUDA machine, prove the GPU path in one run (about 8 minutes) and print
# every figure the performance docs quote:
#   1. the CUDA tests (mixed precision, channels-last, ODIN on CUDA, the GPU training path);
#   2. train_speed.py: the lab's loop vs a bare PyTorch loop, ResNet-18, bf16 + channels_last + workers;
#   3. geometry_speed.py --device cuda: batched exact Jacobian vs the per-sample loop, and scoring
#      throughput (forward pass + every cached score vs the forward pass alone);
#   4. one app page rendered with its model on the GPU (AppTest, app_latency.py --gpu).
# Each step has its own time limit and the script goes on after a failed step, so one bad step
# still leaves the others' figures; the exit status is the number of failed steps.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, after `make setup`
#   PY=/path/to/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
failed=0

step() {  # step SECONDS TITLE COMMAND...: run with a time limit, say how it ended
    local limit=$1 title=$2
    shift 2
    echo
    echo "=== $title (limit ${limit}s) ==="
    local t0=$SECONDS
    timeout --signal=INT --kill-after=20 "$limit" "$@"
    local rc=$?
    echo "--- $title: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

echo "=== machine ==="
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
"$PY" - <<'EOF' || { echo "no CUDA device visible to torch: nothing to check"; exit 1; }
import os, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores")
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print("device:", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())
EOF

step 150 "CUDA tests" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_path.py tests/test_train.py tests/test_odin.py -k "cuda or gpu or amp or channels"
step 150 "training loop vs bare PyTorch (ResNet-18, bf16, channels_last, 4 workers)" \
    "$PY" benchmarks/train_speed.py --device cuda --arch resnet18 --amp bf16 --channels-last --workers 4 \
    --samples 20000 --epochs 2 --repeats 3
step 120 "Jacobian and scoring throughput on the GPU" \
    "$PY" benchmarks/geometry_speed.py --device cuda --sections jacobian,scoring --repeats 3
step 90 "one app page with its model on the GPU (AppTest)" \
    "$PY" benchmarks/app_latency.py --gpu --pages models,roc --repeats 3

echo
echo "=== gpu_check: $failed step(s) failed ==="
exit "$failed"
