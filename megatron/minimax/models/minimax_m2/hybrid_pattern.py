# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""MiniMax-M2 as a ``HybridModel`` layer pattern, and the config that goes with it.

Every MiniMax-M2 decoder layer is an attention layer followed by an MoE layer: ``*E`` in
megatron-core's hybrid pattern language, repeated ``num_hidden_layers`` times. Pipeline stages are
cut with ``|`` between decoder layers (so a stage never splits a layer's attention from its MoE);
each MTP depth is a ``/*E`` suffix. In a hybrid model ``num_layers`` counts pattern symbols: twice
the decoder layers.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

from megatron.core.transformer.transformer_config import TransformerConfig

from megatron.minimax.models.minimax_m2.model import pipeline_stage_layers

DECODER_LAYER_SYMBOLS = "*E"
"""One MiniMax-M2 decoder layer: attention, then MoE."""


def minimax_m2_hybrid_layer_pattern(
    num_decoder_layers: int, stage_layers: Optional[Sequence[int]] = None, mtp_num_layers: int = 0
) -> str:
    """The ``--hybrid-layer-pattern`` of a MiniMax-M2 model.

    Args:
        num_decoder_layers: HF ``num_hidden_layers`` (62 for the releases).
        stage_layers: decoder layers per pipeline stage, e.g. ``[15, 16, 16, 15]``; None for one
            stage.
        mtp_num_layers: MTP depths.

    Raises:
        ValueError: the stages do not add up to ``num_decoder_layers`` or one is empty.
    """
    if num_decoder_layers < 1:
        raise ValueError(f"num_decoder_layers must be >= 1, got {num_decoder_layers}")
    stages = list(stage_layers) if stage_layers is not None else [num_decoder_layers]
    if sum(stages) != num_decoder_layers or min(stages) < 1:
        raise ValueError(
            f"pipeline stages {stages} must be >= 1 layer each and add up to {num_decoder_layers}"
        )
    main = "|".join(DECODER_LAYER_SYMBOLS * n for n in stages)
    return main + f"/{DECODER_LAYER_SYMBOLS}" * mtp_num_layers


def minimax_m2_hybrid_config(config: TransformerConfig) -> Tuple[TransformerConfig, str]:
    """The hybrid model equal to the GPT model of ``config``: its ``TransformerConfig`` and its
    ``hybrid_layer_pattern``.

    ``num_layers`` counts pattern symbols (two per decoder layer), and the pipeline split of
    ``config`` (even, or uneven with ``num_layers_in_first/last_pipeline_stage``) moves into the
    pattern's ``|`` cuts (megatron-core refuses both).

    Raises:
        ValueError: the split of ``config`` is impossible (see
            :func:`~megatron.minimax.models.minimax_m2.model.pipeline_stage_layers`).
    """
    stages = pipeline_stage_layers(
        config.num_layers,
        config.pipeline_model_parallel_size,
        config.num_layers_in_first_pipeline_stage,
        config.num_layers_in_last_pipeline_stage,
    )
    pattern = minimax_m2_hybrid_layer_pattern(
        config.num_layers, stages, mtp_num_layers=config.mtp_num_layers or 0
    )
    hybrid = dataclasses.replace(
        config,
        num_layers=2 * config.num_layers,
        num_layers_in_first_pipeline_stage=None,
        num_layers_in_last_pipeline_stage=None,
    )
    return hybrid, pattern
