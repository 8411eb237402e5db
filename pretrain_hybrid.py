# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Pretrain or fine-tune MiniMax-M2 as a megatron-core ``HybridModel`` with megatron-training.

The same model, flags, data and checkpoints as ``pretrain_gpt.py``, built as the class that
megatron-core keeps developing (``GPTModel`` logs that it takes critical fixes only). Each
MiniMax-M2 layer is an attention layer and an MoE layer: ``--hybrid-layer-pattern`` is ``*E``
repeated ``num_hidden_layers`` times, with ``|`` between pipeline stages and ``/*E`` per MTP
depth; ``tools/minimax_m2_args.py --model hybrid`` prints it with the other architecture flags.
``--load`` takes checkpoints saved by GPT runs and by ``convert_minimax_m2.py hf-to-mcore`` as well
as hybrid ones (megatron-core translates GPT checkpoints at load time); ``--load-hf-dir`` starts
from the released HF checkpoint directly, and ``--modelopt-recipe`` trains with quantizers on, as
in ``pretrain_gpt.py``.
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
    hybrid_model_config_from_args,
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
    pretrain, store = inprocess_restart.maybe_wrap_for_inprocess_restart(pretrain)
    # An fp32 router in a bf16 model: checkpoint the non-distributed optimizer correctly.
    use_fp32_param_safe_float16_optimizer()
    try:
        model_config = hybrid_model_config_from_args(args)
        # --load-hf-dir: fill the freshly built model from the HF checkpoint (unless --load
        # resumes); the weight table names HybridModel parameters as it names GPTModel ones.
        hf_initialization(args, model_config)
        # --modelopt-recipe: quantizers restored before the load, or calibrated after it.
        datasets_provider = configure_quantization_aware_training(
            args, model_config, train_valid_test_datasets_provider
        )
    except ValueError as e:
        print(f"pretrain_hybrid.py: error: {e}", file=sys.stderr)
        sys.exit(2)

    pretrain(
        pretrain_cfg_container_from_args(args, model_config),
        datasets_provider,
        ModelType.encoder_or_decoder,
        forward_step,
        store=store,
    )
