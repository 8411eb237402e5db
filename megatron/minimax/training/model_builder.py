# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The ``GPTModelConfig``/``GPTModelBuilder`` pair that ``pretrain()`` uses to build our GPT models.

megatron-training builds the model through ``model_cfg.get_builder_cls()``. Its stock
``GPTModelBuilder`` picks megatron-core's layer specs and, for MTP, rebuilds the MTP layer from the
stock decoder layer specs, so a config option implemented in the spec (``qk_layernorm_scope``,
the fp32 router, the sequence-parallel local RMSNorm) would be missing from MTP layers and, without
``--spec``, from the decoder too. Our builder takes both specs from
:mod:`megatron.minimax.models.gpt.gpt_layer_specs`: the MTP layer is the decoder's last layer spec.
Everything else (vocabulary padding, pre/post process, wrapping with ``Float16Module`` and DDP) is
megatron-training's.
"""

import dataclasses
import inspect
from dataclasses import dataclass
from typing import ClassVar, List, Optional, Tuple, Union

from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.pipeline_parallel.utils import (
    is_pp_first_stage,
    is_pp_last_stage,
    is_vp_first_stage,
    is_vp_last_stage,
)
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.heterogeneous.heterogeneous_config import (
    HeterogeneousTransformerConfig,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.utils import get_pg_rank
from megatron.training.models.gpt import GPTModelBuilder as MCoreGPTModelBuilder
from megatron.training.models.gpt import GPTModelConfig as MCoreGPTModelConfig
from megatron.training.vocab_utils import calculate_padded_vocab_size

from megatron.minimax.models.gpt.gpt_layer_specs import (
    get_gpt_decoder_block_spec,
    get_gpt_mtp_block_spec,
)
from megatron.minimax.native_core import log_megatron_core_path, megatron_core_is_native
from megatron.minimax.transformer.full_dim_qk_norm import FullDimKRMSNorm, FullDimQRMSNorm

try:
    import transformer_engine  # noqa: F401  pylint: disable=unused-import

    HAVE_TE = True
except ImportError:
    HAVE_TE = False

LayerOrBlockSpec = Union[ModuleSpec, TransformerBlockSubmodules]


@dataclass(kw_only=True)
class GPTModelConfig(MCoreGPTModelConfig):
    """megatron-training's ``GPTModelConfig``, built by :class:`GPTModelBuilder`."""

    builder: ClassVar[str] = "megatron.minimax.training.model_builder.GPTModelBuilder"


def _layer_specs(spec: LayerOrBlockSpec) -> List[ModuleSpec]:
    return list(spec.layer_specs) if isinstance(spec, TransformerBlockSubmodules) else [spec]


def _spec_carries_layer_scope_qk_norm(transformer_config) -> bool:
    """True when the full-dimension QK norm must come from the spec (stock megatron-core)."""
    return (
        transformer_config.qk_layernorm
        and getattr(transformer_config, "qk_layernorm_scope", "head") == "layer"
        and not megatron_core_is_native()
    )


def _uses_spec_level_options(transformer_config) -> bool:
    """True when the config sets an option that only our specs implement (stock megatron-core;
    a native megatron-core implements them in SelfAttention and the router, for every spec)."""
    return _spec_carries_layer_scope_qk_norm(transformer_config) or (
        transformer_config.num_moe_experts is not None
        and getattr(transformer_config, "moe_router_keep_in_fp32", False)
        and not megatron_core_is_native()
    )


def _check_layer_scope_qk_norm(spec: LayerOrBlockSpec, what: str) -> None:
    for layer_spec in _layer_specs(spec):
        attention = layer_spec.submodules.self_attention.submodules
        if (attention.q_layernorm, attention.k_layernorm) != (FullDimQRMSNorm, FullDimKRMSNorm):
            raise ValueError(
                f"qk_layernorm_scope='layer' but the {what} uses q/k norms "
                f"{attention.q_layernorm!r}/{attention.k_layernorm!r}; build it with "
                "megatron.minimax.models.gpt.gpt_layer_specs."
            )


