# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""HF ``config.json`` of the MiniMax-M2 family -> Megatron ``TransformerConfig`` + GPTModel args.

Architecture keys translate through :data:`CONFIG_MAPPING` (read in both directions); the keys
whose value is fixed by what Megatron implements are checked against :data:`REQUIRED_VALUES`; keys
with no architectural effect are listed in :data:`IGNORED_KEYS`. Any other key, or a value this
mapping cannot implement (lightning attention layers, a shared expert, softmax scoring, RoPE
scaling, ...), is refused with a ``ValueError`` naming it.
"""

import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Tuple, Union

import torch.nn.functional as F

from megatron.minimax.transformer.transformer_config import TransformerConfig

MINIMAX_M2_ARCHITECTURE = "MiniMaxM2ForCausalLM"
MINIMAX_M2_MODEL_TYPE = "minimax_m2"

_REQUIRED = object()

# (HF key, TransformerConfig field, HF default when the key is absent): one-to-one values.
# Defaults are transformers' MiniMaxM2Config defaults; the released config.json omits
# attention_dropout, and Megatron's own default (0.1) would silently add dropout.
CONFIG_MAPPING: Tuple[Tuple[str, str, Any], ...] = (
    ("num_hidden_layers", "num_layers", _REQUIRED),
    ("hidden_size", "hidden_size", _REQUIRED),
    ("num_attention_heads", "num_attention_heads", _REQUIRED),
    ("num_key_value_heads", "num_query_groups", _REQUIRED),
    ("head_dim", "kv_channels", _REQUIRED),
    ("intermediate_size", "ffn_hidden_size", _REQUIRED),
    ("intermediate_size", "moe_ffn_hidden_size", _REQUIRED),
    ("num_local_experts", "num_moe_experts", _REQUIRED),
    ("num_experts_per_tok", "moe_router_topk", _REQUIRED),
    ("rms_norm_eps", "layernorm_epsilon", 1e-6),
    ("attention_dropout", "attention_dropout", 0.0),
)

# HF keys whose value is fixed by the Megatron implementation (absent means the default holds).
REQUIRED_VALUES: Dict[str, Any] = {
    "hidden_act": "silu",
    "scoring_func": "sigmoid",
    "use_qk_norm": True,
    "qk_norm_type": "per_layer",
    "shared_intermediate_size": 0,
    "rope_scaling": None,
    "sliding_window": None,
    "router_jitter_noise": 0.0,
}

# Keys that do not change the model Megatron builds (tokenizer ids, serving and loading hints,
# HF-only training knobs; MTP keys are read only when MTP layers are requested).
IGNORED_KEYS = frozenset(
    {
        "architectures",
        "model_type",
        "auto_map",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "use_cache",
        "quantization_config",
        "initializer_range",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "output_router_logits",
        "router_aux_loss_coef",
        "use_mtp",
        "num_mtp_modules",
        "mtp_transformer_layers",
        "max_position_embeddings",
        "vocab_size",
        "tie_word_embeddings",
        "rope_theta",
        "rotary_dim",
        "partial_rotary_factor",
        "rope_parameters",
        "attn_type_list",
        "use_routing_bias",
        "layer_types",
    }
)

SOFTMAX_ATTENTION = 1  # attn_type_list: 0 is lightning (linear) attention, 1 is softmax attention.


@dataclass
class GPTModelArgs:
    """``GPTModel`` constructor arguments that are not ``TransformerConfig`` fields."""

    vocab_size: int
    """Vocabulary size of the tokenizer/checkpoint (unpadded)."""

    max_sequence_length: int
    """``max_position_embeddings``."""

    rotary_percent: float
    """Fraction of each head's dimensions that RoPE rotates (``rotary_dim / head_dim``)."""

    rotary_base: int
    """RoPE theta."""

    share_embeddings_and_output_weights: bool = False
    """Tied input embedding and output layer (MiniMax-M2: untied)."""

    position_embedding_type: str = "rope"


