# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The ``HybridModelConfig``/``HybridModelBuilder`` pair that ``pretrain()`` uses to build
MiniMax-M2 as a megatron-core ``HybridModel`` (``pretrain_hybrid.py``).

megatron-training's stock ``HybridModelBuilder`` defaults to megatron-core's hybrid stack spec,
which is Transformer-Engine-only and sets no q/k norm. Ours builds
:func:`~megatron.minimax.models.hybrid.hybrid_layer_specs.get_minimax_m2_hybrid_stack_spec` (local
or TE, full-dimension QK norm, fp32 router, final norm from the spec) unless ``--spec`` names
another; everything else (pattern parsing, vocabulary padding, pipeline stages, wrapping) is
megatron-training's.
"""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnBackend
from megatron.training.models.hybrid import HybridModelBuilder as MCoreHybridModelBuilder
from megatron.training.models.hybrid import HybridModelConfig as MCoreHybridModelConfig

from megatron.minimax.models.hybrid.hybrid_layer_specs import get_minimax_m2_hybrid_stack_spec
from megatron.minimax.native_core import log_megatron_core_path
from megatron.minimax.training.model_builder import (
    HAVE_TE,
    vocab_and_stage,
    with_local_core_attention,
)


@dataclass(kw_only=True)
class HybridModelConfig(MCoreHybridModelConfig):
    """megatron-training's ``HybridModelConfig``, built by :class:`HybridModelBuilder`."""

    builder: ClassVar[str] = "megatron.minimax.training.hybrid_model_builder.HybridModelBuilder"


class HybridModelBuilder(MCoreHybridModelBuilder):
    """Builds ``HybridModel`` stages with the MiniMax-M2 hybrid stack spec.

    Backend: Transformer Engine modules when ``transformer_impl == 'transformer_engine'``, else
    local modules; ``--attention-backend local`` puts megatron-core's ``DotProductAttention`` in
    the attention layers. A ``--spec`` (``HybridModelConfig.hybrid_stack_spec``) takes precedence.
    """

    def _stack_spec(self):
        model_cfg = self._model_config
        if model_cfg.hybrid_stack_spec is not None:
            return model_cfg.hybrid_stack_spec
        transformer_cfg = model_cfg.transformer
        use_te = transformer_cfg.transformer_impl == "transformer_engine"
        if use_te and not HAVE_TE:
            raise ValueError(
                "transformer_impl='transformer_engine' but Transformer Engine is not importable; "
                "use transformer_impl='local'."
            )
        spec = get_minimax_m2_hybrid_stack_spec(transformer_cfg, use_te)
        if model_cfg.attention_backend == AttnBackend.local:
            submodules = spec.submodules
            spec = dataclasses.replace(
                spec,
                submodules=dataclasses.replace(
                    submodules,
                    attention_layer=with_local_core_attention(submodules.attention_layer),
                ),
            )
        return spec

    def build_model(
        self,
        pg_collection: ProcessGroupCollection,
        pre_process: Optional[bool] = None,
        post_process: Optional[bool] = None,
        vp_stage: Optional[int] = None,
    ) -> HybridModel:
        """Build the ``HybridModel`` chunk of this pipeline (and virtual pipeline) stage."""
        log_megatron_core_path()
        model_cfg = self._model_config
        vocab_size, pre_process, post_process = vocab_and_stage(
            model_cfg, pg_collection, pre_process, post_process, vp_stage
        )
        return HybridModel(
            config=model_cfg.transformer,
            hybrid_stack_spec=self._stack_spec(),
            vocab_size=vocab_size,
            max_sequence_length=model_cfg.seq_length,
            hybrid_layer_pattern=model_cfg.hybrid_layer_pattern,
            fp16_lm_cross_entropy=model_cfg.fp16_lm_cross_entropy,
            parallel_output=model_cfg.parallel_output,
            share_embeddings_and_output_weights=model_cfg.share_embeddings_and_output_weights,
            position_embedding_type=model_cfg.position_embedding_type,
            rotary_percent=model_cfg.rotary_percent,
            rotary_base=model_cfg.rotary_base,
            seq_len_interpolation_factor=model_cfg.seq_len_interpolation_factor,
            pre_process=pre_process,
            post_process=post_process,
            pg_collection=pg_collection,
            vp_stage=vp_stage,
        )


__all__ = ["HybridModelBuilder", "HybridModelConfig"]
