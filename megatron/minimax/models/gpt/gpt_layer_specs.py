# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""GPT decoder and MTP block specs that honour this package's config options.

These wrap megatron-core's ``get_gpt_decoder_block_spec``/``get_gpt_mtp_block_spec`` and swap
only the submodules that an option changes. On stock megatron-core:

* ``qk_layernorm_scope='layer'``: ``q_layernorm``/``k_layernorm`` become
  :class:`~megatron.minimax.transformer.full_dim_qk_norm.FullDimQKRMSNorm` builders.
* ``moe_router_keep_in_fp32``: the MoE router becomes
  :class:`~megatron.minimax.transformer.moe.fp32_router.FP32TopKRouter`, whose gate stays fp32.

Where megatron-core has these options natively (:mod:`megatron.minimax.native_core`), its
``SelfAttention`` and router implement them and these two swaps are not made. Always:

* local (non-TE) backend with RMSNorm: layer, final and MTP norms become the sequence-parallel
  capable :class:`~megatron.minimax.transformer.rms_norm.RMSNorm` (megatron-core's local
  ``WrappedTorchNorm`` refuses sequence parallelism).
"""

import dataclasses
import functools
from typing import Optional

from megatron.core.models.gpt import gpt_layer_specs as mcore_specs
from megatron.core.transformer.multi_token_prediction import MultiTokenPredictionBlockSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron.minimax.native_core import megatron_core_is_native
from megatron.minimax.transformer.full_dim_qk_norm import FullDimKRMSNorm, FullDimQRMSNorm
from megatron.minimax.transformer.moe.fp32_router import FP32TopKRouter
from megatron.minimax.transformer.rms_norm import RMSNorm


def _swaps_in_full_dim_qk_norm(config: TransformerConfig) -> bool:
    return (
        config.qk_layernorm
        and getattr(config, "qk_layernorm_scope", "head") == "layer"
        and not megatron_core_is_native()
    )


def _swaps_in_fp32_router(config: TransformerConfig) -> bool:
    return (
        bool(config.num_moe_experts)
        and getattr(config, "moe_router_keep_in_fp32", False)
        and not megatron_core_is_native()
    )


def _uses_local_rms_norm(config: TransformerConfig, use_transformer_engine: bool) -> bool:
    return not use_transformer_engine and config.normalization == "RMSNorm"


def _with_fp32_router(mlp):
    """Return the MoE builder ``mlp`` with its router replaced by ``FP32TopKRouter``."""
    if not isinstance(mlp, functools.partial):
        return mlp
    submodules = mlp.keywords.get("submodules")
    if submodules is None or not hasattr(submodules, "router"):
        return mlp
    keywords = {
        **mlp.keywords,
        "submodules": dataclasses.replace(submodules, router=FP32TopKRouter),
    }
    return functools.partial(mlp.func, *mlp.args, **keywords)


def _customize_layer_spec(
    layer_spec: ModuleSpec, config: TransformerConfig, use_transformer_engine: bool
) -> ModuleSpec:
    submodules = layer_spec.submodules
    changes = {}

    if _swaps_in_full_dim_qk_norm(config):
        attention = submodules.self_attention
        attention_submodules = dataclasses.replace(
            attention.submodules, q_layernorm=FullDimQRMSNorm, k_layernorm=FullDimKRMSNorm
        )
        changes["self_attention"] = dataclasses.replace(attention, submodules=attention_submodules)

    if _swaps_in_fp32_router(config):
        changes["mlp"] = _with_fp32_router(submodules.mlp)

    if _uses_local_rms_norm(config, use_transformer_engine):
        changes["input_layernorm"] = RMSNorm
        changes["pre_mlp_layernorm"] = RMSNorm

    if not changes:
        return layer_spec
    return dataclasses.replace(layer_spec, submodules=dataclasses.replace(submodules, **changes))


def get_gpt_layer_spec(config: TransformerConfig, use_transformer_engine: bool) -> ModuleSpec:
    """The decoder layer spec of an MoE layer (every MiniMax-M2 layer), with the config's options
    applied as in :func:`get_gpt_decoder_block_spec`; for models that lay layers out themselves
    (the hybrid stack)."""
    layer_specs = mcore_specs.get_gpt_decoder_layer_specs(
        config,
        use_transformer_engine=use_transformer_engine,
        normalization=config.normalization,
        qk_l2_norm=config.qk_l2_norm,
    )
    moe = [spec for spec in layer_specs if _is_moe_layer_spec(spec)]
    if not moe:
        raise ValueError("the config has no MoE layer (num_moe_experts / moe_layer_freq)")
    return _customize_layer_spec(moe[0], config, use_transformer_engine)


def _is_moe_layer_spec(layer_spec: ModuleSpec) -> bool:
    mlp = layer_spec.submodules.mlp
    submodules = mlp.keywords.get("submodules") if isinstance(mlp, functools.partial) else None
    return hasattr(submodules, "router")


def get_gpt_decoder_block_spec(
    config: TransformerConfig,
    use_transformer_engine: bool,
    vp_stage: Optional[int] = None,
    pp_rank: Optional[int] = None,
) -> TransformerBlockSubmodules:
    """Decoder block spec for this pipeline stage, with the config's native options applied.

    Args:
        config: the model config (``megatron.minimax.TransformerConfig`` or megatron-core's).
        use_transformer_engine: Transformer Engine modules (GPU) or local PyTorch modules.
        vp_stage: virtual pipeline stage.
        pp_rank: pipeline rank (defaults to this process's).
    """
    block_spec = mcore_specs.get_gpt_decoder_block_spec(
        config,
        use_transformer_engine=use_transformer_engine,
        normalization=config.normalization,
        qk_l2_norm=config.qk_l2_norm,
        vp_stage=vp_stage,
        pp_rank=pp_rank,
    )
    # Layer specs are shared objects (every MoE layer uses the same one); customise each once.
    customized = {}
    layer_specs = []
    for layer_spec in block_spec.layer_specs:
        if id(layer_spec) not in customized:
            customized[id(layer_spec)] = _customize_layer_spec(
                layer_spec, config, use_transformer_engine
            )
        layer_specs.append(customized[id(layer_spec)])
    changes = {"layer_specs": layer_specs}
    if _uses_local_rms_norm(config, use_transformer_engine):
        changes["layer_norm"] = RMSNorm
    return dataclasses.replace(block_spec, **changes)


def get_gpt_mtp_block_spec(
    config: TransformerConfig,
    block_spec: TransformerBlockSubmodules,
    use_transformer_engine: bool,
    vp_stage: Optional[int] = None,
    pp_rank: Optional[int] = None,
) -> Optional[MultiTokenPredictionBlockSubmodules]:
    """MTP block spec whose transformer layer is the decoder's last layer spec (so MTP layers use
    the same QK norm and router as the decoder), or None when this stage has no MTP layers.

    ``block_spec`` must come from :func:`get_gpt_decoder_block_spec` for the same stage;
    megatron-training's default MTP path rebuilds stock layer specs and would drop the options.
    """
    mtp_spec = mcore_specs.get_gpt_mtp_block_spec(
        config, block_spec, use_transformer_engine, vp_stage=vp_stage, pp_rank=pp_rank
    )
    if mtp_spec is None or not _uses_local_rms_norm(config, use_transformer_engine):
        return mtp_spec
    layer_specs = []
    for layer_spec in mtp_spec.layer_specs:
        submodules = dataclasses.replace(
            layer_spec.submodules, enorm=RMSNorm, hnorm=RMSNorm, layer_norm=RMSNorm
        )
        layer_specs.append(dataclasses.replace(layer_spec, submodules=submodules))
    return dataclasses.replace(mtp_spec, layer_specs=layer_specs)
