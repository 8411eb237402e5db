# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The MiniMax-M2 HF <-> Megatron weight table, read by every importer, exporter and checker.

HF names are the released on-disk names (``block_sparse_moe.experts.E.w1`` ...); Megatron names
are canonical (see ``megatron.minimax.models.conversion.mappings``). The table also records how
the releases store each tensor: the router gate and ``e_score_correction_bias`` in fp32
(``dtype``), the attention projections and every expert matrix as 128x128-block FP8 in the FP8
releases (``fp8``, with :data:`RELEASE_QUANTIZATION_CONFIG`), everything else in bf16.
"""

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron.minimax.models.conversion.mappings import (
    FusedQKV,
    GatedFC1,
    MappingContext,
    Rename,
    VocabRows,
    WeightMappingTable,
)
from megatron.minimax.models.minimax_m2.hf_config import GPTModelArgs

_LAYER = "decoder.layers.{layer}"
_HF_LAYER = "model.layers.{layer}"
_EXPERT = f"{_LAYER}.mlp.experts.local_experts.{{expert}}"
_HF_EXPERT = f"{_HF_LAYER}.block_sparse_moe.experts.{{expert}}"

MINIMAX_M2_WEIGHTS = WeightMappingTable(
    [
        VocabRows("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
        Rename(f"{_LAYER}.input_layernorm.weight", f"{_HF_LAYER}.input_layernorm.weight"),
        FusedQKV(
            f"{_LAYER}.self_attention.linear_qkv.weight",
            q=f"{_HF_LAYER}.self_attn.q_proj.weight",
            k=f"{_HF_LAYER}.self_attn.k_proj.weight",
            v=f"{_HF_LAYER}.self_attn.v_proj.weight",
            fp8=True,
        ),
        Rename(
            f"{_LAYER}.self_attention.q_layernorm.weight", f"{_HF_LAYER}.self_attn.q_norm.weight"
        ),
        Rename(
            f"{_LAYER}.self_attention.k_layernorm.weight", f"{_HF_LAYER}.self_attn.k_norm.weight"
        ),
        Rename(
            f"{_LAYER}.self_attention.linear_proj.weight",
            f"{_HF_LAYER}.self_attn.o_proj.weight",
            fp8=True,
        ),
        Rename(
            f"{_LAYER}.pre_mlp_layernorm.weight", f"{_HF_LAYER}.post_attention_layernorm.weight"
        ),
        Rename(
            f"{_LAYER}.mlp.router.weight",
            f"{_HF_LAYER}.block_sparse_moe.gate.weight",
            dtype=torch.float32,
        ),
        Rename(
            f"{_LAYER}.mlp.router.expert_bias",
            f"{_HF_LAYER}.block_sparse_moe.e_score_correction_bias",
            dtype=torch.float32,
        ),
        GatedFC1(
            f"{_EXPERT}.linear_fc1.weight",
            gate=f"{_HF_EXPERT}.w1.weight",
            up=f"{_HF_EXPERT}.w3.weight",
            fp8=True,
        ),
        Rename(f"{_EXPERT}.linear_fc2.weight", f"{_HF_EXPERT}.w2.weight", fp8=True),
        Rename("decoder.final_layernorm.weight", "model.norm.weight"),
        VocabRows("output_layer.weight", "lm_head.weight"),
    ]
)


RELEASE_QUANTIZATION_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "float8_e4m3fn",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
    "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
}
"""``quantization_config`` of the released FP8 MiniMax-M2 checkpoints."""


def release_fp8_tensor(name: str) -> bool:
    """Whether the FP8 releases store HF tensor ``name`` as block-wise FP8 (attention q/k/v/o
    projections and expert w1/w2/w3; False for names outside the table)."""
    try:
        mapping, _ = MINIMAX_M2_WEIGHTS.resolve_hf(name)
    except KeyError:
        return False
    return mapping.fp8


def release_dtype(name: str, fp8_release: bool) -> torch.dtype:
    """dtype in which a release (FP8 or not) stores HF tensor ``name``.

    Raises:
        KeyError: ``name`` is not a tensor of the table.
    """
    mapping, _ = MINIMAX_M2_WEIGHTS.resolve_hf(name)
    return mapping.stored_dtype(fp8_release)


def mapping_context(
    config: TransformerConfig, model_args: GPTModelArgs, padded_vocab_size: int
) -> MappingContext:
    """The dimensions :data:`MINIMAX_M2_WEIGHTS` needs, from the model's config."""
    return MappingContext(
        num_attention_heads=config.num_attention_heads,
        num_query_groups=config.num_query_groups or config.num_attention_heads,
        head_dim=config.kv_channels,
        vocab_size=model_args.vocab_size,
        padded_vocab_size=padded_vocab_size,
    )
