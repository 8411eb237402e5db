# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""MiniMax-M2 support for Megatron-core.

The model's features are Megatron options: ``TransformerConfig.qk_layernorm_scope`` (full-dimension
QK RMSNorm, exact under tensor parallelism), an fp32 MoE router, and the sigmoid-router-with-bias
and partial-RoPE options that megatron-core already has, wired to MiniMax-M2 semantics.
"""

__all__ = ["TransformerConfig"]


def __getattr__(name):
    # Imported on first use: megatron.core takes seconds to import, and the checkpoint readers
    # and command-line tools should answer --help and reject bad input without it.
    if name == "TransformerConfig":
        from megatron.minimax.transformer.transformer_config import TransformerConfig

        return TransformerConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