def load_hf_config(hf_config: Union[str, os.PathLike, Dict[str, Any]]) -> Dict[str, Any]:
    """Read ``config.json`` (a path to the file or its directory), or pass a dict through."""
    if isinstance(hf_config, dict):
        return dict(hf_config)
    path = os.fspath(hf_config)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such HF config file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _check_identity(hf: Dict[str, Any]) -> None:
    archs = hf.get("architectures") or []
    if hf.get("model_type") != MINIMAX_M2_MODEL_TYPE or MINIMAX_M2_ARCHITECTURE not in archs:
        raise ValueError(
            f"not a MiniMax-M2 config: model_type={hf.get('model_type')!r}, "
            f"architectures={archs!r} (expected {MINIMAX_M2_MODEL_TYPE!r} / "
            f"[{MINIMAX_M2_ARCHITECTURE!r}])"
        )


def _check_supported(hf: Dict[str, Any]) -> None:
    known = IGNORED_KEYS | set(REQUIRED_VALUES) | {hf_key for hf_key, _, _ in CONFIG_MAPPING}
    unknown = sorted(set(hf) - known)
    if unknown:
        raise ValueError(
            f"unsupported HF config keys {unknown}: this mapping does not know their effect"
        )
    for key, required in REQUIRED_VALUES.items():
        if key in hf and hf[key] != required:
            raise ValueError(
                f"unsupported HF config value {key}={hf[key]!r} (supported: {required!r})"
            )
    rope = hf.get("rope_parameters") or {}
    unsupported_rope = sorted(set(rope) - {"rope_type", "rope_theta", "partial_rotary_factor"})
    if rope.get("rope_type", "default") != "default" or unsupported_rope:
        raise ValueError(
            f"unsupported rope_parameters {rope!r}: only default RoPE (rope_theta, "
            "partial_rotary_factor) is supported"
        )
    if "rope_theta" in hf and "rope_theta" in rope and hf["rope_theta"] != rope["rope_theta"]:
        raise ValueError(
            f"rope_theta={hf['rope_theta']!r} disagrees with "
            f"rope_parameters.rope_theta={rope['rope_theta']!r}"
        )
    required = {k for k, _, default in CONFIG_MAPPING if default is _REQUIRED}
    present = set(hf) | ({"rope_theta"} if "rope_theta" in rope else set())
    missing = sorted((required | {"vocab_size", "rope_theta"}) - present)
    if missing:
        raise ValueError(f"HF config lacks required keys {missing}")
    attn_types = hf.get("attn_type_list")
    if attn_types is not None:
        if len(attn_types) != hf["num_hidden_layers"]:
            raise ValueError(
                f"attn_type_list has {len(attn_types)} entries for "
                f"num_hidden_layers={hf['num_hidden_layers']}"
            )
        other = sorted({i for i, t in enumerate(attn_types) if t != SOFTMAX_ATTENTION})
        if other:
            raise ValueError(
                f"attn_type_list marks layers {other} as non-softmax (lightning) attention, "
                "which this model does not implement"
            )
    if hf.get("use_routing_bias") is False:
        raise ValueError(
            "use_routing_bias=false is not supported: MiniMax-M2 routes with "
            "e_score_correction_bias"
        )
    if hf.get("layer_types") not in (None, ["full_attention"] * hf["num_hidden_layers"]):
        raise ValueError(f"unsupported layer_types {hf['layer_types']!r}")


def rotary_percent_from_hf(hf: Dict[str, Any]) -> float:
    """``rotary_dim / head_dim`` (``partial_rotary_factor`` in newer HF configs)."""
    head_dim = hf["head_dim"]
    factor = hf.get("partial_rotary_factor")
    if factor is None:
        factor = (hf.get("rope_parameters") or {}).get("partial_rotary_factor")
    rotary_dim = hf.get("rotary_dim")
    if rotary_dim is not None and factor is not None and rotary_dim != round(factor * head_dim):
        raise ValueError(
            f"rotary_dim={rotary_dim} contradicts partial_rotary_factor={factor} "
            f"(head_dim={head_dim})"
        )
    if rotary_dim is None:
        rotary_dim = round((1.0 if factor is None else factor) * head_dim)
    if rotary_dim <= 0 or rotary_dim > head_dim or rotary_dim % 2:
        raise ValueError(f"rotary_dim={rotary_dim} must be even and in (0, head_dim={head_dim}]")
    return rotary_dim / head_dim


