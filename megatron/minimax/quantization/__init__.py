# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Quantized serving of MiniMax-M2 with nvidia-modelopt: NVFP4 and FP8, post-training (``ptq``)
and quantization-aware training (``qat``); see ``docs/quantization.md``.

Only the formats and recipes are imported here; the modules that use modelopt (8 s to import)
are imported where they are used: ``calibration``, ``quant_experts``, ``nvfp4_cpu_backend``,
``checkpoint_state``, ``hf_export``, ``hf_writer``, ``ptq``, ``qat``.
"""

from megatron.minimax.quantization.calibration_data import CalibrationData, load_calibration_tokens
from megatron.minimax.quantization.fp8_per_tensor import quantize_fp8_per_tensor
from megatron.minimax.quantization.nvfp4_format import NVFP4Tensor, dequantize_nvfp4, quantize_nvfp4
from megatron.minimax.quantization.recipes import RECIPES, QuantizationRecipe, get_recipe

__all__ = [
    "RECIPES",
    "CalibrationData",
    "NVFP4Tensor",
    "QuantizationRecipe",
    "dequantize_nvfp4",
    "get_recipe",
    "load_calibration_tokens",
    "quantize_fp8_per_tensor",
    "quantize_nvfp4",
]
