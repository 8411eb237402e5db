# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The body of ``pretrain_gpt.py`` and ``pretrain_hybrid.py``: megatron-training's ``pretrain()``
with this package's flags, model config and hooks. The two scripts differ only in the model class
their config builds."""

import sys
import time
from typing import Callable

from megatron.core.enums import ModelType
from megatron.training import inprocess_restart, pretrain
from megatron.training.argument_utils import pretrain_cfg_container_from_args
from megatron.training.arguments import parse_and_validate_args
from megatron.training.training import set_startup_timestamps

from megatron.minimax.quantization.qat import configure as configure_quantization_aware_training
from megatron.minimax.training.arguments import add_minimax_args
from megatron.minimax.training.gpt_step import forward_step, train_valid_test_datasets_provider
from megatron.minimax.training.hf_initialization import hf_initialization
from megatron.minimax.training.optimizer import use_fp32_param_safe_float16_optimizer

__all__ = ["run_pretrain"]


def run_pretrain(prog: str, model_config_from_args: Callable, program_start: float) -> None:
    """Parse the command line and train.

    Args:
        prog: the script's name, for one-line errors (exit status 2).
        model_config_from_args: ``gpt_model_config_from_args`` or ``hybrid_model_config_from_args``.
        program_start: ``time.time()`` taken by the script before its imports (startup timing).
    """
    set_startup_timestamps(program_start=program_start, main_entry=time.time())

    args = parse_and_validate_args(
        extra_args_provider=add_minimax_args, args_defaults={"tokenizer_type": "GPT2BPETokenizer"}
    )
    # Optionally enable in-process restart of pretrain().
    train, store = inprocess_restart.maybe_wrap_for_inprocess_restart(pretrain)
    # An fp32 router in a bf16 model: checkpoint the non-distributed optimizer correctly.
    use_fp32_param_safe_float16_optimizer()
    try:
        model_config = model_config_from_args(args)
        # --load-hf-dir: fill the freshly built model from the HF checkpoint (unless --load
        # resumes); the weight table names GPTModel and HybridModel parameters alike.
        hf_initialization(args, model_config)
        # --modelopt-recipe: quantizers restored before the load, or calibrated after it.
        datasets_provider = configure_quantization_aware_training(
            args, model_config, train_valid_test_datasets_provider
        )
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)

    train(
        pretrain_cfg_container_from_args(args, model_config),
        datasets_provider,
        ModelType.encoder_or_decoder,
        forward_step,
        store=store,
    )
