#!/usr/bin/env bash
# Continued pretraining of MiniMax-M2 / M2.1 / M2.5 / M2.7 (229B total, ~10B active) with
# Megatron-core, straight from the released HF checkpoint (pretrain_gpt.py --load-hf-dir), or from
# a checkpoint converted by tools/checkpoint/convert_minimax_m2.py hf-to-mcore.
#
# Run on every node (torchrun), or under Slurm with one task per node (srun bash <this script>).
#
# Required environment:
#   HF_DIR      the HF model directory (config.json and tokenizer; and the initial weights unless
#               LOAD_DIR is set: each rank reads its own part of them, FP8 or BF16)
#   SAVE_DIR    where to write training checkpoints (torch_dist); without LOAD_DIR, a relaunch
#               resumes from the latest one there instead of reading HF_DIR's weights again
#   DATA_PATH   Megatron indexed dataset prefix(es), e.g. "1.0 /data/corpus_text_document"
#               (tools/preprocess_data.py --mode text)
# Optional environment:
#   LOAD_DIR    a converted Megatron checkpoint (latest_checkpointed_iteration.txt + release/) to
#               start from instead of HF_DIR's weights
#   GPU_TYPE=h100|h200  picks the layout below (checked with tools/model_report.py):
#       h100 (80 GB):  16 nodes x 8 GPUs, TP1 PP4 EP32 ETP1, 62 layers as 15/16/16/15
#       h200 (141 GB):  8 nodes x 8 GPUs, TP1 PP4 EP16 ETP1, 62 layers as 15/16/16/15
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, GPUS_PER_NODE   (Slurm values are used if set)
#   TP, PP, EP, FIRST_STAGE_LAYERS, LAST_STAGE_LAYERS, SEQ_LENGTH, MICRO_BATCH_SIZE, GLOBAL_BATCH_SIZE, LR, TRAIN_ITERS
#   EXPERT_BIAS_UPDATE_RATE  aux-loss-free balancing step (default 1e-3; 0 freezes the bias)
#   MODEL_CLASS=gpt|hybrid   GPTModel through pretrain_gpt.py (default) or HybridModel through
#                            pretrain_hybrid.py (pattern '*E' per layer; the same HF_DIR/LOAD_DIR)
#   WANDB_API_KEY, WANDB_PROJECT   log to Weights & Biases when set
#   DRY_RUN=1   print the command instead of running it
set -euo pipefail

: "${HF_DIR:?Set HF_DIR to the MiniMax-M2 HF directory (config.json, tokenizer)}"
: "${SAVE_DIR:?Set SAVE_DIR to the training checkpoint directory}"
: "${DATA_PATH:?Set DATA_PATH to the indexed dataset prefix(es) (tools/preprocess_data.py)}"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python}

GPU_TYPE=${GPU_TYPE:-h100}
case "$GPU_TYPE" in
    h100) DEFAULT_NNODES=16 DEFAULT_EP=32 ;;
    h200) DEFAULT_NNODES=8 DEFAULT_EP=16 ;;
    *) echo "GPU_TYPE must be h100 or h200, got '$GPU_TYPE'" >&2; exit 2 ;;
esac
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${NNODES:-${SLURM_NNODES:-$DEFAULT_NNODES}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
TP=${TP:-1}
PP=${PP:-4}
EP=${EP:-$DEFAULT_EP}
SEQ_LENGTH=${SEQ_LENGTH:-4096}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-1}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-1024}
LR=${LR:-1e-5}
TRAIN_ITERS=${TRAIN_ITERS:-10000}
EXPERT_BIAS_UPDATE_RATE=${EXPERT_BIAS_UPDATE_RATE:-1e-3}
MODEL_CLASS=${MODEL_CLASS:-gpt}
case "$MODEL_CLASS" in
    gpt) ENTRY_POINT=pretrain_gpt.py ;;
    hybrid) ENTRY_POINT=pretrain_hybrid.py ;;
    *) echo "MODEL_CLASS must be gpt or hybrid, got '$MODEL_CLASS'" >&2; exit 2 ;;
esac

