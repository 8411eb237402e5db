# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""MiniMax-M2 decoder specs in the signatures that RL frameworks and megatron-training call.

Two conventions exist for ``--spec <module> <function>``:

* slime and miles (``slime/backends/megatron_utils/model_provider.py``, checked against the
  public source): ``import_module(args.spec)`` and, when the result is callable,
  ``fn(args, config, vp_stage)`` with the parsed argparse namespace, the megatron-core
  ``TransformerConfig`` built by ``core_transformer_config_from_args(args)`` and the virtual
  pipeline stage (None without VPP). The result is passed to ``GPTModel`` as the decoder spec and,
  when ``--mtp-num-layers`` is set, to megatron-core's ``get_gpt_mtp_block_spec``. Use
  :func:`get_minimax_m2_spec`.
* megatron-training's ``GPTModelBuilder`` (0.19): ``fn(model_config, vp_stage=vp_stage)`` with
  the ``GPTModelConfig`` (its ``transformer`` field is the ``TransformerConfig``). Use
  :func:`minimax_m2_block_spec`.

Both return the block spec of :func:`megatron.minimax.models.gpt.gpt_layer_specs.
get_gpt_decoder_block_spec` with the full-dimension QK norm (``qk_layernorm_scope='layer'``)
and, with ``moe_router_dtype='fp32'``, the fp32 router (``moe_router_keep_in_fp32``).

RL frameworks build a stock megatron-core ``TransformerConfig``, which has neither field (and
their argument parsers have no ``--qk-layernorm-scope`` flag). These entry points are MiniMax-M2
specific, so they build the spec as if ``qk_layernorm_scope`` were 'layer', and
``moe_router_keep_in_fp32`` were set whenever ``moe_router_dtype`` is 'fp32', after the same
validity checks as :class:`~megatron.minimax.transformer.transformer_config.TransformerConfig`.
With a megatron-core that has the fields natively, the config carries them and is used as is. The modules need nothing else from the config: ``--qk-layernorm`` keeps the
norms' names (``q_layernorm``/``k_layernorm``) under Megatron's TP gradient-reduction rule.

