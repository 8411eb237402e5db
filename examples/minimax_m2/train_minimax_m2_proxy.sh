#!/usr/bin/env bash
# Single-GPU proxy of MiniMax-M2 for smoke tests and benchmarks: the released layer at full width
# (hidden 3072, 48 q / 8 kv heads of 128, partial RoPE 64, full-dimension QK norm, fp32 sigmoid
# router with expert bias, SwiGLU experts of 1536) but 4 layers and 16 experts top-8
# (configs/minimax_m2_proxy_config.json: 2.3B parameters, 1.2B of them embedding and output layer).
#
# Optional environment:
#   DATA_PATH        indexed dataset prefix(es); default: --mock-data
#   TOKENIZER_DIR    HF tokenizer directory (needed with DATA_PATH)
#   SAVE_DIR / LOAD_DIR   checkpoint directories (default: no checkpointing)
#   TRAIN_ITERS (50), SEQ_LENGTH (2048), MICRO_BATCH_SIZE (1), GLOBAL_BATCH_SIZE (8), LR (3e-4)
#   DRY_RUN=1        print the command instead of running it
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python}
HF_CONFIG=${HF_CONFIG:-$REPO/examples/minimax_m2/configs/minimax_m2_proxy_config.json}
TRAIN_ITERS=${TRAIN_ITERS:-50}
SEQ_LENGTH=${SEQ_LENGTH:-2048}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-1}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-8}
LR=${LR:-3e-4}

mapfile -t MODEL_ARGS < <("$PYTHON" "$REPO/tools/minimax_m2_args.py" --hf-config "$HF_CONFIG" \
    | tr ' ' '\n')

if [ -n "${DATA_PATH:-}" ]; then
    : "${TOKENIZER_DIR:?Set TOKENIZER_DIR (HF tokenizer directory) with DATA_PATH}"
    DATA_ARGS=(--data-path $DATA_PATH --split 99,1,0 --tokenizer-type HuggingFaceTokenizer
               --tokenizer-model "$TOKENIZER_DIR")
else
    DATA_ARGS=(--mock-data --tokenizer-type NullTokenizer)
fi
DATA_ARGS+=(--seq-length "$SEQ_LENGTH")

MOE_ARGS=(
    --moe-token-dispatcher-type alltoall
    --moe-router-load-balancing-type none
    --moe-aux-loss-coeff 0
)

TRAINING_ARGS=(
    --micro-batch-size "$MICRO_BATCH_SIZE"
    --global-batch-size "$GLOBAL_BATCH_SIZE"
    --train-iters "$TRAIN_ITERS"
    --lr "$LR"
    --min-lr "$(awk "BEGIN {print $LR / 10}")"
    --lr-decay-style cosine
    --lr-warmup-iters 5
    --weight-decay 0.1
    --clip-grad 1.0
    --bf16
    --use-distributed-optimizer
    --attention-softmax-in-fp32
    --no-rope-fusion
    --seed 1234
)

CHECKPOINT_ARGS=(--ckpt-format torch_dist)
if [ -n "${SAVE_DIR:-}" ]; then
    CHECKPOINT_ARGS+=(--save "$SAVE_DIR" --save-interval "${SAVE_INTERVAL:-25}")
fi
if [ -n "${LOAD_DIR:-}" ]; then
    CHECKPOINT_ARGS+=(--load "$LOAD_DIR")
fi

LOGGING_ARGS=(--log-interval 1 --log-throughput --eval-iters 0 --eval-interval 1000000)

CMD=(torchrun --nproc-per-node 1 --standalone "$REPO/pretrain_gpt.py"
    "${MODEL_ARGS[@]}" "${MOE_ARGS[@]}" "${DATA_ARGS[@]}" "${TRAINING_ARGS[@]}"
    "${CHECKPOINT_ARGS[@]}" "${LOGGING_ARGS[@]}" "$@")

if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${CMD[@]}"; echo
else
    exec "${CMD[@]}"
fi
