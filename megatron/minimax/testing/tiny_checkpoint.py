# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Tiny random MiniMax-M2 checkpoints in the exact released on-disk format, and an HF reference.

:func:`build_tiny_checkpoint` writes what a MiniMax-M2.x release looks like (config keys, tensor
names, per-tensor dtypes, zero-based shard names whose "of" count disagrees with the file count,
an index, optional block-wise FP8 with ``weight_scale_inv``), only with tiny, deliberately awkward
sizes. :func:`load_hf_reference_model` loads such a directory (or a real one) into transformers'
``MiniMaxM2ForCausalLM`` through :class:`~megatron.minimax.checkpoint.hf_checkpoint.HFCheckpoint`,
the golden model for parity tests.

Random weights are scaled so activations and logits stay O(1) through the network: a wrong mapping
(swapped w1/w3, a mis-sliced norm, a transposed projection) then moves the logits by O(1), which
parity tests detect, instead of by the 1e-3 that a 0.02-std init would give.
"""

import copy
import json
import math
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from safetensors.torch import save_file

from megatron.minimax.checkpoint.fp8_blockwise import quantize_blockwise
from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
from megatron.minimax.models.minimax_m2.weight_mapping import (
    RELEASE_QUANTIZATION_CONFIG,
    release_dtype,
)

__all__ = ["build_tiny_checkpoint", "tiny_hf_config"]

ROUTING_BIAS_RANGE = 0.2
"""``e_score_correction_bias`` is drawn uniformly from ``[-0.2, 0.2]``.

