# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Plan an HF export of a torch_dist checkpoint: which checkpoint chunks make which HF tensors.

The model layout (:mod:`~megatron.minimax.checkpoint.dist_checkpoint_layout`) is matched against
the checkpoint's tensors; each model tensor becomes an :class:`ExportJob` naming the HF tensors the
weight table makes of it, with their shapes and output dtypes (FP8 or not); the jobs must produce
every HF tensor of the model exactly once. Nothing here reads tensor data.
"""

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

import torch

from megatron.minimax.checkpoint.dist_checkpoint_layout import CheckpointUnit
from megatron.minimax.checkpoint.dist_checkpoint_reader import DistCheckpointReader
from megatron.minimax.checkpoint.fp8_blockwise import scale_inv_shape
from megatron.minimax.checkpoint.hf_checkpoint import SCALE_SUFFIX, CheckpointError
from megatron.minimax.checkpoint.safetensors_shards import PlannedTensor
from megatron.minimax.models.conversion.mappings import (
    MappingContext,
    WeightMapping,
    WeightMappingTable,
)

__all__ = [
    "ExportJob",
    "check_config",
    "check_exhaustive",
    "match_layout",
    "output_groups",
    "plan_jobs",
    "read_groups",
]


@dataclass
class ExportJob:
    """One model tensor: the unit to read and the HF tensors it becomes."""

    unit: CheckpointUnit
    mapping: WeightMapping
    names: Tuple[str, ...]
    shapes: Tuple[Tuple[int, ...], ...]
    out_dtypes: Tuple[torch.dtype, ...]
    quantized: Tuple[bool, ...]


# (HF config key, GPT-layout checkpoint key, dimension, unit): the key's shape at that dimension
# must be the config value times the unit. Hybrid checkpoints key each layer: attention tensors
# under layer 0, MoE tensors under layer 1, without the stacked layer axis.
_CONFIG_CHECKS = (
    ("hidden_size", "embedding.word_embeddings.weight", 1, 1),
    ("num_local_experts", "decoder.layers.mlp.router.weight", 1, 1),
    ("num_attention_heads", "decoder.layers.self_attention.q_layernorm.weight", 1, "head_dim"),
    ("num_key_value_heads", "decoder.layers.self_attention.k_layernorm.weight", 1, "head_dim"),
    ("intermediate_size", "decoder.layers.mlp.experts.experts.linear_fc2.weight", -1, 1),
)
_QKV_KEY = "decoder.layers.self_attention.linear_qkv.weight"
_HYBRID_QKV_KEY = re.compile(r"decoder\.layers\.(\d+)\.self_attention\.linear_qkv\.weight\Z")


def _hybrid_key(key: str) -> Tuple[str, int]:
    """The hybrid-checkpoint key of a GPT-layout key, and the dimension shift (no layer axis)."""
    if not key.startswith("decoder.layers."):
        return key, 0
    layer = 0 if ".self_attention." in key else 1
    return key.replace("decoder.layers.", f"decoder.layers.{layer}.", 1), -1


def check_config(
    config: Dict, reader: DistCheckpointReader, config_path: Path, model: str = "gpt"
) -> None:
    """The reference config.json must describe the checkpoint's model (one-line error naming the
    config value and the checkpoint tensor it contradicts).

    Args:
        model: the checkpoint's layout, ``"gpt"`` or ``"hybrid"`` (see
            :func:`~megatron.minimax.checkpoint.dist_checkpoint_layout.model_class_of_keys`).
    """
    head_dim = config["head_dim"]
    if model == "hybrid":
        layers = {int(m.group(1)) for m in map(_HYBRID_QKV_KEY.match, reader.tensors) if m}
        found = [("num_hidden_layers", len(layers), f"{len(layers)} attention layers")]
    else:
        shape = _shape_of(reader, _QKV_KEY)
        found = [("num_hidden_layers", shape[0], f"{_QKV_KEY} with shape {list(shape)}")]
    for hf_key, key, dim, unit in _CONFIG_CHECKS:
        shift = 0
        if model == "hybrid":
            key, shift = _hybrid_key(key)
        shape = _shape_of(reader, key)
        value = shape[dim + shift if dim >= 0 else dim]
        factor = head_dim if unit == "head_dim" else unit
        if value != config[hf_key] * factor:
            what = f"{hf_key}={config[hf_key]}"
            if factor != 1:
                what += f" (x head_dim {head_dim} = {config[hf_key] * factor})"
            raise CheckpointError(
                f"{config_path}: {what} does not match the checkpoint {reader.directory}, whose "
                f"{key} has shape {list(shape)}"
            )
    for hf_key, value, source in found:
        if value != config[hf_key]:
            raise CheckpointError(
                f"{config_path}: {hf_key}={config[hf_key]} does not match the checkpoint "
                f"{reader.directory}, which has {source}"
            )
    rows = reader.shape("embedding.word_embeddings.weight")[0]
    if rows < config["vocab_size"]:
        raise CheckpointError(
            f"{config_path}: vocab_size={config['vocab_size']} does not match the checkpoint "
            f"{reader.directory}, whose embedding has only {rows} rows"
        )


def _shape_of(reader: DistCheckpointReader, key: str) -> Tuple[int, ...]:
    if key not in reader.tensors:
        raise CheckpointError(
            f"{reader.directory}: no tensor {key}; not a MiniMax-M2 Megatron checkpoint"
        )
    return reader.shape(key)


def match_layout(
    units: List[CheckpointUnit], reader: DistCheckpointReader, config_path: Path
) -> List[CheckpointUnit]:
    """Checks every unit's chunks against the checkpoint's tensors, and that the units tile each
    tensor exactly (so every stored element is read exactly once). The vocabulary rows follow the
    checkpoint, which may be padded differently from this tool's default."""
    out = []
    covered: Dict[str, int] = {}
    for unit in units:
        if unit.canonical_name in ("embedding.word_embeddings.weight", "output_layer.weight"):
            unit = _with_vocab_rows(unit, reader)
        for chunk in unit.chunks:
            if chunk.key not in reader.tensors:
                raise CheckpointError(
                    f"{reader.directory}: tensor {chunk.key} (for {unit.canonical_name}) is "
                    f"missing; the checkpoint does not match {config_path}"
                )
            shape, dtype = reader.shape(chunk.key), reader.dtype(chunk.key)
            if shape != chunk.global_shape or dtype != chunk.dtype:
                raise CheckpointError(
                    f"{reader.directory}: tensor {chunk.key} is {dtype} {list(shape)}, the model "
                    f"described by {config_path} has {chunk.dtype} {list(chunk.global_shape)}"
                )
            covered[chunk.key] = covered.get(chunk.key, 0) + math.prod(chunk.chunk_shape)
        out.append(unit)
    for key, count in covered.items():
        md = reader.tensors[key]
        stored = sum(math.prod(c.sizes) for c in md.chunks)
        if count != math.prod(md.size) or stored != count:
            raise CheckpointError(
                f"{reader.directory}: tensor {key} {list(md.size)} has {stored} stored elements "
                f"and the model reads {count}; expected {math.prod(md.size)} each (overlapping or "
                f"missing chunks)"
            )
    return out