DISTRIBUTED_ARGS=(
    --nproc-per-node "$GPUS_PER_NODE"
    --nnodes "$NNODES"
    --node-rank "$NODE_RANK"
    --master-addr "$MASTER_ADDR"
    --master-port "$MASTER_PORT"
)

# Architecture, vocabulary and layout flags, generated from config.json (never retyped).
# 62 layers over 4 stages: the first and last stages also hold the embedding and the output layer
# (0.6B parameters each), so they get one layer fewer: 15/16/16/15.
FIRST_STAGE_LAYERS=${FIRST_STAGE_LAYERS:-15}
LAST_STAGE_LAYERS=${LAST_STAGE_LAYERS:-15}
mapfile -t MODEL_ARGS < <("$PYTHON" "$REPO/tools/minimax_m2_args.py" --model "$MODEL_CLASS" \
    --hf-config "$HF_DIR/config.json" --tp "$TP" --pp "$PP" --ep "$EP" --etp 1 \
    --first-stage-layers "$FIRST_STAGE_LAYERS" --last-stage-layers "$LAST_STAGE_LAYERS" \
    | tr ' ' '\n')

MODEL_PARALLEL_ARGS=(
    --use-distributed-optimizer
    --overlap-grad-reduce
    --overlap-param-gather
)

MOE_ARGS=(
    --moe-token-dispatcher-type alltoall
    --moe-grouped-gemm
    --moe-permute-fusion
    # Aux-loss-free balancing through e_score_correction_bias (Megatron's expert bias).
    --moe-router-load-balancing-type none
    --moe-aux-loss-coeff 0
    --moe-router-bias-update-rate "$EXPERT_BIAS_UPDATE_RATE"
)

DATA_ARGS=(
    --data-path $DATA_PATH
    --split 998,2,0
    --tokenizer-type HuggingFaceTokenizer
    --tokenizer-model "$HF_DIR"
    --seq-length "$SEQ_LENGTH"
)

TRAINING_ARGS=(
    --micro-batch-size "$MICRO_BATCH_SIZE"
    --global-batch-size "$GLOBAL_BATCH_SIZE"
    --train-iters "$TRAIN_ITERS"
    --lr "$LR"
    --min-lr "$(awk "BEGIN {print $LR / 10}")"
    --lr-decay-style cosine
    --lr-warmup-iters 100
    --weight-decay 0.1
    --adam-beta1 0.9
    --adam-beta2 0.95
    --clip-grad 1.0
    --bf16
    --recompute-granularity full
    --recompute-method uniform
    --recompute-num-layers 1
    --attention-softmax-in-fp32
    --no-rope-fusion
)

if [ -n "${LOAD_DIR:-}" ]; then
    INITIAL_WEIGHTS=(--load "$LOAD_DIR")
else
    # The release's weights at the first launch; SAVE_DIR's latest checkpoint after that.
    INITIAL_WEIGHTS=(--load-hf-dir "$HF_DIR" --load "$SAVE_DIR")
fi
CHECKPOINT_ARGS=(
    "${INITIAL_WEIGHTS[@]}"
    --save "$SAVE_DIR"
    --save-interval 500
    --ckpt-format torch_dist
    --dist-ckpt-strictness log_all
)

LOGGING_ARGS=(
    --log-interval 1
    --log-throughput
    --eval-interval 500
    --eval-iters 10
    --tensorboard-dir "$SAVE_DIR/tensorboard"
)
if [ -n "${WANDB_API_KEY:-}" ]; then
    LOGGING_ARGS+=(--wandb-project "${WANDB_PROJECT:-minimax-m2}" --wandb-exp-name "pretrain-$GPU_TYPE")
fi

CMD=(torchrun "${DISTRIBUTED_ARGS[@]}" "$REPO/$ENTRY_POINT"
    "${MODEL_ARGS[@]}" "${MODEL_PARALLEL_ARGS[@]}" "${MOE_ARGS[@]}" "${DATA_ARGS[@]}"
    "${TRAINING_ARGS[@]}" "${CHECKPOINT_ARGS[@]}" "${LOGGING_ARGS[@]}" "$@")

if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${CMD[@]}"; echo
else
    exec "${CMD[@]}"
fi
