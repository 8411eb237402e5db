# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Declarative HF <-> Megatron weight mappings.

A mapping relates one *canonical* Megatron tensor, named as in a single-rank model (global layer
and expert numbers, ``SequentialMLP`` expert names, local-spec norm names), to one or more HF
tensors. Names are patterns with ``{layer}`` and ``{expert}`` fields. Each mapping owns:

* ``to_megatron``/``to_hf``: the full-tensor transform in each direction;
* ``shard``/``unshard``: how the full tensor splits along its tensor-parallel dimension (plain
  chunks, except for fused tensors whose parts are split separately);
* ``hf_ranges``/``shard_from_hf``: which part of each HF tensor a rank's piece is made of, and
  how it is made from those parts alone (a rank reads only what it holds).

One table of mappings serves import, export, RL refit and the parity tools. Sharding *which*
rank holds *which* piece is read from the live model (see ``model_weights.py``), never from names.
"""

import dataclasses
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

_FIELD = re.compile(r"\{(layer|expert)\}")


def _compile(pattern: str) -> "re.Pattern[str]":
    parts = _FIELD.split(pattern)
    regex = "".join(
        f"(?P<{part}>\\d+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
    )
    return re.compile(regex + r"\Z")


def _fields(pattern: str) -> Tuple[str, ...]:
    return tuple(_FIELD.findall(pattern))


@dataclass(frozen=True)
class MappingContext:
    """Model dimensions that shape-changing mappings need."""

    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    """Unpadded (HF) vocabulary size."""
    padded_vocab_size: int
    """Megatron's padded vocabulary size."""


class WeightMapping:
    """Base class: one canonical Megatron tensor <-> the HF tensors it is made of.

    Args:
        megatron: canonical Megatron name pattern.
        hf: HF name patterns, in the order ``to_megatron`` takes them.
        dtype: a dtype this tensor always keeps (the fp32 router), else None (model dtype).
        fp8: the HF tensors are stored as block-wise FP8 (with a ``weight_scale_inv``) in
            FP8 releases.
    """

    def __init__(
        self,
        megatron: str,
        hf: Sequence[str],
        dtype: Optional[torch.dtype] = None,
        fp8: bool = False,
    ):
        if fp8 and dtype is not None:
            raise ValueError(f"{megatron}: a tensor with a fixed dtype {dtype} cannot be FP8")
        self.megatron = megatron
        self.hf = tuple(hf)
        self.dtype = dtype
        self.fp8 = fp8
        for pattern in self.hf:
            if set(_fields(pattern)) != set(_fields(megatron)):
                raise ValueError(f"fields of {pattern!r} differ from those of {megatron!r}")
        self._megatron_re = _compile(megatron)
        self._hf_re = tuple(_compile(p) for p in self.hf)

    def match_megatron(self, name: str) -> Optional[Dict[str, int]]:
        """Field values if ``name`` matches the Megatron pattern, else None."""
        m = self._megatron_re.match(name)
        return {k: int(v) for k, v in m.groupdict().items()} if m else None

    def match_hf(self, name: str) -> Optional[Dict[str, int]]:
        """Field values if ``name`` matches one of the HF patterns, else None."""
        for regex in self._hf_re:
            m = regex.match(name)
            if m:
                return {k: int(v) for k, v in m.groupdict().items()}
        return None

    def megatron_name(self, **fields: int) -> str:
        return self.megatron.format(**fields)

    def hf_names(self, **fields: int) -> Tuple[str, ...]:
        return tuple(p.format(**fields) for p in self.hf)

    def fields(self) -> Tuple[str, ...]:
        return _fields(self.megatron)

    def stored_dtype(self, fp8_release: bool, default: torch.dtype = torch.bfloat16) -> torch.dtype:
        """dtype of the HF tensors in a release: ``float8_e4m3fn`` for :attr:`fp8` tensors of an
        FP8 release, else :attr:`dtype`, else ``default``."""
        if fp8_release and self.fp8:
            return torch.float8_e4m3fn
        return self.dtype if self.dtype is not None else default

    def to_megatron(self, hf: Sequence[torch.Tensor], ctx: MappingContext) -> torch.Tensor:
        """Full canonical Megatron tensor from the HF tensors (in ``self.hf`` order)."""
        raise NotImplementedError

    def to_hf(self, tensor: torch.Tensor, ctx: MappingContext) -> Tuple[torch.Tensor, ...]:
        """HF tensors (in ``self.hf`` order) from the full canonical Megatron tensor."""
        raise NotImplementedError

    def shard(self, full: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
        """This TP rank's piece of the full tensor, partitioned along ``dim``."""
        if full.shape[dim] % size:
            raise ValueError(
                f"{self.megatron}: dimension {dim} of {tuple(full.shape)} is not divisible by "
                f"the tensor-parallel size {size}"
            )
        return full.chunk(size, dim=dim)[rank]

    def unshard(self, shards: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
        """Inverse of :meth:`shard` over all ranks' pieces, in rank order."""
        return torch.cat(list(shards), dim=dim)

    def hf_ranges(
        self, ctx: MappingContext, dim: int, rank: int, size: int, piece_shape: Sequence[int]
    ) -> Tuple[Tuple[int, int], ...]:
        """``[start, stop)`` along ``dim`` of each HF tensor (in ``self.hf`` order) that the
        piece of TP rank ``rank`` of ``size`` (of shape ``piece_shape``) is made of.

        The default is the rank's chunk of every HF tensor, right for tensors that are the same
        in both layouts (:class:`Rename`).
        """
        n = piece_shape[dim]
        return tuple((rank * n, (rank + 1) * n) for _ in self.hf)

    def shard_from_hf(
        self, parts: Sequence[torch.Tensor], ctx: MappingContext, dim: int, rank: int, size: int
    ) -> torch.Tensor:
        """This rank's piece (:meth:`shard` of the full tensor) from the :meth:`hf_ranges` parts
        of the HF tensors."""
        return self.to_megatron(parts, ctx)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.megatron!r} <- {list(self.hf)!r})"


