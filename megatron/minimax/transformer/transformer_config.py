# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""``TransformerConfig`` with the options MiniMax-M2 needs from megatron-core.

On stock megatron-core 0.19 this subclass adds two fields to
``megatron.core.transformer.TransformerConfig``. The fields, their docstrings and the checks in
``__post_init__`` are the source of the native patch series (``tools/upstream/make_native.py``
lifts them into megatron-core's ``TransformerConfig``). Where megatron-core already declares the
fields (a tree patched by that series), ``TransformerConfig`` here *is* megatron-core's class.
"""

from dataclasses import dataclass
from typing import Literal

from megatron.core.transformer.transformer_config import TransformerConfig as MCoreTransformerConfig

from megatron.minimax.native_core import megatron_core_is_native


@dataclass
class TransformerConfig(MCoreTransformerConfig):
    """Megatron-core ``TransformerConfig`` plus ``qk_layernorm_scope`` and
    ``moe_router_keep_in_fp32``."""

    qk_layernorm_scope: Literal["head", "layer"] = "head"
    """Which features one QK norm statistic covers when ``qk_layernorm`` is set.
    'head': one norm per attention head over ``kv_channels`` features (the default).
    'layer': one RMSNorm over all heads of a layer's projected query (num_attention_heads *
    kv_channels features) and one over its projected key (num_query_groups * kv_channels), before
    RoPE, as in MiniMax-M2 (qk_norm_type 'per_layer') and OLMo-2. Under tensor parallelism each rank
    keeps its own heads and only a per-token sum of squares crosses ranks."""

    moe_router_keep_in_fp32: bool = False
    """Keep the MoE router's gate weight (and bias) in fp32 when the model is bf16/fp16: they are
    not cast to params_dtype, Float16Module leaves them alone, the gating GEMM takes fp32 operands,
    and the weight gets an fp32 gradient, optimizer update and checkpoint entry. Requires
    moe_router_dtype='fp32'. A model released with an fp32 gate (MiniMax-M2) then trains and routes
    as it is served."""

    def __post_init__(self):
        super().__post_init__()
        if self.qk_layernorm_scope not in ("head", "layer"):
            raise ValueError(
                f"qk_layernorm_scope must be 'head' or 'layer', got {self.qk_layernorm_scope!r}."
            )
        if self.qk_layernorm_scope == "layer":
            self._validate_layer_scope_qk_layernorm()
        if self.moe_router_keep_in_fp32 and self.moe_router_dtype != "fp32":
            raise ValueError(
                "moe_router_keep_in_fp32 needs moe_router_dtype='fp32' (the gating GEMM then runs "
                f"on fp32 operands), got moe_router_dtype={self.moe_router_dtype!r}."
            )

    def _validate_layer_scope_qk_layernorm(self):
        """Checks of ``qk_layernorm_scope='layer'`` against the rest of the config."""
        if not self.qk_layernorm:
            raise ValueError("qk_layernorm_scope='layer' requires qk_layernorm=True.")
        if self.qk_l2_norm:
            raise ValueError("qk_layernorm_scope='layer' cannot be combined with qk_l2_norm=True.")
        if self.normalization != "RMSNorm":
            raise ValueError(
                "qk_layernorm_scope='layer' is an RMSNorm; normalization must be 'RMSNorm', "
                f"got {self.normalization!r}."
            )
        if self.layernorm_zero_centered_gamma:
            raise ValueError(
                "qk_layernorm_scope='layer' uses a plain weight (y = w * x / rms(x)); "
                "layernorm_zero_centered_gamma must be False."
            )
        if self.multi_latent_attention:
            raise ValueError(
                "qk_layernorm_scope='layer' applies to standard attention, not to "
                "multi_latent_attention."
            )
        tp = self.tensor_model_parallel_size
        groups = self.num_query_groups or self.num_attention_heads
        if self.num_attention_heads % tp != 0:
            raise ValueError(
                f"qk_layernorm_scope='layer' needs num_attention_heads ({self.num_attention_heads}) "
                f"divisible by tensor_model_parallel_size ({tp})."
            )
        if groups % tp != 0:
            # With fewer KV heads than TP ranks Megatron replicates K heads across ranks, and the
            # key statistic would count each replica; we keep every K feature on exactly one rank.
            raise ValueError(
                f"qk_layernorm_scope='layer' needs num_query_groups ({groups}) divisible by "
                f"tensor_model_parallel_size ({tp})."
            )


if megatron_core_is_native():
    # megatron-core declares these fields and checks itself: use its class, so that core's
    # SelfAttention, router and argument factory see exactly the class they were written for.
    TransformerConfig = MCoreTransformerConfig  # noqa: F811
