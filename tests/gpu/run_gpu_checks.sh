#!/usr/bin/env bash
# GPU checks on one H100/H200 whose image has PyTorch but no Transformer Engine (< 8 minutes).
#
#   1. Train the one-GPU proxy (examples/minimax_m2/train_minimax_m2_proxy.sh: the released layer
#      at full width, 4 layers, 16 experts, local spec) for 50 iterations on mock data with
#      pretrain_gpt.py; the loss must fall.
#   2. Reload the iteration-25 checkpoint and train again to 50; iterations 26..50 must give
#      identical losses.
#   3. Print tokens/s and MFU (bf16 dense peak: 989 TFLOP/s for H100 and H200).
#
# The device machine has no network: megatron-core and the few pure-Python dependencies that the
# image lacks are installed from WHEELHOUSE (default .gpu_wheels in the repository), prepared on a
# machine with a registry, for the image's Python, e.g.:
#   pip download -d .gpu_wheels --python-version 3.12 --only-binary=:all: \
#       "megatron-core>=0.19.2,<0.20" safetensors tqdm psutil transformers
# Results (logs and a summary) go to $OUT (default .gpu_checks in the repository).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$REPO/.gpu_checks}
WHEELHOUSE=${WHEELHOUSE:-$REPO/.gpu_wheels}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
rm -rf "$OUT/ckpt"

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

if ! "$PYTHON" -c "import megatron.core" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" \
        "megatron-core>=0.19.2,<0.20" safetensors tqdm psutil
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_MAX_CONNECTIONS=1
export PYTHON

COMMON=(--deterministic-mode --transformer-impl local)

echo "== 1. 50 iterations, checkpoint at 25 and 50"
SAVE_DIR="$OUT/ckpt" SAVE_INTERVAL=25 TRAIN_ITERS=50 \
    bash "$REPO/examples/minimax_m2/train_minimax_m2_proxy.sh" "${COMMON[@]}" \
    2>&1 | tee "$OUT/train.log"

echo "== 2. reload iteration 25, continue to 50"
echo 25 > "$OUT/ckpt/latest_checkpointed_iteration.txt"
LOAD_DIR="$OUT/ckpt" TRAIN_ITERS=50 \
    bash "$REPO/examples/minimax_m2/train_minimax_m2_proxy.sh" "${COMMON[@]}" \
    2>&1 | tee "$OUT/resume.log"

echo "== 3. summary"
"$PYTHON" "$REPO/tests/gpu/check_training_logs.py" \
    --train-log "$OUT/train.log" --resume-log "$OUT/resume.log" --resume-from 25 \
    --seq-length "${SEQ_LENGTH:-2048}" --global-batch-size "${GLOBAL_BATCH_SIZE:-8}" \
    | tee "$OUT/summary.txt"
