# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Safetensors files planned before any data is read, and written in place.

Every tensor's name, shape and dtype is known from the model layout before a byte of the
checkpoint is read, so each file's header (and therefore every tensor's offset) is fixed first;
the data of each tensor is then written straight to its place, in any order, and no shard is ever
assembled in memory.
"""

import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError

__all__ = ["PlannedTensor", "SafetensorsShard", "ShardPlan", "assign_shards"]

logger = logging.getLogger(__name__)

_SAFETENSORS_NAMES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float8_e4m3fn: "F8_E4M3",
}


@dataclass
class PlannedTensor:
    """One tensor of the HF output, planned before any data is read."""

    name: str
    shape: Tuple[int, ...]
    dtype: torch.dtype
    shard: int = -1
    offset: int = -1
    """Byte offset in the shard's data section."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def header_entry(self) -> Dict:
        return {
            "dtype": _SAFETENSORS_NAMES[self.dtype],
            "shape": list(self.shape),
            "data_offsets": [self.offset, self.offset + self.nbytes],
        }


def _entry_bound(output: PlannedTensor, max_offset: int) -> int:
    """Upper bound of the header bytes ``output`` adds (offsets printed at their widest)."""
    entry = {
        "dtype": _SAFETENSORS_NAMES[output.dtype],
        "shape": list(output.shape),
        "data_offsets": [max_offset, max_offset],
    }
    return len(json.dumps({output.name: entry}, separators=(",", ":"))) - 1  # "{" / "}" -> ","


_HEADER_FIXED = len(json.dumps({"__metadata__": {"format": "pt"}}, separators=(",", ":"))) + 8 + 7
"""Length field, metadata entry and alignment padding of a safetensors header."""


def assign_shards(groups: List[List[PlannedTensor]], max_shard_bytes: int) -> int:
    """Packs groups (a weight and its scale stay together) in order into shards whose file size
    is at most ``max_shard_bytes``; a group that alone exceeds it gets a shard of its own.
    Returns the number of shards."""
    shard, size = 0, 0
    for group in groups:
        need = sum(o.nbytes + _entry_bound(o, max_shard_bytes) for o in group)
        if size and size + need > max_shard_bytes:
            shard, size = shard + 1, 0
        if not size:
            size = _HEADER_FIXED
            if size + need > max_shard_bytes:
                logger.warning(
                    "%s (%d bytes) exceeds the shard size %d; it gets a shard of its own",
                    group[0].name,
                    group[0].nbytes,
                    max_shard_bytes,
                )
        for output in group:
            output.shard = shard
        size += need
    return shard + 1 if groups else 0


class ShardPlan:
    """Every output tensor with its shard and file name, planned before any data is read.

    Args:
        groups: tensors that must share a shard (a weight and its scale), in file order.
        max_shard_bytes: largest file; a group that alone exceeds it gets a file of its own.
    """

    def __init__(self, groups: List[List[PlannedTensor]], max_shard_bytes: int):
        num_shards = assign_shards(groups, max_shard_bytes)
        outputs = [o for g in groups for o in g]
        self.total_bytes = sum(o.nbytes for o in outputs)
        width = max(5, len(str(num_shards)))
        # Zero-based like the releases, with an "of" count that matches the number of files.
        self.file_names = [
            f"model-{i:0{width}d}-of-{num_shards:0{width}d}.safetensors" for i in range(num_shards)
        ]
        self.outputs_of_shard: Dict[int, List[PlannedTensor]] = {}
        for o in outputs:
            self.outputs_of_shard.setdefault(o.shard, []).append(o)
        self.shard_of = {o.name: o.shard for o in outputs}


class SafetensorsShard:
    """A safetensors file whose header is written first; tensor data is then written at its
    planned offset in any order. Tensors are laid out by descending element size (as safetensors
    itself does), so every tensor is aligned to its element size."""

    def __init__(self, index: int, path: Path, outputs: List[PlannedTensor]):
        self.index = index
        self.path = path
        offset = 0
        for output in sorted(outputs, key=lambda o: (-o.dtype.itemsize, o.name)):
            output.offset = offset
            offset += output.nbytes
        self.data_bytes = offset
        self._pending = {o.name: o for o in outputs}
        header = {"__metadata__": {"format": "pt"}}
        header.update((o.name, o.header_entry()) for o in sorted(outputs, key=lambda o: o.offset))
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._data_start = 8 + len(raw)
        self.file_bytes = self._data_start + self.data_bytes
        self._stream = open(path, "wb")
        self._stream.write(struct.pack("<Q", len(raw)))
        self._stream.write(raw)
        self._stream.truncate(self.file_bytes)

    def write(self, name: str, tensor: torch.Tensor) -> int:
        output = self._pending.pop(name)
        if tuple(tensor.shape) != output.shape or tensor.dtype != output.dtype:
            raise CheckpointError(
                f"{self.path}: internal error: {name} is {tensor.dtype} {list(tensor.shape)}, "
                f"planned {output.dtype} {list(output.shape)}"
            )
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._stream.seek(self._data_start + output.offset)
        self._stream.write(data.data)
        return output.nbytes

    def close(self) -> None:
        if self._pending:
            raise CheckpointError(
                f"{self.path}: internal error: tensors {sorted(self._pending)[:5]} never written"
            )
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()

    def abort(self) -> None:
        if not self._stream.closed:
            self._stream.close()
