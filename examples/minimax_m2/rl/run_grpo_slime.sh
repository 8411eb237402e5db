#!/bin/bash
# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
#
# GRPO on MiniMax-M2.x with slime (Megatron backend, SGLang rollout), using megatron.minimax for
# the model: the MiniMax-M2 decoder spec (full-dimension QK norm, fp32 router), a torch_dist
# checkpoint from convert_minimax_m2.py, and the frozen-expert-bias RL policy.
#
# This script was syntax-checked and dry-run on CPU only (see README.md, "What was run").
#
# Required environment:
#   SLIME_DIR     slime checkout (the directory holding train.py)
#   HF_DIR        MiniMax-M2.x Hugging Face directory: SGLang serves it, slime reads its tokenizer,
#                 and tools/minimax_m2_args.py reads its config.json
#   MCORE_DIR     Megatron torch_dist checkpoint of HF_DIR; converted here if it does not exist
#   PROMPT_DATA   prompt JSONL for slime's --prompt-data
# Optional environment [default]:
#   SAVE_DIR [${MCORE_DIR}_grpo]  MEGATRON_LM_DIR [/root/Megatron-LM]  REPO_DIR [this repository]
#   TP [2]  PP [2]  EP [16]  ACTOR_NUM_NODES [16]  GPUS_PER_NODE [8]
#   ROLLOUT_GPUS_PER_ENGINE [16]  SGLANG_EP [16]  MAX_TOKENS_PER_GPU [8192]
#   EXPERT_BIAS_UPDATE_RATE [0]  0 keeps the expert bias frozen (the RL policy, see
#                                megatron/minimax/rl/expert_bias.py); > 0 updates it every step
#   MASTER_ADDR [127.0.0.1]  START_RAY [1]  PYTHON [python3]
#   DRY_RUN [0]  1 prints the commands instead of running them
#   SKIP_REFIT_NAME_CHECK [0]  1 launches even if slime's weight-sync converter lacks our names
# Extra arguments are passed to slime's train.py unchanged ("$@").

set -euo pipefail

: "${SLIME_DIR:?Set SLIME_DIR to a slime checkout (the directory holding train.py)}"
: "${HF_DIR:?Set HF_DIR to the MiniMax-M2.x Hugging Face directory}"
: "${MCORE_DIR:?Set MCORE_DIR to the torch_dist checkpoint (converted from HF_DIR if absent)}"
: "${PROMPT_DATA:?Set PROMPT_DATA to the prompt JSONL file}"

REPO_DIR="${REPO_DIR:-$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../../.." && pwd)}"
MEGATRON_LM_DIR="${MEGATRON_LM_DIR:-/root/Megatron-LM}"
SAVE_DIR="${SAVE_DIR:-${MCORE_DIR%/}_grpo}"
PYTHON="${PYTHON:-python3}"

TP="${TP:-2}"
PP="${PP:-2}"
EP="${EP:-16}"
ACTOR_NUM_NODES="${ACTOR_NUM_NODES:-16}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
ROLLOUT_GPUS_PER_ENGINE="${ROLLOUT_GPUS_PER_ENGINE:-16}"
SGLANG_EP="${SGLANG_EP:-16}"
MAX_TOKENS_PER_GPU="${MAX_TOKENS_PER_GPU:-8192}"
EXPERT_BIAS_UPDATE_RATE="${EXPERT_BIAS_UPDATE_RATE:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
START_RAY="${START_RAY:-1}"
DRY_RUN="${DRY_RUN:-0}"
SKIP_REFIT_NAME_CHECK="${SKIP_REFIT_NAME_CHECK:-0}"

# megatron.minimax must be importable next to Megatron-LM (`megatron` is a namespace package).
REPO_PYTHONPATH="${REPO_DIR}${PYTHONPATH:+:${PYTHONPATH}}"

die() {
    echo "run_grpo_slime.sh: error: $*" >&2
    exit 2
}

