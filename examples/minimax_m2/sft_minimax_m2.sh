#!/usr/bin/env bash
# Supervised fine-tuning of MiniMax-M2 / M2.1 / M2.5 / M2.7 on chat data, with the loss on the
# assistant tokens only. The same model, layout and launch as pretrain_minimax_m2.sh (which this
# script runs), with SFT data and hyper-parameters.
#
# Data: tools/preprocess_data.py --mode chat writes PREFIX_chat_document (tokens) and
# PREFIX_chat_loss_mask; pass the *_chat_document prefixes in DATA_PATH and pretrain_gpt.py trains
# on the assistant turns as the chat template renders them (docs/data.md).
#
# Required environment: HF_DIR, SAVE_DIR, DATA_PATH; optional LOAD_DIR (see pretrain_minimax_m2.sh).
# Optional: everything pretrain_minimax_m2.sh takes; the defaults below are SFT's.
set -euo pipefail

: "${DATA_PATH:?Set DATA_PATH to *_chat_document prefix(es) from tools/preprocess_data.py --mode chat}"
for token in $DATA_PATH; do
    case "$token" in
        *_chat_document|[0-9]*) ;;
        *) echo "DATA_PATH entry '$token' is not a *_chat_document prefix" >&2; exit 2 ;;
    esac
done

export LR=${LR:-5e-6}
export GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-256}
export TRAIN_ITERS=${TRAIN_ITERS:-2000}
# Fine-tuning keeps the released routing balance: freeze the expert bias unless asked otherwise.
export EXPERT_BIAS_UPDATE_RATE=${EXPERT_BIAS_UPDATE_RATE:-0}

# Every sample is an assistant-masked conversation: average the loss per token, not per sample
# (a sample can fall entirely inside a long prompt), and do not reset positions at end-of-turn.
exec bash "$(dirname "${BASH_SOURCE[0]}")/pretrain_minimax_m2.sh" \
    --calculate-per-token-loss \
    "$@"
