# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""MiniMax-M2 ``HybridStack`` specs, local and Transformer Engine.

In a ``HybridModel`` each pattern symbol is one layer: a MiniMax-M2 decoder layer is ``*E``, an
attention layer (input norm, self-attention with the full-dimension QK norm) followed by an MoE
layer (pre-MLP norm, the fp32 router, the experts). Both are cut from the GPT decoder layer spec of
:func:`~megatron.minimax.models.gpt.gpt_layer_specs.get_gpt_layer_spec`, so a hybrid model and a
GPT model hold the same modules with the same weights and give bit-identical logits; their
checkpoint keys carry the same names after the layer index (GPT layer i is hybrid layers 2i and
2i+1; ``decoder.final_layernorm`` is ``decoder.final_norm``), which is what megatron-core's
load-time translation of GPT checkpoints (``gpt_checkpoint_interop``) relies on.

megatron-core 0.19's own hybrid specs are Transformer-Engine-only and set no q/k norm. The final
norm comes from the spec (:mod:`~megatron.minimax.models.hybrid.hybrid_block`); MTP layers are
``/*E`` pattern suffixes built from the same attention and MoE layer specs.
"""

import dataclasses

from megatron.core.extensions.transformer_engine import TENorm
from megatron.core.transformer.multi_token_prediction import (
    MultiTokenPredictionBlock,
    MultiTokenPredictionBlockSubmodules,
    get_mtp_layer_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import (
    MoETransformerLayer,
    TransformerLayer,
    TransformerLayerSubmodules,
)

from megatron.minimax.models.gpt.gpt_layer_specs import get_gpt_layer_spec
from megatron.minimax.models.hybrid.hybrid_block import HybridStack, HybridStackSubmodules
from megatron.minimax.transformer.rms_norm import RMSNorm


def _final_norm(config: TransformerConfig, use_transformer_engine: bool):
    if use_transformer_engine:
        return TENorm
    if config.normalization != "RMSNorm":
        raise ValueError(
            f"the local hybrid spec implements RMSNorm only, got {config.normalization!r}"
        )
    return RMSNorm


def _mtp_block_spec(config: TransformerConfig, use_transformer_engine: bool) -> ModuleSpec:
    """One MTP layer spec (megatron-core repeats it per depth); its inner layers come from the
    pattern's ``/*E`` suffix and the stack's attention and MoE layer specs."""
    layer_spec = get_mtp_layer_spec(None, use_transformer_engine)
    if not use_transformer_engine:
        norm = _final_norm(config, use_transformer_engine)
        layer_spec = dataclasses.replace(
            layer_spec,
            submodules=dataclasses.replace(
                layer_spec.submodules, enorm=norm, hnorm=norm, layer_norm=norm
            ),
        )
    return ModuleSpec(
        module=MultiTokenPredictionBlock,
        submodules=MultiTokenPredictionBlockSubmodules(layer_specs=[layer_spec]),
    )


def get_minimax_m2_hybrid_stack_spec(
    config: TransformerConfig, use_transformer_engine: bool
) -> ModuleSpec:
    """The ``HybridStack`` spec of MiniMax-M2 for ``HybridModel(hybrid_stack_spec=...)``.

    Args:
        config: the model config (``qk_layernorm_scope='layer'``, ``moe_router_keep_in_fp32``
            and the rest of :func:`~megatron.minimax.models.minimax_m2.hf_config.
            minimax_m2_config_from_hf`).
        use_transformer_engine: Transformer Engine modules (GPU) or local PyTorch modules.
    """
    gpt_layer = get_gpt_layer_spec(config, use_transformer_engine).submodules
    keys_map = dict(gpt_layer.sharded_state_dict_keys_map)
    attention_layer = ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=gpt_layer.input_layernorm,
            self_attention=gpt_layer.self_attention,
            self_attn_bda=gpt_layer.self_attn_bda,
            sharded_state_dict_keys_map=keys_map,
        ),
    )
    moe_layer = ModuleSpec(
        module=MoETransformerLayer,
        submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=gpt_layer.pre_mlp_layernorm,
            mlp=gpt_layer.mlp,
            mlp_bda=gpt_layer.mlp_bda,
            sharded_state_dict_keys_map=keys_map,
        ),
    )
    return ModuleSpec(
        module=HybridStack,
        submodules=HybridStackSubmodules(
            attention_layer=attention_layer,
            moe_layer=moe_layer,
            final_norm=_final_norm(config, use_transformer_engine),
            mtp_block_spec=_mtp_block_spec(config, use_transformer_engine),
        ),
    )
