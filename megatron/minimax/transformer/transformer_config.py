# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""``TransformerConfig`` with the full-dimension QK-norm option.

This subclass is a drop-in for ``megatron.core.transformer.TransformerConfig``. Upstream, its one
field and its checks would be added to that class directly.
"""

from dataclasses import dataclass
from typing import Literal

from megatron.core.transformer.transformer_config import (
    TransformerConfig as MCoreTransformerConfig,
)


@dataclass
class TransformerConfig(MCoreTransformerConfig):
    """Megatron-core ``TransformerConfig`` plus ``qk_layernorm_scope``."""

    qk_layernorm_scope: Literal["head", "layer"] = "head"
    """Which features one QK norm statistic covers when ``qk_layernorm`` is set.
    'head': one norm per attention head over ``kv_channels`` features (stock Megatron).
    'layer': one RMSNorm over all heads of a layer's projected query (num_attention_heads *
    kv_channels features) and one over its projected key (num_query_groups * kv_channels), before
    RoPE, as in MiniMax-M2 (qk_norm_type 'per_layer') and OLMo-2. Under tensor parallelism each rank
    keeps its own heads and only a per-token sum of squares crosses ranks."""

    def __post_init__(self):
        super().__post_init__()
        if self.qk_layernorm_scope not in ("head", "layer"):
            raise ValueError(
                f"qk_layernorm_scope must be 'head' or 'layer', got {self.qk_layernorm_scope!r}."
            )
        if self.qk_layernorm_scope == "layer":
            self._validate_layer_scope_qk_layernorm()

    def _validate_layer_scope_qk_layernorm(self):
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
