# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Training entry-point pieces for megatron-training's ``pretrain()``: our flags, the configs and
model builders that carry them (GPTModel and HybridModel), the step functions, and the
mixed-precision optimizer fix."""

from megatron.minimax.training.arguments import (
    add_minimax_args,
    gpt_model_config_from_args,
    hybrid_model_config_from_args,
    transformer_config_from_args,
)
from megatron.minimax.training.hybrid_model_builder import HybridModelBuilder, HybridModelConfig
from megatron.minimax.training.model_builder import GPTModelBuilder, GPTModelConfig
from megatron.minimax.training.optimizer import (
    Float16OptimizerWithFloat16Params,
    use_fp32_param_safe_float16_optimizer,
)

__all__ = [
    "Float16OptimizerWithFloat16Params",
    "GPTModelBuilder",
    "GPTModelConfig",
    "HybridModelBuilder",
    "HybridModelConfig",
    "add_minimax_args",
    "gpt_model_config_from_args",
    "hybrid_model_config_from_args",
    "transformer_config_from_args",
    "use_fp32_param_safe_float16_optimizer",
]