run() {
    if [[ "${DRY_RUN}" == 1 ]]; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# ---- Weight sync check: slime's raw converter must know this model's parameter names ----
SLIME_CONVERTER="${SLIME_DIR}/slime/backends/megatron_utils/megatron_to_hf/minimax_m2.py"
if [[ "${SKIP_REFIT_NAME_CHECK}" != 1 ]]; then
    if [[ ! -f "${SLIME_CONVERTER}" ]]; then
        die "${SLIME_CONVERTER} not found: this slime has no MiniMax-M2 weight sync (see README.md)"
    fi
    grep -q "q_layernorm" "${SLIME_CONVERTER}" ||
        die "${SLIME_CONVERTER} maps slime's own q_norm/k_norm names, not this model's" \
            "q_layernorm/k_layernorm, so the first weight sync would fail (see README.md," \
            "'Weight sync'); set SKIP_REFIT_NAME_CHECK=1 to launch anyway"
fi

# ---- Architecture and layout flags, generated from config.json ----
MODEL_FLAGS="$(PYTHONPATH="${REPO_PYTHONPATH}" "${PYTHON}" "${REPO_DIR}/tools/minimax_m2_args.py" \
    --hf-config "${HF_DIR}/config.json" --tp "${TP}" --pp "${PP}" --ep "${EP}" --etp 1)"
# The tool prints shell-safe tokens, one flag and its values per line.
TOOL_ARGS=()
while read -r -a line_tokens; do
    TOOL_ARGS+=("${line_tokens[@]}")
done <<< "${MODEL_FLAGS}"

# slime's argument parser (stock megatron-core's) has no --qk-layernorm-scope and no
# --moe-router-keep-in-fp32: the MiniMax-M2 spec below implies 'layer', and an fp32 gate from
# --moe-router-dtype fp32.
MODEL_ARGS=()
scope_seen=0
keep_fp32_seen=0
for ((i = 0; i < ${#TOOL_ARGS[@]}; i++)); do
    case "${TOOL_ARGS[i]}" in
        --qk-layernorm-scope)
            [[ "${TOOL_ARGS[i + 1]:-}" == "layer" ]] ||
                die "minimax_m2_args.py printed --qk-layernorm-scope ${TOOL_ARGS[i + 1]:-}, expected layer"
            scope_seen=1
            i=$((i + 1))
            ;;
        --moe-router-keep-in-fp32)
            keep_fp32_seen=1
            ;;
        *)
            MODEL_ARGS+=("${TOOL_ARGS[i]}")
            ;;
    esac
done
[[ "${scope_seen}" == 1 ]] || die "minimax_m2_args.py printed no --qk-layernorm-scope"
[[ "${keep_fp32_seen}" == 1 ]] || die "minimax_m2_args.py printed no --moe-router-keep-in-fp32"

# ---- Checkpoint: torch_dist from the HF release (FP8 dequantised, bf16, router fp32) ----
if [[ ! -f "${MCORE_DIR}/latest_checkpointed_iteration.txt" ]]; then
    run env PYTHONPATH="${REPO_PYTHONPATH}" "${PYTHON}" \
        "${REPO_DIR}/tools/checkpoint/convert_minimax_m2.py" hf-to-mcore \
        --hf-dir "${HF_DIR}" --save-dir "${MCORE_DIR}" --dtype bf16
fi

SPEC_ARGS=(
    --spec megatron.minimax.rl.spec get_minimax_m2_spec
)

# Routing numerics of rollout and training: fp32 gate (also in MODEL_ARGS, restated here) and
# the expert-bias policy.
ROUTER_ARGS=(
    --moe-router-dtype fp32
    --moe-router-bias-update-rate "${EXPERT_BIAS_UPDATE_RATE}"
)

# Grouped GEMM gives the expert names (linear_fc1.weight<e>) slime's weight sync expects.
MOE_ARGS=(
    --moe-grouped-gemm
    --moe-permute-fusion
)

MEGATRON_PERF_ARGS=(
    --recompute-granularity full
    --recompute-method uniform
    --recompute-num-layers 1
    --attention-backend flash
    --accumulate-allreduce-grads-in-fp32
)

OPTIMIZER_ARGS=(
    --optimizer adam
    --lr 1e-6
    --lr-decay-style constant
    --weight-decay 0.1
    --adam-beta1 0.9
    --adam-beta2 0.98
    --optimizer-cpu-offload
    --overlap-cpu-optimizer-d2h-h2d
    --use-precision-aware-optimizer
)

# slime: the actor starts from --ref-load while --load holds no checkpoint yet.
CKPT_ARGS=(
    --hf-checkpoint "${HF_DIR}"
    --ref-load "${MCORE_DIR}"
    --load "${SAVE_DIR}"
    --save "${SAVE_DIR}"
    --save-interval 20
    --megatron-to-hf-mode raw
    --model-name minimax_m2
)

ROLLOUT_ARGS=(
    --prompt-data "${PROMPT_DATA}"
    --input-key prompt
    --label-key label
    --apply-chat-template
    --rollout-shuffle
    --rm-type deepscaler
    --num-rollout 3000
    --rollout-batch-size 32
    --n-samples-per-prompt 8
    --rollout-max-response-len 16384
    --rollout-temperature 1.0
)

TRAIN_BATCH_ARGS=(
    --num-steps-per-rollout 1
    --balance-data
    --use-dynamic-batch-size
    --max-tokens-per-gpu "${MAX_TOKENS_PER_GPU}"
)

GRPO_ARGS=(
    --advantage-estimator grpo
    --use-kl-loss
    --kl-loss-coef 0.00
    --kl-loss-type low_var_kl
    --entropy-coef 0.00
    --eps-clip 0.2
    --eps-clip-high 0.28
)

SGLANG_ARGS=(
    --rollout-num-gpus-per-engine "${ROLLOUT_GPUS_PER_ENGINE}"
    --sglang-ep-size "${SGLANG_EP}"
    --sglang-mem-fraction-static 0.7
)

CLUSTER_ARGS=(
    --actor-num-nodes "${ACTOR_NUM_NODES}"
    --actor-num-gpus-per-node "${GPUS_PER_NODE}"
    --colocate
)

RUNTIME_ENV_JSON="$("${PYTHON}" -c '
import json, sys
print(json.dumps({"env_vars": {
    "PYTHONPATH": sys.argv[1],
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "MASTER_ADDR": sys.argv[2],
    "no_proxy": "localhost,127.0.0.1," + sys.argv[2],
}}))' "${MEGATRON_LM_DIR}:${REPO_PYTHONPATH}" "${MASTER_ADDR}")"

if [[ "${START_RAY}" == 1 ]]; then
    # Other nodes join with: ray start --address "${MASTER_ADDR}:6379" --num-gpus "${GPUS_PER_NODE}"
    run ray start --head --node-ip-address "${MASTER_ADDR}" --num-gpus "${GPUS_PER_NODE}" \
        --disable-usage-stats
fi

run ray job submit --address="http://${MASTER_ADDR}:8265" \
    --runtime-env-json="${RUNTIME_ENV_JSON}" \
    -- "${PYTHON}" "${SLIME_DIR}/train.py" \
    "${CLUSTER_ARGS[@]}" \
    "${MODEL_ARGS[@]}" \
    "${SPEC_ARGS[@]}" \
    "${ROUTER_ARGS[@]}" \
    "${MOE_ARGS[@]}" \
    "${MEGATRON_PERF_ARGS[@]}" \
    "${OPTIMIZER_ARGS[@]}" \
    "${CKPT_ARGS[@]}" \
    "${ROLLOUT_ARGS[@]}" \
    "${TRAIN_BATCH_ARGS[@]}" \
    "${GRPO_ARGS[@]}" \
    "${SGLANG_ARGS[@]}" \
    "$@"
