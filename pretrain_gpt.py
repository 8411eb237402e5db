# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Pretrain or fine-tune GPT models, MiniMax-M2 included, with megatron-training.

Takes every stock Megatron flag, plus this package's ``TransformerConfig`` fields
(``--qk-layernorm-scope``), ``--modelopt-recipe`` (quantization-aware training) and
``--load-hf-dir`` (start from a released HF checkpoint, FP8 or BF16, without converting it
first). For MiniMax-M2 the architecture flags come from
``tools/minimax_m2_args.py --hf-config config.json``.
"""

import time

_PROGRAM_START = time.time()

from megatron.minimax.training import gpt_model_config_from_args
from megatron.minimax.training.entry_point import run_pretrain

if __name__ == "__main__":
    run_pretrain("pretrain_gpt.py", gpt_model_config_from_args, _PROGRAM_START)
