# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""RL integration surface: the ``--spec`` entry points RL frameworks call, and the expert-bias
policy (frozen during RL unless you opt in; see :mod:`megatron.minimax.rl.expert_bias`).

The matching train/inference log-probability check is ``tools/score_logprobs.py``
(:mod:`megatron.minimax.models.minimax_m2.logprobs`).
"""

from megatron.minimax.rl.expert_bias import (
    expert_bias_hf_tensors,
    freeze_expert_bias,
    is_expert_bias_frozen,
)
from megatron.minimax.rl.spec import (
    get_minimax_m2_spec,
    minimax_m2_block_spec,
    minimax_m2_decoder_block_spec,
)

__all__ = [
    "expert_bias_hf_tensors",
    "freeze_expert_bias",
    "get_minimax_m2_spec",
    "is_expert_bias_frozen",
    "minimax_m2_block_spec",
    "minimax_m2_decoder_block_spec",
]
