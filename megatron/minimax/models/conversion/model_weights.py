# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Read and write a live, sharded Megatron model through a weight-mapping table.

Every tensor of a model chunk (parameters and persistent buffers such as ``router.expert_bias``)
gets its canonical name (global layer and expert numbers; TE fused-norm and grouped-GEMM names
normalised) and its tensor-parallel partitioning, read from the tensor's own attributes. Loading
builds each full tensor from HF tensors and keeps this rank's piece; exporting gathers the pieces
over tensor-parallel and expert-parallel groups and maps them back to HF names.

Canonical names are those of a single-rank ``GPTModel``. A ``HybridModel`` holds the same tensors
under other names: its attention and MoE layers are GPT layer i's two halves (``*E`` in its
pattern, the attention position numbered among attention positions, the MoE position among MoE
positions), its final norm is ``final_norm``, and an MTP layer's inner layers are
``mtp_model_layer.layers.{k}``; :func:`model_tensors` names both models' tensors alike.
"""

import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.hybrid.hybrid_layer_allocation import (
    Symbols,
    get_layer_maps_from_layer_type_list,
    parse_hybrid_pattern,
)
from megatron.core.models.hybrid.hybrid_model import HybridModel

from megatron.minimax.models.conversion.mappings import MappingContext, WeightMappingTable

_DECODER_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.*)\Z")
_HYBRID_MTP_INNER_LAYER = re.compile(r"(mtp\.layers\.\d+\.mtp_model_layer\.)layers\.\d+\.(.*)\Z")
_HYBRID_FINAL_NORM = {"decoder.final_norm.weight": "decoder.final_layernorm.weight"}
_SEQUENTIAL_EXPERT = re.compile(r"mlp\.experts\.local_experts\.(\d+)\.(.*)\Z")
_GROUPED_EXPERT = re.compile(r"mlp\.experts\.(linear_fc[12])\.weight(\d+)\Z")
# Quantizer state (amax, scales) that nvidia-modelopt adds to a quantized model: it describes how
# weights are quantised, is not itself a weight, and has no HF name.
_QUANTIZER_STATE = re.compile(r"(\A|\.)\w*_quantizer\.")
# Transformer Engine fuses the pre-attention / pre-MLP norm into the next linear layer.
_TE_FUSED_NORMS = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}


@dataclass
class ModelTensor:
    """One parameter or persistent buffer of a model chunk, with its place in the full model."""

    local_name: str
    canonical_name: str
    tensor: torch.Tensor
    partition_dim: Optional[int]
    """Tensor-parallel partition dimension, or None when every TP rank holds the whole tensor."""
    tp_group: Optional[torch.distributed.ProcessGroup]
    """TP group of this tensor (the expert-TP group for expert weights)."""
    expert_local_index: Optional[int] = None
    num_local_experts: Optional[int] = None

    @property
    def is_expert(self) -> bool:
        return self.expert_local_index is not None


def unwrap_model(model: torch.nn.Module) -> Union[GPTModel, HybridModel]:
    """Strip DDP / Float16Module wrappers."""
    while not isinstance(model, (GPTModel, HybridModel)) and hasattr(model, "module"):
        model = model.module
    if not isinstance(model, (GPTModel, HybridModel)):
        raise TypeError(f"expected a (wrapped) GPTModel or HybridModel, got {type(model).__name__}")
    return model


def _gpt_layer_of_hybrid_layers(pattern: str) -> Dict[int, int]:
    """Hybrid global layer index -> GPT layer index, for a ``*E``-per-layer pattern."""
    main = (parse_hybrid_pattern(pattern).main_pattern or "").replace(Symbols.PIPE, "")
    maps = get_layer_maps_from_layer_type_list(list(main))
    attention, moe = maps[Symbols.ATTENTION], maps[Symbols.MOE]
    if len(attention) != len(moe) or len(attention) + len(moe) != len(main):
        raise ValueError(
            f"hybrid layer pattern {pattern!r}: expected one attention ('*') and one MoE ('E') "
            "layer per GPT layer, nothing else"
        )
    return {**attention, **moe}


def _layer_index_of(model: Union[GPTModel, HybridModel]) -> Callable[[torch.nn.Module], int]:
    """The canonical (GPT) layer index of a decoder layer of ``model``."""
    if isinstance(model, GPTModel):
        return lambda layer: layer.layer_number - 1
    gpt_layer = _gpt_layer_of_hybrid_layers(model.hybrid_layer_pattern)
    return lambda layer: gpt_layer[layer.layer_number - 1]


def _group_size_rank(group) -> Tuple[int, int]:
    if group is None or not torch.distributed.is_initialized():
        return 1, 0
    return torch.distributed.get_world_size(group), torch.distributed.get_rank(group)


def model_tensors(
    model: torch.nn.Module,
    tp_group: Optional[torch.distributed.ProcessGroup] = None,
    expt_tp_group: Optional[torch.distributed.ProcessGroup] = None,
) -> List[ModelTensor]:
    """All parameters and persistent buffers of a model chunk, with canonical names (quantizer
    state of a modelopt-quantized model excluded).

    Args:
        model: a GPTModel or HybridModel chunk, possibly wrapped.
        tp_group / expt_tp_group: tensor- and expert-tensor-parallel groups; default: Megatron's.
    """
    core_model = unwrap_model(model)
    if tp_group is None:
        tp_group = parallel_state.get_tensor_model_parallel_group(check_initialized=False)
    if expt_tp_group is None:
        expt_tp_group = parallel_state.get_expert_tensor_parallel_group(check_initialized=False)
    layers = list(core_model.decoder.layers) if hasattr(core_model, "decoder") else []
    layer_index = _layer_index_of(core_model)

    out = []
    for local_name, tensor in core_model.state_dict(keep_vars=True).items():
        if local_name.endswith("_extra_state") or tensor is None:
            continue
        if _QUANTIZER_STATE.search(local_name):
            continue
        canonical, expert_local, num_local = local_name, None, None
        canonical = _HYBRID_FINAL_NORM.get(canonical, canonical)
        mtp = _HYBRID_MTP_INNER_LAYER.match(local_name)
        if mtp:
            canonical = mtp.group(1) + mtp.group(2)
        m = _DECODER_LAYER.match(local_name)
        if m:
            layer = layers[int(m.group(1))]
            rest = _TE_FUSED_NORMS.get(m.group(2), m.group(2))
            num_local = getattr(layer.mlp, "num_local_experts", None)
            em = _SEQUENTIAL_EXPERT.match(rest)
            gm = _GROUPED_EXPERT.match(rest)
            if em:
                expert_local = int(em.group(1))
                rest = f"mlp.experts.local_experts.{layer.mlp.local_expert_indices[expert_local]}.{em.group(2)}"
            elif gm:
                expert_local = int(gm.group(2))
                rest = f"mlp.experts.local_experts.{layer.mlp.local_expert_indices[expert_local]}.{gm.group(1)}.weight"
            canonical = f"decoder.layers.{layer_index(layer)}.{rest}"
        is_expert = expert_local is not None
        partitioned = getattr(tensor, "tensor_model_parallel", False)
        out.append(
            ModelTensor(
                local_name=local_name,
                canonical_name=canonical,
                tensor=tensor,
                partition_dim=tensor.partition_dim if partitioned else None,
                tp_group=expt_tp_group if is_expert else tp_group,
                expert_local_index=expert_local,
                num_local_experts=num_local if is_expert else None,
            )
        )
    return out


@dataclass
class LoadReport:
    """What :func:`load_hf_weights` did."""

    loaded: List[str]
    """Canonical names loaded from HF tensors."""
    left_unmapped: List[str]
    """Canonical names with no HF source that the caller allowed to keep their initial values."""
    hf_tensors_read: List[str]


def padded_vocab_rows(chunks: Sequence[torch.nn.Module], tp: int, default: int) -> int:
    """Padded vocabulary of a live model, from the rows of this rank's piece of the embedding or
    output layer in one of its chunks (``default`` on a stage that has neither)."""
    for chunk in chunks:
        gpt = unwrap_model(chunk)
        if getattr(gpt, "pre_process", False):
            return gpt.embedding.word_embeddings.weight.shape[0] * tp
        if getattr(gpt, "post_process", False):
            return gpt.output_layer.weight.shape[0] * tp
    return default


@torch.no_grad()
def load_hf_weights(
    model: torch.nn.Module,
    read_hf_tensor: Callable[[str], torch.Tensor],
    ctx: MappingContext,
    table: WeightMappingTable,
    *,
    allow_unmapped: Callable[[str], bool] = lambda name: False,
    read_hf_slice: Optional[Callable[[str, int, int, int], torch.Tensor]] = None,
) -> LoadReport:
    """Fill this rank's pieces of a model chunk from HF tensors.

    Args:
        model: the (wrapped) GPTModel or HybridModel chunk of this rank.
        read_hf_tensor: returns a full HF tensor by name (any float dtype; cast once to the
            parameter's dtype here). Only the tensors this rank needs are requested.
        ctx: model dimensions for the mapping transforms.
        table: the weight table.
        allow_unmapped: predicate on canonical names (e.g. MTP layers) that may stay as
            initialised; any other tensor without a mapping is an error.
        read_hf_slice: ``read_hf_slice(name, dim, start, stop)`` returns part of an HF tensor.
            When given, a tensor-parallel piece is built from the parts of the HF tensors it is
            made of (``hf_ranges``/``shard_from_hf`` of its mapping), and nothing else of them is
            requested.
    """
    loaded, unmapped, read = [], [], []
    for mt in model_tensors(model):
        try:
            mapping, fields = table.resolve_megatron(mt.canonical_name)
        except KeyError:
            if allow_unmapped(mt.canonical_name):
                unmapped.append(mt.canonical_name)
                continue
            raise
        names = mapping.hf_names(**fields)
        read.extend(names)
        size, rank = _group_size_rank(mt.tp_group)
        dim = mt.partition_dim
        if dim is not None and size > 1 and read_hf_slice is not None:
            ranges = mapping.hf_ranges(ctx, dim, rank, size, tuple(mt.tensor.shape))
            parts = [read_hf_slice(n, dim, a, b) for n, (a, b) in zip(names, ranges)]
            piece = mapping.shard_from_hf(parts, ctx, dim, rank, size)
        else:
            piece = mapping.to_megatron([read_hf_tensor(n) for n in names], ctx)
            if dim is not None:
                piece = mapping.shard(piece, dim, rank, size)
        if piece.shape != mt.tensor.shape:
            raise ValueError(
                f"{mt.canonical_name} (from {list(names)}): built shape {tuple(piece.shape)}, "
                f"model holds {tuple(mt.tensor.shape)}"
            )
        mt.tensor.data.copy_(piece.to(dtype=mt.tensor.dtype))
        loaded.append(mt.canonical_name)
    return LoadReport(loaded=loaded, left_unmapped=unmapped, hf_tensors_read=read)


def _all_gather(tensor: torch.Tensor, group) -> List[torch.Tensor]:
    size, _ = _group_size_rank(group)
    if size == 1:
        return [tensor]
    pieces = [torch.empty_like(tensor) for _ in range(size)]
    torch.distributed.all_gather(pieces, tensor.contiguous(), group=group)
    return pieces


@torch.no_grad()
def iter_hf_weights(
    model: torch.nn.Module,
    ctx: MappingContext,
    table: WeightMappingTable,
    *,
    tensor_of: Callable[[torch.Tensor], Optional[torch.Tensor]] = lambda t: t.detach(),
    ep_group: Optional[torch.distributed.ProcessGroup] = None,
    skip_unmapped: Callable[[str], bool] = lambda name: False,
) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, full tensor)`` for this pipeline stage's tensors.

    Tensor-parallel pieces are gathered, and expert weights are gathered over the expert-parallel
    group, so every rank of a stage yields the same complete tensors. It is collective: all ranks
    of the stage's TP and EP groups must iterate together.

    Args:
        tensor_of: what to export from each parameter/buffer: the value by default; for example
            ``lambda p: p.main_grad`` exports gradients under HF names. Tensors for which it
            returns None are skipped (on every rank alike: the model structure is the same).
        ep_group: expert-parallel group; default: Megatron's.
        skip_unmapped: predicate on canonical names without HF mapping to skip (MTP layers);
            any other unmapped tensor raises ``KeyError``.
    """
    if ep_group is None:
        ep_group = parallel_state.get_expert_model_parallel_group(check_initialized=False)
    for mt in model_tensors(model):
        try:
            mapping, fields = table.resolve_megatron(mt.canonical_name)
        except KeyError:
            if skip_unmapped(mt.canonical_name):
                continue
            raise
        local = tensor_of(mt.tensor)
        if local is None:
            continue
        full = local
        if mt.partition_dim is not None:
            full = mapping.unshard(_all_gather(local, mt.tp_group), mt.partition_dim)
        if not mt.is_expert:
            yield from zip(mapping.hf_names(**fields), mapping.to_hf(full, ctx))
            continue
        for ep_rank, expert_full in enumerate(_all_gather(full, ep_group)):
            expert = ep_rank * mt.num_local_experts + mt.expert_local_index
            names = mapping.hf_names(**{**fields, "expert": expert})
            yield from zip(names, mapping.to_hf(expert_full, ctx))
