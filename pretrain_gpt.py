# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Pretrain or fine-tune GPT models, MiniMax-M2 included, with megatron-training.

Takes every stock Megatron flag, plus this package's ``TransformerConfig`` fields
(``--qk-layernorm-scope``), ``--modelopt-recipe`` (quantization-aware training) and
``--load-hf-dir`` (start from a released HF checkpoint, FP8 or BF16, without converting it
first). For MiniMax-M2 the architecture flags come from
``tools/minimax_m2_args.py --hf-config config.json``.
"""

import sys
import time

_PROGRAM_START = time.time()

from megatron.core.enums import ModelType
from megatron.training import inprocess_restart, pretrain
from megatron.training.argument_utils import pretrain_cfg_container_from_args
from megatron.training.arguments import parse_and_validate_args
from megatron.training.training import set_startup_timestamps

from megatron.minimax.training import (
    add_minimax_args,
    gpt_model_config_from_args,
    use_fp32_param_safe_float16_optimizer,
)
from megatron.minimax.quantization.qat import configure as configure_quantization_aware_training
from megatron.minimax.training.gpt_step import forward_step, train_valid_test_datasets_provider
from megatron.minimax.training.hf_initialization import hf_initialization

if __name__ == "__main__":
    set_startup_timestamps(program_start=_PROGRAM_START, main_entry=time.time())

    args = parse_and_validate_args(
        extra_args_provider=add_minimax_args, args_defaults={"tokenizer_type": "GPT2BPETokenizer"}
    )
    # Optionally enable in-process restart of pretrain().
    pretrain, store = inprocess_restart.maybe_wrap_for_inprocess_restart(pretrain)
    # An fp32 router in a bf16 model: checkpoint the non-distributed optimizer correctly.
    use_fp32_param_safe_float16_optimizer()
    try:
        model_config = gpt_model_config_from_args(args)
        # --load-hf-dir: fill the freshly built model from the HF checkpoint (unless --load
        # resumes).
        hf_initialization(args, model_config)
        # --modelopt-recipe: quantizers restored before the load, or calibrated after it.
        datasets_provider = configure_quantization_aware_training(
            args, model_config, train_valid_test_datasets_provider
        )
    except ValueError as e:
        print(f"pretrain_gpt.py: error: {e}", file=sys.stderr)
        sys.exit(2)

    pretrain(
        pretrain_cfg_container_from_args(args, model_config),
        datasets_provider,
        ModelType.encoder_or_decoder,
        forward_step,
        store=store,
    )
