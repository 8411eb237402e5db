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

import time

_PROGRAM_START = time.time()

from megatron.minimax.training import hybrid_model_config_from_args
from megatron.minimax.training.entry_point import run_pretrain

if __name__ == "__main__":
    run_pretrain("pretrain_hybrid.py", hybrid_model_config_from_args, _PROGRAM_START)
