# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Training entry-point pieces for megatron-training's ``pretrain()``: our flags, the config and
model builder that carry them, the GPT step functions, and the mixed-precision optimizer fix."""

from megatron.minimax.training.arguments import (
    add_minimax_args,
    gpt_model_config_from_args,
    transformer_config_from_args,
)
from megatron.minimax.training.model_builder import GPTModelBuilder, GPTModelConfig
from megatron.minimax.training.optimizer import (
    Float16OptimizerWithFloat16Params,
    use_fp32_param_safe_float16_optimizer,
)

__all__ = [
    "Float16OptimizerWithFloat16Params",
    "GPTModelBuilder",
    "GPTModelConfig",
    "add_minimax_args",
    "gpt_model_config_from_args",
    "transformer_config_from_args",
    "use_fp32_param_safe_float16_optimizer",
]
