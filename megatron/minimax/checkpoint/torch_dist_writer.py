# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Stream tensors into a torch_dist checkpoint that megatron-core's ``dist_checkpointing.load``
reads, one chunk at a time.

megatron-core's own save (``dist_checkpointing.save``) needs every tensor of the model in memory;
PyTorch's ``FileSystemWriter`` keeps references to every tensor of a file until the file is
done. This writer produces the same on-disk format (PyTorch DCP, ``torch.save`` per chunk,
a pickled ``Metadata`` in ``.metadata``, megatron's ``metadata.json`` and ``common_state``
object) while holding only the chunk being written. Each record starts on a 4 KiB boundary
and data files are written with ``O_DIRECT`` where possible (:mod:`aligned_record_file`); the
DCP reader seeks to each record's offset, so the padding between records is never read.
"""

import contextlib
import os
import pickle
import threading
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from megatron.minimax.checkpoint.aligned_record_file import AlignedRecordFile
from megatron.minimax.checkpoint.dist_checkpoint_layout import CheckpointChunk

COMMON_STATE_KEY = "common_state/shard_0_1"
"""Where megatron-core (0.19) keeps the non-tensor part of a checkpoint: a ShardedObject
``common_state`` of global shape (1,) at offset (0,)."""

CHECKPOINT_VERSION = 3.0
"""megatron-training's checkpoint version; below 2.0 it would reorder QKV on load."""


class TorchDistFile:
    """One ``.distcp`` data file; written by one thread."""

    def __init__(self, writer: "TorchDistWriter", relative_path: str):
        self._writer = writer
        self.relative_path = relative_path
        self._file = AlignedRecordFile(writer.directory / relative_path)

    def _write_lock(self):
        if self._file.direct:
            return contextlib.nullcontext()
        return self._writer._buffered_write_lock

    def write_chunk(self, chunk: CheckpointChunk, tensor: torch.Tensor) -> int:
        """Write one tensor chunk; returns the bytes it takes in the file (padding included)."""
        if tuple(tensor.shape) != chunk.chunk_shape or tensor.dtype != chunk.dtype:
            raise ValueError(
                f"{chunk.key} at {chunk.global_offset}: chunk is {tensor.dtype} "
                f"{tuple(tensor.shape)}, expected {chunk.dtype} {chunk.chunk_shape}"
            )
        tensor = tensor.detach().cpu().contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        storage = tensor.untyped_storage()
        if tensor.storage_offset() or storage.nbytes() != nbytes:
            # torch.save writes a tensor's whole storage; a view of a larger tensor is saved as
            # a tensor over a slice of that storage (shared memory, no copy): exactly the chunk,
            # the same bytes as saving a copy of it.
            start = tensor.storage_offset() * tensor.element_size()
            view = storage[start : start + nbytes]
            tensor = torch.empty(0, dtype=tensor.dtype).set_(view, 0, tensor.shape)
        with self._write_lock():
            torch.save(tensor, self._file)
            offset, length = self._file.end_record()
            on_disk = self._file.tell() - offset
        self._writer._record_chunk(chunk, _StorageInfo(self.relative_path, offset, length))
        return on_disk

    def write_object(self, unique_key: str, obj: Any) -> int:
        """Write a non-tensor object the way megatron-core stores ShardedObjects (a pickled
        one-element list: the object's shards held by this writer)."""
        with self._write_lock():
            torch.save([obj], self._file)
            offset, length = self._file.end_record()
        self._writer._record_object(unique_key, _StorageInfo(self.relative_path, offset, length))
        return length

    def close(self) -> None:
        self._file.close()


class TorchDistWriter:
    """Writes a torch_dist checkpoint directory.

    Args:
        directory: the checkpoint directory (created; must be empty).
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Through the page cache (a filesystem that refuses O_DIRECT), one chunk is written at a
        # time, whichever file it goes to: two threads writing 3.8 GB each into the page cache at
        # once took 12 s on a 2-core VM, one after the other 5.4 s (the kernel's copies contend).
        # O_DIRECT writes run concurrently.
        self._buffered_write_lock = threading.Lock()
        self._tensors: Dict[str, Tuple[Tuple[int, ...], torch.dtype, List]] = {}
        self._objects: Dict[str, _StorageInfo] = {}
        self._storage: Dict[MetadataIndex, _StorageInfo] = {}
        self._files: List[TorchDistFile] = []

    def open_file(self) -> TorchDistFile:
        with self._lock:
            f = TorchDistFile(self, f"__0_{len(self._files)}.distcp")
            self._files.append(f)
        return f

    def _record_chunk(self, chunk: CheckpointChunk, info: _StorageInfo) -> None:
        with self._lock:
            shape, dtype, chunks = self._tensors.setdefault(
                chunk.key, (chunk.global_shape, chunk.dtype, [])
            )
            if shape != chunk.global_shape or dtype != chunk.dtype:
                raise ValueError(
                    f"{chunk.key}: chunk of global {chunk.dtype} {chunk.global_shape} in a tensor "
                    f"of global {dtype} {shape}"
                )
            index = MetadataIndex(chunk.key, torch.Size(chunk.global_offset))
            if index in self._storage:
                raise ValueError(f"{chunk.key}: chunk at {chunk.global_offset} written twice")
            chunks.append(
                ChunkStorageMetadata(
                    offsets=torch.Size(chunk.global_offset), sizes=torch.Size(chunk.chunk_shape)
                )
            )
            self._storage[index] = info

    def _record_object(self, unique_key: str, info: _StorageInfo) -> None:
        with self._lock:
            if unique_key in self._objects:
                raise ValueError(f"object {unique_key} written twice")
            self._objects[unique_key] = info
            self._storage[MetadataIndex(unique_key)] = info

    def written_chunks(self) -> Iterable[Tuple[str, Tuple[int, ...]]]:
        return [
            (index.fqn, tuple(index.offset)) for index in self._storage if index.offset is not None
        ]

    def finish(self, common_state: Dict[str, Any]) -> None:
        """Write the common state, ``.metadata`` and, last, megatron's ``metadata.json`` (whose
        presence marks a complete checkpoint)."""
        from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
        from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

        f = self.open_file()
        f.write_object(COMMON_STATE_KEY, common_state)
        for data_file in self._files:
            data_file.close()

        state_dict_metadata: Dict[str, Any] = {}
        for key, (shape, dtype, chunks) in sorted(self._tensors.items()):
            # Sorted: threads record chunks in whatever order they finish.
            chunks = sorted(chunks, key=lambda c: tuple(c.offsets))
            state_dict_metadata[key] = TensorStorageMetadata(
                properties=TensorProperties(dtype=dtype), size=torch.Size(shape), chunks=chunks
            )
        for key in self._objects:
            state_dict_metadata[key] = BytesStorageMetadata()
        metadata = Metadata(
            state_dict_metadata=state_dict_metadata,
            planner_data={},
            storage_data=self._storage,
            storage_meta=StorageMeta(checkpoint_id=str(self.directory), save_id=str(uuid.uuid4())),
        )
        from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION

        metadata.version = CURRENT_DCP_VERSION
        with open(self.directory / ".metadata", "wb") as stream:
            pickle.dump(metadata, stream)
            stream.flush()
            os.fsync(stream.fileno())
        strategy = TorchDistSaveShardedStrategy()
        save_config(CheckpointingConfig(strategy.backend, strategy.version), str(self.directory))
