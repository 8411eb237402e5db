# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""MiniMax-M2 support for Megatron-core.

The model's features are Megatron options: ``TransformerConfig.qk_layernorm_scope`` (full-dimension
QK RMSNorm, exact under tensor parallelism), an fp32 MoE router, and the sigmoid-router-with-bias
and partial-RoPE options that megatron-core already has, wired to MiniMax-M2 semantics.
"""

from megatron.minimax.transformer.transformer_config import TransformerConfig

__all__ = ["TransformerConfig"]