def minimax_m2_config_from_hf(
    hf_config: Union[str, os.PathLike, Dict[str, Any]],
    mtp_num_layers: Optional[int] = None,
    **overrides,
) -> Tuple[TransformerConfig, GPTModelArgs]:
    """Build the Megatron config and GPTModel arguments for a MiniMax-M2-family HF config.

    Args:
        hf_config: ``config.json`` contents, or a path to it or to its directory.
        mtp_num_layers: MTP layers to build (None: none). The released checkpoints declare
            ``num_mtp_modules: 3`` but ship no MTP weights, so MTP is opt-in.
        **overrides: other ``TransformerConfig`` fields: parallel layout, precision, recompute,
            load balancing, ... Fields that the HF config determines cannot be overridden.

    Returns:
        ``(TransformerConfig, GPTModelArgs)``.
    """
    hf = load_hf_config(hf_config)
    _check_identity(hf)
    _check_supported(hf)

    architecture = {field: hf.get(hf_key, default) for hf_key, field, default in CONFIG_MAPPING}
    architecture.update(
        normalization="RMSNorm",
        qk_layernorm=True,
        qk_layernorm_scope="layer",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        moe_layer_freq=1,
        moe_shared_expert_intermediate_size=None,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        moe_router_pre_softmax=False,
        moe_router_topk_scaling_factor=None,
        moe_router_num_groups=None,
        moe_router_dtype="fp32",
        moe_router_keep_in_fp32=True,
    )
    locked = sorted(set(architecture) & set(overrides))
    if locked:
        raise ValueError(
            f"{locked} come from the HF config; edit config.json instead of overriding them"
        )
    if mtp_num_layers:
        if hf.get("mtp_transformer_layers", 1) != 1:
            raise ValueError("only mtp_transformer_layers=1 is supported")
        architecture["mtp_num_layers"] = mtp_num_layers

    defaults = dict(
        hidden_dropout=0.0,
        attention_softmax_in_fp32=True,
        apply_query_key_layer_scaling=False,
        moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0,
        moe_token_dispatcher_type="alltoall",
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
    )
    config_fields = {f.name for f in fields(TransformerConfig)}
    bad = sorted(set(overrides) - config_fields)
    if bad:
        raise ValueError(f"unknown TransformerConfig fields {bad}")
    config = TransformerConfig(**{**defaults, **overrides, **architecture})

    model_args = GPTModelArgs(
        vocab_size=hf["vocab_size"],
        max_sequence_length=hf.get("max_position_embeddings", 4096),
        rotary_percent=rotary_percent_from_hf(hf),
        rotary_base=int(hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta"))),
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
    )
    return config, model_args


VOCAB_PADDING_MULTIPLE = 128
"""Embedding/output rows are padded to a multiple of this, whatever the TP size."""


def make_vocab_size_divisible_by(tensor_parallel_size: int) -> int:
    """Megatron's ``--make-vocab-size-divisible-by`` for :func:`padded_vocab_size` at this TP.

    Megatron pads to a multiple of ``make_vocab_size_divisible_by * TP``. A fixed multiple of
    128 across TP sizes keeps the checkpoint's embedding shape the same at every layout (so
    torch_dist checkpoints reshard across TP), and leaves the released 200,064 (= 128 * 1563)
    unpadded: padded rows would add zero logits to the training loss.
    """
    if tensor_parallel_size < 1 or VOCAB_PADDING_MULTIPLE % tensor_parallel_size:
        raise ValueError(
            f"tensor_model_parallel_size ({tensor_parallel_size}) must divide "
            f"{VOCAB_PADDING_MULTIPLE} (the vocabulary padding multiple)"
        )
    return VOCAB_PADDING_MULTIPLE // tensor_parallel_size


def padded_vocab_size(vocab_size: int, tensor_parallel_size: int = 1) -> int:
    """Rows of the Megatron embedding and output layer: ``vocab_size`` rounded up to a multiple of
    128, the same at every TP size that divides 128 (200,064 stays 200,064; 1,001 becomes 1,024).
    """
    multiple = make_vocab_size_divisible_by(tensor_parallel_size) * tensor_parallel_size
    return int(math.ceil(vocab_size / multiple) * multiple)