def with_local_core_attention(spec: LayerOrBlockSpec) -> LayerOrBlockSpec:
    """``--attention-backend local``: megatron-core's ``DotProductAttention`` in every layer.

    Returns new spec objects; layer specs are shared between layers and between builds.
    """

    def swap(layer_spec: ModuleSpec) -> ModuleSpec:
        attention = layer_spec.submodules.self_attention
        attention = dataclasses.replace(
            attention,
            submodules=dataclasses.replace(
                attention.submodules, core_attention=DotProductAttention
            ),
        )
        return dataclasses.replace(
            layer_spec,
            submodules=dataclasses.replace(layer_spec.submodules, self_attention=attention),
        )

    if isinstance(spec, TransformerBlockSubmodules):
        swapped = {}
        for layer_spec in spec.layer_specs:
            swapped.setdefault(id(layer_spec), swap(layer_spec))
        return dataclasses.replace(
            spec, layer_specs=[swapped[id(layer_spec)] for layer_spec in spec.layer_specs]
        )
    return swap(spec)


def vocab_and_stage(
    model_cfg,
    pg_collection: ProcessGroupCollection,
    pre_process: Optional[bool],
    post_process: Optional[bool],
    vp_stage: Optional[int],
) -> Tuple[int, bool, bool]:
    """What megatron-training's model builders derive before building a stage: the (padded)
    vocabulary size, and whether this (virtual) pipeline stage holds the embedding and the output
    layer where the caller left it open."""
    assert model_cfg.vocab_size is not None, "vocab_size must be set before build_model()"
    transformer_cfg = model_cfg.transformer
    vocab_size = model_cfg.vocab_size
    if model_cfg.should_pad_vocab:
        vocab_size = calculate_padded_vocab_size(
            vocab_size,
            model_cfg.make_vocab_size_divisible_by,
            transformer_cfg.tensor_model_parallel_size,
        )
    vp_size = transformer_cfg.virtual_pipeline_model_parallel_size
    if pre_process is None:
        pre_process = is_vp_first_stage(vp_stage, vp_size) and is_pp_first_stage(pg_collection.pp)
    if post_process is None:
        post_process = is_vp_last_stage(vp_stage, vp_size) and is_pp_last_stage(pg_collection.pp)
    return vocab_size, pre_process, post_process