def _with_vocab_rows(unit: CheckpointUnit, reader: DistCheckpointReader) -> CheckpointUnit:
    (chunk,) = unit.chunks
    if chunk.key not in reader.tensors:
        return unit
    rows = reader.shape(chunk.key)[0]
    if rows == unit.shape[0] or len(unit.shape) != 2:
        return unit
    shape = (rows, unit.shape[1])
    chunk = dataclasses.replace(chunk, global_shape=shape, chunk_shape=shape)
    return dataclasses.replace(unit, shape=shape, chunks=[chunk])


def plan_jobs(
    units: List[CheckpointUnit],
    table: WeightMappingTable,
    ctx: MappingContext,
    fmt: str,
    quantized_names: Set[str],
) -> List[ExportJob]:
    jobs = []
    for unit in units:
        try:
            mapping, fields = table.resolve_megatron(unit.canonical_name)
        except KeyError:
            raise CheckpointError(f"no HF mapping for checkpoint tensor {unit.canonical_name}")
        names = mapping.hf_names(**fields)
        shapes = tuple(
            tuple(t.shape)
            for t in mapping.to_hf(torch.empty(unit.shape, dtype=unit.dtype, device="meta"), ctx)
        )
        out_dtypes, quantized = [], []
        for name, shape in zip(names, shapes):
            quant = fmt == "fp8" and (name in quantized_names if quantized_names else mapping.fp8)
            if quant and len(shape) != 2:
                raise CheckpointError(f"{name}: {list(shape)} is not 2-D, cannot quantise to FP8")
            quantized.append(quant)
            out_dtypes.append(torch.float8_e4m3fn if quant else mapping.stored_dtype(False))
        jobs.append(ExportJob(unit, mapping, names, shapes, tuple(out_dtypes), tuple(quantized)))
    return jobs


def check_exhaustive(
    jobs: List[ExportJob],
    table: WeightMappingTable,
    config: Dict,
    quantized_names: Set[str],
    reference_dir: Path,
) -> None:
    produced: Dict[str, str] = {}
    for job in jobs:
        for name in job.names:
            if name in produced:
                raise CheckpointError(
                    f"HF tensor {name} would be produced by both {produced[name]} and "
                    f"{job.unit.canonical_name}"
                )
            produced[name] = job.unit.canonical_name
    expected = {
        name
        for mapping, fields in table.expand(
            config["num_hidden_layers"], config["num_local_experts"]
        )
        for name in mapping.hf_names(**fields)
    }
    missing, extra = sorted(expected - set(produced)), sorted(set(produced) - expected)
    if missing or extra:
        raise CheckpointError(
            f"the checkpoint does not give every HF tensor exactly once: missing {len(missing)} "
            f"{missing[:5]}, unexpected {len(extra)} {extra[:5]}"
        )
    foreign = sorted(quantized_names - set(produced))
    if foreign:
        raise CheckpointError(
            f"{reference_dir}: quantised tensors {foreign[:5]} are not tensors of the exported "
            f"model"
        )


def output_groups(jobs: List[ExportJob], block_size: Tuple[int, int]) -> List[List[PlannedTensor]]:
    """The HF tensors of ``jobs`` in order, each quantised weight grouped with its
    ``weight_scale_inv`` (they share a shard)."""
    groups: List[List[PlannedTensor]] = []
    for job in jobs:
        for name, shape, dtype, quant in zip(job.names, job.shapes, job.out_dtypes, job.quantized):
            group = [PlannedTensor(name, shape, dtype)]
            if quant:
                scale_shape = scale_inv_shape(shape, block_size)
                group.append(PlannedTensor(name + SCALE_SUFFIX, scale_shape, torch.float32))
            groups.append(group)
    return groups


def read_groups(jobs: List[ExportJob], budget: int) -> Iterable[List[ExportJob]]:
    group, size = [], 0
    for job in jobs:
        if group and size + job.unit.nbytes > budget:
            yield group
            group, size = [], 0
        group.append(job)
        size += job.unit.nbytes
    if group:
        yield group
