# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Read regions of a torch_dist checkpoint's tensors, whatever layout it was saved at.

PyTorch DCP stores global shapes and the chunks each rank wrote; a region of a global tensor can
be read from any subset of the chunks. :class:`DistCheckpointReader` parses ``.metadata`` once and
turns each :meth:`~DistCheckpointReader.read` of :class:`~megatron.minimax.checkpoint.
dist_checkpoint_layout.CheckpointChunk` regions into one DCP load of only the stored chunks that
overlap them, into tensors it allocates (no process group needed).
"""

import json
import math
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.distributed.checkpoint import FileSystemReader, load
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron.minimax.checkpoint.dist_checkpoint_layout import CheckpointChunk
from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError

__all__ = ["DistCheckpointReader"]


class _CachedMetadataReader(FileSystemReader):
    """A DCP ``FileSystemReader`` that parses ``.metadata`` once per instance (DCP's ``load``
    asks for it on every call)."""

    def __init__(self, path: Union[str, os.PathLike]):
        super().__init__(path)
        self._metadata: Optional[Metadata] = None

    def read_metadata(self, *args, **kwargs) -> Metadata:
        if self._metadata is None:
            self._metadata = super().read_metadata(*args, **kwargs)
        return self._metadata


class _RegionPlanner(LoadPlanner):
    """Loads chunk regions of global tensors into caller-provided CPU tensors.

    ``state_dict`` maps ``(key, global_offset)`` to the destination tensor of that region (in the
    global tensor's rank, i.e. with prepended layer/expert axes of size 1).
    """

    def __init__(self, regions: Dict[Tuple[str, Tuple[int, ...]], torch.Tensor]):
        self.regions = regions
        self.covered: Dict[Tuple[str, Tuple[int, ...]], int] = {}

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        self.metadata = metadata

    def create_local_plan(self) -> LoadPlan:
        items: List[ReadItem] = []
        for (key, offset), dest in self.regions.items():
            md = self.metadata.state_dict_metadata[key]
            chunk = ChunkStorageMetadata(offsets=torch.Size(offset), sizes=dest.shape)
            reads = create_read_items_for_chunk_list(key, md, [chunk])
            self.covered[(key, offset)] = sum(math.prod(r.lengths) for r in reads)
            items.extend(reads)
        return LoadPlan(items)

    def create_global_plan(self, global_plan: List[LoadPlan]) -> List[LoadPlan]:
        return global_plan

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        return central_plan

    def load_bytes(self, read_item, value) -> None:
        raise CheckpointError(f"unexpected non-tensor read of {read_item.dest_index.fqn}")

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        index = read_item.dest_index
        dest = self.regions[(index.fqn, tuple(index.offset))]
        for dim, (offset, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            dest = dest.narrow(dim, offset, length)
        return dest

    def commit_tensor(self, read_item, tensor) -> None:
        pass


class DistCheckpointReader:
    """Reads regions of a torch_dist checkpoint's tensors, whatever layout it was saved at.

    ``.metadata`` is parsed once. Each :meth:`read` is one DCP load of only the stored chunks
    that overlap the requested regions.

    Args:
        directory: the torch_dist directory (the one holding ``.metadata``).
    """

    def __init__(self, directory: Union[str, os.PathLike]):
        self.directory = Path(directory)
        if not (self.directory / ".metadata").is_file():
            raise CheckpointError(
                f"{self.directory}: not a torch_dist checkpoint (no .metadata); only "
                f"--ckpt-format torch_dist checkpoints are supported"
            )
        backend = self._backend()
        if backend not in (None, "torch_dist"):
            raise CheckpointError(
                f"{self.directory}/metadata.json: sharded_backend is {backend!r}, only "
                f"'torch_dist' is supported"
            )
        self._reader = _CachedMetadataReader(self.directory)
        try:
            self.metadata: Metadata = self._reader.read_metadata()
        except Exception as e:  # pickle, EOF, ... errors of a corrupt file
            raise CheckpointError(f"{self.directory}/.metadata: cannot read ({e})") from e
        self.tensors: Dict[str, TensorStorageMetadata] = {
            key: md
            for key, md in self.metadata.state_dict_metadata.items()
            if isinstance(md, TensorStorageMetadata)
        }

    def _backend(self) -> Optional[str]:
        path = self.directory / "metadata.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text()).get("sharded_backend")
        except (OSError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{path}: cannot parse ({e})") from e

    def shape(self, key: str) -> Tuple[int, ...]:
        return tuple(self.tensors[key].size)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].properties.dtype

    def read(self, chunks: Sequence[CheckpointChunk]) -> List[torch.Tensor]:
        """The data of ``chunks`` (one new CPU tensor each, in the chunk's shape)."""
        regions = {}
        for chunk in chunks:
            regions[(chunk.key, chunk.global_offset)] = torch.empty(
                chunk.chunk_shape, dtype=chunk.dtype
            )
        planner = _RegionPlanner(regions)
        try:
            with warnings.catch_warnings():
                # One process reading on purpose (no_dist): torch warns about it all the same.
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                load({}, storage_reader=self._reader, planner=planner, no_dist=True)
        except CheckpointError:
            raise
        except Exception as e:
            keys = sorted({c.key for c in chunks})
            raise CheckpointError(
                f"{self.directory}: cannot read {keys[:3]}{' ...' if len(keys) > 3 else ''}: {e}"
            ) from e
        for chunk in chunks:
            got = planner.covered[(chunk.key, chunk.global_offset)]
            if got != math.prod(chunk.chunk_shape):
                raise CheckpointError(
                    f"{self.directory}: tensor {chunk.key} region at {list(chunk.global_offset)} "
                    f"of shape {list(chunk.chunk_shape)} is only partly stored ({got} of "
                    f"{math.prod(chunk.chunk_shape)} elements)"
                )
        return [regions[(c.key, c.global_offset)] for c in chunks]