class Rename(WeightMapping):
    """Same tensor under another name."""

    def __init__(
        self, megatron: str, hf: str, dtype: Optional[torch.dtype] = None, fp8: bool = False
    ):
        super().__init__(megatron, [hf], dtype, fp8)

    def to_megatron(self, hf, ctx):
        return hf[0]

    def to_hf(self, tensor, ctx):
        return (tensor,)


class VocabRows(WeightMapping):
    """Embedding/output rows: Megatron pads the vocabulary with zero rows (never seen by HF)."""

    def __init__(self, megatron: str, hf: str):
        super().__init__(megatron, [hf])

    def to_megatron(self, hf, ctx):
        (rows,) = hf
        if rows.shape[0] != ctx.vocab_size:
            raise ValueError(
                f"{self.hf[0]} has {rows.shape[0]} rows, vocab_size is {ctx.vocab_size}"
            )
        pad = ctx.padded_vocab_size - ctx.vocab_size
        return torch.nn.functional.pad(rows, (0, 0, 0, pad)) if pad else rows

    def to_hf(self, tensor, ctx):
        return (tensor[: ctx.vocab_size],)

    def hf_ranges(self, ctx, dim, rank, size, piece_shape):
        # The rank's rows of the padded vocabulary, less those that are padding.
        self._check_rows(dim)
        n = piece_shape[0]
        return ((min(rank * n, ctx.vocab_size), min((rank + 1) * n, ctx.vocab_size)),)

    def shard_from_hf(self, parts, ctx, dim, rank, size):
        self._check_rows(dim)
        (rows,) = parts
        pad = ctx.padded_vocab_size // size - rows.shape[0]
        return torch.nn.functional.pad(rows, (0, 0, 0, pad)) if pad else rows

    def _check_rows(self, dim):
        if dim != 0:
            raise ValueError(f"{self.megatron}: vocabulary rows split along dim 0, not {dim}")