class GPTModelBuilder(MCoreGPTModelBuilder):
    """Builds ``GPTModel`` stages with this package's decoder and MTP specs.

    Backend: Transformer Engine modules when ``transformer_impl == 'transformer_engine'`` (the
    training entry point resolves that to 'local' when TE is not importable), else local modules.
    A ``--spec`` (``GPTModelConfig.transformer_layer_spec``) still takes precedence for the decoder,
    as upstream, and its last layer then also defines the MTP layer; on stock megatron-core with
    ``qk_layernorm_scope='layer'`` it must use the full-dimension q/k norms, or the build fails.
    Configs that megatron-training routes to other spec families (heterogeneous layers,
    experimental attention variants, ModelOpt, ``inference_optimized``) are built by the stock
    builder; on stock megatron-core only when they set none of our options (a native megatron-core
    implements them for every spec).
    """

    def _use_transformer_engine(self) -> bool:
        transformer_impl = self._model_config.transformer.transformer_impl
        if transformer_impl == "transformer_engine" and not HAVE_TE:
            raise ValueError(
                "transformer_impl='transformer_engine' but Transformer Engine is not importable; "
                "use transformer_impl='local'."
            )
        return transformer_impl == "transformer_engine"

    def _is_stock_spec_family(self) -> bool:
        transformer_cfg = self._model_config.transformer
        return (
            transformer_cfg.transformer_impl == "inference_optimized"
            or self._model_config.restore_modelopt_state
            or transformer_cfg.experimental_attention_variant is not None
            or isinstance(transformer_cfg, HeterogeneousTransformerConfig)
        )

    def _decoder_spec(
        self, use_te: bool, vp_stage: Optional[int], pp_rank: int
    ) -> LayerOrBlockSpec:
        user_spec = self._model_config.transformer_layer_spec
        if user_spec is None:
            return get_gpt_decoder_block_spec(
                self._model_config.transformer, use_te, vp_stage=vp_stage, pp_rank=pp_rank
            )
        if isinstance(user_spec, ModuleSpec) or not callable(user_spec):
            return user_spec
        if "vp_stage" in inspect.signature(user_spec).parameters:
            return user_spec(self._model_config, vp_stage=vp_stage)
        return user_spec(self._model_config)

    def _mtp_spec(
        self, decoder_spec: LayerOrBlockSpec, use_te: bool, vp_stage: Optional[int], pp_rank: int
    ):
        transformer_cfg = self._model_config.transformer
        if not transformer_cfg.mtp_num_layers:
            return None
        if isinstance(decoder_spec, TransformerBlockSubmodules) and not decoder_spec.layer_specs:
            # A stage with MTP but no decoder layer (custom pipeline layouts): the MTP layer is
            # still the model's last decoder layer, which lives on an earlier stage.
            decoder_spec = self._last_decoder_layer_spec(use_te)
        return get_gpt_mtp_block_spec(
            transformer_cfg, decoder_spec, use_te, vp_stage=vp_stage, pp_rank=pp_rank
        )

    def _last_decoder_layer_spec(self, use_te: bool) -> LayerOrBlockSpec:
        transformer_cfg = self._model_config.transformer
        pp_size = transformer_cfg.pipeline_model_parallel_size
        vp_size = transformer_cfg.virtual_pipeline_model_parallel_size
        for pp_rank in reversed(range(pp_size)):
            for vp_stage in reversed(range(vp_size)) if vp_size else [None]:
                spec = self._decoder_spec(use_te, vp_stage, pp_rank)
                if _layer_specs(spec):
                    return spec
        raise ValueError("the pipeline layout places no decoder layer on any stage")

    def build_model(
        self,
        pg_collection: ProcessGroupCollection,
        pre_process: Optional[bool] = None,
        post_process: Optional[bool] = None,
        vp_stage: Optional[int] = None,
    ) -> GPTModel:
        """Build the ``GPTModel`` chunk of this pipeline (and virtual pipeline) stage."""
        log_megatron_core_path()
        model_cfg = self._model_config
        transformer_cfg = model_cfg.transformer
        if self._is_stock_spec_family():
            if _uses_spec_level_options(transformer_cfg):
                raise ValueError(
                    "qk_layernorm_scope='layer' and moe_router_keep_in_fp32 are implemented in "
                    "the GPT decoder specs and cannot be combined with heterogeneous layers, "
                    "experimental attention variants, ModelOpt or transformer_impl="
                    "'inference_optimized'."
                )
            return super().build_model(pg_collection, pre_process, post_process, vp_stage)

        use_te = self._use_transformer_engine()
        pp_rank = get_pg_rank(pg_collection.pp)
        decoder_spec = self._decoder_spec(use_te, vp_stage, pp_rank)
        mtp_spec = self._mtp_spec(decoder_spec, use_te, vp_stage, pp_rank)
        if _spec_carries_layer_scope_qk_norm(transformer_cfg):
            _check_layer_scope_qk_norm(decoder_spec, "decoder spec")
            if mtp_spec is not None:
                for mtp_layer_spec in mtp_spec.layer_specs:
                    _check_layer_scope_qk_norm(
                        mtp_layer_spec.submodules.mtp_model_layer, "MTP layer spec"
                    )
        if model_cfg.attention_backend == AttnBackend.local:
            decoder_spec = with_local_core_attention(decoder_spec)

        vocab_size, pre_process, post_process = vocab_and_stage(
            model_cfg, pg_collection, pre_process, post_process, vp_stage
        )
        return GPTModel(
            config=transformer_cfg,
            transformer_layer_spec=decoder_spec,
            vocab_size=vocab_size,
            max_sequence_length=model_cfg.seq_length,
            pre_process=pre_process,
            post_process=post_process,
            fp16_lm_cross_entropy=model_cfg.fp16_lm_cross_entropy,
            parallel_output=model_cfg.parallel_output,
            share_embeddings_and_output_weights=model_cfg.share_embeddings_and_output_weights,
            position_embedding_type=model_cfg.position_embedding_type,
            rotary_percent=model_cfg.rotary_percent,
            rotary_base=model_cfg.rotary_base,
            rope_scaling=model_cfg.rope_scaling,
            rope_scaling_factor=model_cfg.rope_scaling_factor,
            seq_len_interpolation_factor=model_cfg.seq_len_interpolation_factor,
            scatter_embedding_sequence_parallel=model_cfg.scatter_embedding_sequence_parallel,
            mtp_block_spec=mtp_spec,
            pg_collection=pg_collection,
            vp_stage=vp_stage,
        )


__all__ = ["GPTModelBuilder", "GPTModelConfig", "HAVE_TE"]