MTP: a block spec carries one spec per decoder layer; megatron-core's ``get_gpt_mtp_block_spec``
builds the MTP layer from the last one, so MTP layers get the same QK norm and router (slime and
miles call it that way). megatron-training's stock builder instead rebuilds stock layer specs for
MTP, so :func:`minimax_m2_block_spec` refuses MTP with a builder other than megatron.minimax's.
The released checkpoints ship no MTP weights.
"""

import copy
import logging
from typing import Any, Optional

from megatron.core.transformer.multi_token_prediction import get_mtp_num_layers_to_build
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig as MCoreTransformerConfig
from megatron.core.utils import log_single_rank

from megatron.minimax.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.minimax.transformer.transformer_config import TransformerConfig

try:
    import transformer_engine  # noqa: F401  pylint: disable=unused-import

    HAVE_TE = True
except ImportError:
    HAVE_TE = False

logger = logging.getLogger(__name__)

MINIMAX_BUILDER = "megatron.minimax.training.model_builder.GPTModelBuilder"
"""megatron-training ``GPTModelConfig.builder`` that builds MTP layers from our decoder spec."""


def _minimax_m2_config(config: MCoreTransformerConfig) -> MCoreTransformerConfig:
    """``config`` with ``qk_layernorm_scope='layer'``, checked for the MiniMax-M2 architecture.

    A stock megatron-core config is shallow-copied (the caller's object is left alone) and given
    the fields as plain attributes, which is all the spec getters read: ``qk_layernorm_scope``
    'layer', and ``moe_router_keep_in_fp32`` when ``moe_router_dtype`` is 'fp32'.

    Raises:
        ValueError: if the config cannot describe MiniMax-M2.
    """
    if isinstance(config, TransformerConfig):
        if config.qk_layernorm_scope != "layer":
            raise ValueError(
                f"qk_layernorm_scope={config.qk_layernorm_scope!r}, but MiniMax-M2 normalises "
                "all heads of q and k together: pass --qk-layernorm-scope layer."
            )
        scoped = config
    else:
        scoped = copy.copy(config)
        scoped.qk_layernorm_scope = "layer"
        scoped.moe_router_keep_in_fp32 = scoped.moe_router_dtype == "fp32"
        # The same checks our TransformerConfig runs in __post_init__ for 'layer'.
        TransformerConfig._validate_layer_scope_qk_layernorm(scoped)

    if not scoped.num_moe_experts:
        raise ValueError("MiniMax-M2 is a MoE model: --num-experts is not set.")
    if scoped.moe_router_score_function != "sigmoid" or not scoped.moe_router_enable_expert_bias:
        raise ValueError(
            "MiniMax-M2 routes with sigmoid scores plus e_score_correction_bias: pass "
            "--moe-router-score-function sigmoid --moe-router-enable-expert-bias (got "
            f"score function {scoped.moe_router_score_function!r}, expert bias "
            f"{scoped.moe_router_enable_expert_bias})."
        )
    if scoped.moe_router_dtype != "fp32":
        log_single_rank(
            logger,
            logging.WARNING,
            "moe_router_dtype=%r: the router gate runs in the model dtype, while the released "
            "checkpoint and the inference engines route in fp32 (near-tied experts can differ "
            "between rollout and training). Pass --moe-router-dtype fp32.",
            scoped.moe_router_dtype,
        )
    return scoped


def _warn_if_expert_bias_updates(config: MCoreTransformerConfig) -> None:
    # RL only: in pre-training the per-step update is the point of the bias.
    if config.moe_router_bias_update_rate:
        log_single_rank(
            logger,
            logging.WARNING,
            "moe_router_bias_update_rate=%g: the expert bias changes every training step, so "
            "routing drifts from the rollout engine unless e_score_correction_bias is pushed with "
            "every weight update. Pass --moe-router-bias-update-rate 0 to keep it frozen (see "
            "megatron.minimax.rl.expert_bias).",
            config.moe_router_bias_update_rate,
        )


def _check_mtp_stage(
    config: MCoreTransformerConfig,
    block_spec: TransformerBlockSubmodules,
    vp_stage: Optional[int],
    pp_rank: Optional[int],
) -> None:
    if not config.mtp_num_layers or block_spec.layer_specs:
        return
    if get_mtp_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank):
        # megatron-core's get_gpt_mtp_block_spec would take layer_specs[-1] of an empty list.
        raise ValueError(
            "this pipeline stage holds MTP layers but no decoder layer, so the MTP layer cannot "
            "copy the decoder's layer spec; put at least one decoder layer on the MTP stage."
        )


def minimax_m2_decoder_block_spec(
    config: MCoreTransformerConfig,
    use_transformer_engine: bool,
    vp_stage: Optional[int] = None,
    pp_rank: Optional[int] = None,
) -> TransformerBlockSubmodules:
    """MiniMax-M2 decoder block spec of this pipeline stage, from any ``TransformerConfig``.

    Args:
        config: megatron-core's or megatron.minimax's ``TransformerConfig``.
        use_transformer_engine: Transformer Engine modules (GPU) or local PyTorch modules.
        vp_stage: virtual pipeline stage.
        pp_rank: pipeline rank (default: this process's).

    Raises:
        ValueError: if ``config`` does not describe MiniMax-M2, or Transformer Engine is asked
            for but not importable.
    """
    if use_transformer_engine and not HAVE_TE:
        raise ValueError(
            "transformer_impl='transformer_engine' but Transformer Engine is not importable; "
            "use --transformer-impl local."
        )
    scoped = _minimax_m2_config(config)
    block_spec = get_gpt_decoder_block_spec(
        scoped, use_transformer_engine, vp_stage=vp_stage, pp_rank=pp_rank
    )
    _check_mtp_stage(scoped, block_spec, vp_stage, pp_rank)
    return block_spec


def get_minimax_m2_spec(
    args: Any, config: MCoreTransformerConfig, vp_stage: Optional[int] = None
) -> TransformerBlockSubmodules:
    """slime/miles ``--spec megatron.minimax.rl.spec get_minimax_m2_spec`` entry point.

    Args:
        args: the framework's parsed arguments; ``args.transformer_impl`` picks the backend, as
            the framework's own model provider does.
        config: the megatron-core ``TransformerConfig`` built from ``args``.
        vp_stage: virtual pipeline stage (None without VPP).

    Returns:
        The decoder block spec; the framework derives the MTP block spec from it.
    """
    transformer_impl = getattr(args, "transformer_impl", config.transformer_impl)
    _warn_if_expert_bias_updates(config)
    return minimax_m2_decoder_block_spec(
        config, transformer_impl == "transformer_engine", vp_stage=vp_stage
    )


def minimax_m2_block_spec(model_config: Any, vp_stage: Optional[int] = None):
    """megatron-training ``--spec megatron.minimax.rl.spec minimax_m2_block_spec`` entry point.

    Args:
        model_config: the ``GPTModelConfig`` (or a bare ``TransformerConfig``).
        vp_stage: virtual pipeline stage.

    Raises:
        ValueError: with MTP layers and a builder that rebuilds stock MTP layer specs.
    """
    transformer_config = getattr(model_config, "transformer", model_config)
    builder = getattr(type(model_config), "builder", None)
    if transformer_config.mtp_num_layers and builder not in (None, MINIMAX_BUILDER):
        raise ValueError(
            f"MTP layers with builder {builder}: it rebuilds stock MTP layer specs without the "
            "full-dimension QK norm; use megatron.minimax's pretrain_gpt.py."
        )
    return minimax_m2_decoder_block_spec(
        transformer_config,
        transformer_config.transformer_impl == "transformer_engine",
        vp_stage=vp_stage,
    )