class FusedQKV(WeightMapping):
    """``linear_qkv``: per query group g, the group's query heads, then K_g, then V_g.

    HF query head ``h`` belongs to group ``h // (heads / groups)``. TP splits the fused tensor by
    whole groups, so plain chunks along dim 0 are right.
    """

    def __init__(self, megatron: str, q: str, k: str, v: str, fp8: bool = False):
        super().__init__(megatron, [q, k, v], fp8=fp8)

    def to_megatron(self, hf, ctx):
        q, k, v = hf
        groups, head_dim = ctx.num_query_groups, ctx.head_dim
        heads_per_group = ctx.num_attention_heads // groups
        hidden = q.shape[-1]
        expected = (ctx.num_attention_heads * head_dim, groups * head_dim, groups * head_dim)
        if (q.shape[0], k.shape[0], v.shape[0]) != expected:
            raise ValueError(
                f"{self.hf}: q/k/v rows {(q.shape[0], k.shape[0], v.shape[0])}, expected "
                f"{expected}"
            )
        fused = torch.cat(
            [
                q.reshape(groups, heads_per_group * head_dim, hidden),
                k.reshape(groups, head_dim, hidden),
                v.reshape(groups, head_dim, hidden),
            ],
            dim=1,
        )
        return fused.reshape(-1, hidden)

    def to_hf(self, tensor, ctx):
        groups, head_dim = ctx.num_query_groups, ctx.head_dim
        heads_per_group = ctx.num_attention_heads // groups
        hidden = tensor.shape[-1]
        per_group = tensor.reshape(groups, (heads_per_group + 2) * head_dim, hidden)
        q, k, v = per_group.split([heads_per_group * head_dim, head_dim, head_dim], dim=1)
        return (q.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden))

    def hf_ranges(self, ctx, dim, rank, size, piece_shape):
        # The rank holds whole query groups: their query heads' rows of q, their rows of k, v.
        groups = self._groups_per_rank(ctx, dim, size)
        heads_per_group = ctx.num_attention_heads // ctx.num_query_groups
        q_rows = groups * heads_per_group * ctx.head_dim
        kv_rows = groups * ctx.head_dim
        return (
            (rank * q_rows, (rank + 1) * q_rows),
            (rank * kv_rows, (rank + 1) * kv_rows),
            (rank * kv_rows, (rank + 1) * kv_rows),
        )

    def shard_from_hf(self, parts, ctx, dim, rank, size):
        groups = self._groups_per_rank(ctx, dim, size)
        heads = groups * (ctx.num_attention_heads // ctx.num_query_groups)
        local = dataclasses.replace(ctx, num_attention_heads=heads, num_query_groups=groups)
        return self.to_megatron(parts, local)

    def _groups_per_rank(self, ctx, dim, size):
        if dim != 0 or ctx.num_query_groups % size:
            raise ValueError(
                f"{self.megatron}: splits by whole query groups along dim 0; got dim {dim}, "
                f"{ctx.num_query_groups} groups over {size} ranks"
            )
        return ctx.num_query_groups // size


class GatedFC1(WeightMapping):
    """SwiGLU ``linear_fc1 = cat(gate, up)``. Each TP rank holds ``cat(gate_r, up_r)``."""

    def __init__(self, megatron: str, gate: str, up: str, fp8: bool = False):
        super().__init__(megatron, [gate, up], fp8=fp8)

    def to_megatron(self, hf, ctx):
        gate, up = hf
        if gate.shape != up.shape:
            raise ValueError(f"{self.hf}: gate {tuple(gate.shape)} != up {tuple(up.shape)}")
        return torch.cat([gate, up], dim=0)

    def to_hf(self, tensor, ctx):
        return tuple(tensor.chunk(2, dim=0))

    def shard(self, full, dim, rank, size):
        if dim != 0:
            raise ValueError(f"{self.megatron}: GLU weights split along dim 0, not {dim}")
        gate, up = full.chunk(2, dim=0)
        return torch.cat([super().shard(gate, 0, rank, size), super().shard(up, 0, rank, size)])

    def unshard(self, shards, dim):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)

    def hf_ranges(self, ctx, dim, rank, size, piece_shape):
        # The piece is cat(gate_r, up_r): half of its rows come from each.
        if dim != 0:
            raise ValueError(f"{self.megatron}: GLU weights split along dim 0, not {dim}")
        n = piece_shape[0] // 2
        return ((rank * n, (rank + 1) * n), (rank * n, (rank + 1) * n))


class WeightMappingTable:
    """An ordered set of mappings with name resolution in both directions."""

    def __init__(self, mappings: Iterable[WeightMapping]):
        self.mappings: Tuple[WeightMapping, ...] = tuple(mappings)

    def __iter__(self) -> Iterator[WeightMapping]:
        return iter(self.mappings)

    def resolve_megatron(self, name: str) -> Tuple[WeightMapping, Dict[str, int]]:
        """The mapping of a canonical Megatron name and its field values (KeyError if none)."""
        for mapping in self.mappings:
            fields = mapping.match_megatron(name)
            if fields is not None:
                return mapping, fields
        raise KeyError(f"no HF mapping for Megatron tensor {name!r}")

    def resolve_hf(self, name: str) -> Tuple[WeightMapping, Dict[str, int]]:
        """The mapping an HF name belongs to and its field values (KeyError if none)."""
        for mapping in self.mappings:
            fields = mapping.match_hf(name)
            if fields is not None:
                return mapping, fields
        raise KeyError(f"no Megatron mapping for HF tensor {name!r}")

    def expand(
        self, num_layers: int, num_experts: int
    ) -> List[Tuple[WeightMapping, Dict[str, int]]]:
        """Every (mapping, fields) of a model with these sizes, in table order."""
        out = []
        for mapping in self.mappings:
            fields = mapping.fields()
            layers = range(num_layers) if "layer" in fields else [None]
            experts = range(num_experts) if "expert" in fields else [None]
            for layer in layers:
                for expert in experts:
                    values = {}
                    if layer is not None:
                        values["layer"] = layer
                    if expert is not None:
                        values["expert"] = expert
                    out.append((mapping, values))
        return out