The router scores are ``sigmoid`` of O(1) logits, so they spread over roughly (0.25, 0.75). A
bias of this size changes the top-2-of-8 expert set for about half of the tokens (40-70% over
seeds in a simulation with unit-variance logits), so a converter that drops the bias, applies it to
the weights, or maps it to the wrong layer changes the output, while the unbiased scores still
decide the rest of the choices.
"""

_NORM_RANGE = (0.5, 1.5)
# The release declares 126 (M2.5) or 130 (M2) shards in the names but ships 125 files.
_SHARD_COUNT_SURPLUS = 1


def tiny_hf_config(**overrides) -> dict:
    """A release-format MiniMax-M2 ``config.json`` dict with tiny, awkward sizes.

    It has exactly the keys of the released config except ``quantization_config`` (added by
    :func:`build_tiny_checkpoint` only for FP8). The defaults are chosen to catch layout bugs: an
    odd vocabulary (1001) that is not a multiple of 128; query width 8 * 16 = 128 != hidden 64;
    GQA with 4 KV heads (TP=4 works); partial RoPE (rotary_dim 8 of head_dim 16); 4 layers (PP=2
    and PP=4); 8 experts, top-2; expert FFN 48 (every FP8 block is partial in some dim).

    Args:
        **overrides: any config key. When ``num_hidden_layers`` is overridden without
            ``attn_type_list``, the list is resized to match (all 1, softmax attention).

    Returns:
        A new dict, in the released key order.

    Raises:
        ValueError: if ``attn_type_list`` does not have ``num_hidden_layers`` entries.
    """
    num_layers = overrides.get("num_hidden_layers", 4)
    config = {
        "architectures": ["MiniMaxM2ForCausalLM"],
        "attn_type_list": [1] * num_layers,
        "auto_map": {
            "AutoConfig": "configuration_minimax_m2.MiniMaxM2Config",
            "AutoModelForCausalLM": "modeling_minimax_m2.MiniMaxM2ForCausalLM",
        },
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 48,
        "max_position_embeddings": 512,
        "model_type": "minimax_m2",
        "mtp_transformer_layers": 1,
        "num_attention_heads": 8,
        "num_experts_per_tok": 2,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": 4,
        "num_local_experts": 8,
        "num_mtp_modules": 3,
        "qk_norm_type": "per_layer",
        "rms_norm_eps": 1e-06,
        "rope_theta": 5000000,
        "rotary_dim": 8,
        "scoring_func": "sigmoid",
        "shared_intermediate_size": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.1",
        "use_cache": True,
        "use_mtp": True,
        "use_qk_norm": True,
        "use_routing_bias": True,
        "vocab_size": 1001,
    }
    config.update(copy.deepcopy(overrides))
    if len(config["attn_type_list"]) != config["num_hidden_layers"]:
        raise ValueError(
            f"attn_type_list has {len(config['attn_type_list'])} entries but num_hidden_layers is "
            f"{config['num_hidden_layers']}"
        )
    return config


def _random_weights(config: dict, seed: int) -> "OrderedDict[str, torch.Tensor]":
    """fp32 weights in release order: embedding, layers (attention, router, experts), norm, head."""
    gen = torch.Generator().manual_seed(seed)
    hidden = config["hidden_size"]
    q_width = config["num_attention_heads"] * config["head_dim"]
    kv_width = config["num_key_value_heads"] * config["head_dim"]
    ffn = config["intermediate_size"]
    experts = config["num_local_experts"]

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        # Unit-variance inputs give unit-variance outputs: O(1) activations at every depth.
        return torch.randn(out_features, in_features, generator=gen) / math.sqrt(in_features)

    def norm(width: int) -> torch.Tensor:
        lo, hi = _NORM_RANGE
        return lo + (hi - lo) * torch.rand(width, generator=gen)

    weights: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    weights["model.embed_tokens.weight"] = torch.randn(config["vocab_size"], hidden, generator=gen)
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        weights[p + "input_layernorm.weight"] = norm(hidden)
        weights[p + "self_attn.q_proj.weight"] = linear(q_width, hidden)
        weights[p + "self_attn.k_proj.weight"] = linear(kv_width, hidden)
        weights[p + "self_attn.v_proj.weight"] = linear(kv_width, hidden)
        weights[p + "self_attn.o_proj.weight"] = linear(hidden, q_width)
        weights[p + "self_attn.q_norm.weight"] = norm(q_width)
        weights[p + "self_attn.k_norm.weight"] = norm(kv_width)
        weights[p + "post_attention_layernorm.weight"] = norm(hidden)
        weights[p + "block_sparse_moe.gate.weight"] = linear(experts, hidden)
        weights[p + "block_sparse_moe.e_score_correction_bias"] = ROUTING_BIAS_RANGE * (
            2 * torch.rand(experts, generator=gen) - 1
        )
        for e in range(experts):
            q = f"{p}block_sparse_moe.experts.{e}."
            weights[q + "w1.weight"] = linear(ffn, hidden)
            weights[q + "w2.weight"] = linear(hidden, ffn)
            weights[q + "w3.weight"] = linear(ffn, hidden)
    weights["model.norm.weight"] = norm(hidden)
    weights["lm_head.weight"] = linear(config["vocab_size"], hidden)
    return weights


def _on_disk_groups(
    weights: "OrderedDict[str, torch.Tensor]", fp8: bool
) -> List[Dict[str, torch.Tensor]]:
    """Converts to on-disk dtypes; each group (a weight and its scale) goes into one shard."""
    groups = []
    for name, w in weights.items():
        dtype = release_dtype(name, fp8)
        if dtype == torch.float8_e4m3fn:
            q, scale = quantize_blockwise(w)
            groups.append({name: q, name + "_scale_inv": scale})
        else:
            groups.append({name: w.to(dtype)})
    return groups


def _partition(sizes: List[int], num_shards: int) -> List[int]:
    """Contiguous split into ``num_shards`` non-empty runs of roughly equal byte size."""
    total = sum(sizes)
    assignment, shard, cum = [], 0, 0
    for i, size in enumerate(sizes):
        if assignment and shard < num_shards - 1:
            shard_is_full = cum >= total * (shard + 1) / num_shards
            # Each shard after the current one still needs at least one of the remaining groups.
            must_advance = len(sizes) - i == num_shards - 1 - shard
            if shard_is_full or must_advance:
                shard += 1
        assignment.append(shard)
        cum += size
    return assignment


def build_tiny_checkpoint(
    out_dir: Union[str, os.PathLike],
    config: Optional[dict] = None,
    *,
    seed: int = 0,
    fp8: bool = False,
    num_shards: int = 3,
) -> Path:
    """Writes a random MiniMax-M2 checkpoint in the released on-disk format.

    Weights (drawn in fp32 from a seeded CPU generator, deterministic for a given config and seed;
    the FP8 variant quantises the same draws):

    * linear weights ``N(0, 1/fan_in)``; embedding ``N(0, 1)``;
    * every RMSNorm weight (input/post-attention, q_norm, k_norm, final norm) ``U(0.5, 1.5)``;
    * ``e_score_correction_bias`` ``U(-0.2, 0.2)`` (see :data:`ROUTING_BIAS_RANGE`).

    On disk, as released: router ``gate.weight`` and ``e_score_correction_bias`` fp32, everything
    else bf16; with ``fp8=True`` the q/k/v/o projections and all expert w1/w2/w3 are block-wise
    ``float8_e4m3fn`` with a ``<name>_scale_inv`` companion and ``config.json`` gets the release
    ``quantization_config``. No MTP weights are written (the release has none either).

    Files: ``config.json``; with ``num_shards > 1`` zero-based shards
    ``model-00000-of-000NN.safetensors`` whose "of" count is one more than the number of files (as
    in the M2.5 release) and ``model.safetensors.index.json``; the embedding is in the first shard
    and ``lm_head`` in the last. With ``num_shards == 1``: a single ``model.safetensors``, no index.

    Args:
        out_dir: directory to create. It may exist only if empty. Files are written into a temporary
            sibling directory that is renamed at the end, so a failed build leaves nothing behind.
        config: a config dict (default :func:`tiny_hf_config`); any ``quantization_config`` in it is
            replaced according to ``fp8``.
        seed: generator seed.
        fp8: write the FP8 release format.
        num_shards: number of safetensors files.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: if ``out_dir`` exists and is not an empty directory.
        ValueError: if ``num_shards`` is not between 1 and the number of weight groups.
    """
    out_dir = Path(out_dir)
    config = copy.deepcopy(config) if config is not None else tiny_hf_config()
    config.pop("quantization_config", None)
    if fp8:
        config["quantization_config"] = copy.deepcopy(RELEASE_QUANTIZATION_CONFIG)

    groups = _on_disk_groups(_random_weights(config, seed), fp8)
    if not 1 <= num_shards <= len(groups):
        raise ValueError(f"num_shards must be in [1, {len(groups)}], got {num_shards}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty directory")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with open(tmp / "config.json", "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
            f.write("\n")
        if num_shards == 1:
            tensors = {k: v for group in groups for k, v in group.items()}
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            _write_shards(tmp, groups, num_shards)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_shards(directory: Path, groups: List[Dict[str, torch.Tensor]], num_shards: int) -> None:
    sizes = [sum(t.numel() * t.element_size() for t in g.values()) for g in groups]
    assignment = _partition(sizes, num_shards)
    declared = num_shards + _SHARD_COUNT_SURPLUS
    weight_map: Dict[str, str] = {}
    for shard in range(num_shards):
        file_name = f"model-{shard:05d}-of-{declared:05d}.safetensors"
        tensors = {
            name: t
            for group, s in zip(groups, assignment)
            if s == shard
            for name, t in group.items()
        }
        save_file(tensors, str(directory / file_name), metadata={"format": "pt"})
        weight_map.update((name, file_name) for name in tensors)
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
    with open(directory / "model.safetensors.index.json", "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
