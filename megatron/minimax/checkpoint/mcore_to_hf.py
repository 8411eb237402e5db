# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Export a Megatron torch_dist MiniMax-M2 checkpoint to the released HF format, streaming.

The checkpoint is read lazily: its ``.metadata`` is parsed once, the model layout (keys, global
shapes, chunk offsets, GLU split of expert ``linear_fc1``) is taken from the model's own
``sharded_state_dict()`` at TP=PP=EP=1 (:mod:`dist_checkpoint_layout`), and the regions of a few
model tensors at a time are read through PyTorch DCP, which reshards whatever layout the checkpoint
was saved at. Each tensor is mapped to its HF tensors by the weight table, cast or quantised, and
written straight to its place in a safetensors shard whose header was planned before any data was
read (all names, shapes and dtypes are known from the layout). Memory therefore holds one read
group of model tensors plus the HF tensors of one of them, whatever the checkpoint size; no shard
is ever assembled in memory.

FP8 rules (``fmt="fp8"``):

* the tensors quantised are exactly those that have a ``weight_scale_inv`` companion in the
  reference directory; if the reference has none (a BF16 reference, or one without weights), the
  release's set is used, as the weight table records it (``fp8`` mappings: attention
  ``q/k/v/o_proj`` and every expert ``w1/w2/w3``);
* a quantised tensor whose value did not change since import, i.e. whose checkpoint value is bit
  for bit ``dequantize(reference FP8, reference scale)`` rounded to the checkpoint dtype, is written
  with the reference's own FP8 bytes and scale (byte-identical); any other is re-quantised with
  :func:`~megatron.minimax.checkpoint.fp8_blockwise.quantize_blockwise`;
* ``config.json`` keeps the reference's ``quantization_config`` (or gets the release's one when
  the reference has none).

Whatever the format, the router ``gate.weight`` and ``e_score_correction_bias`` are written in
fp32 and every other unquantised tensor (norms, embeddings, ``lm_head``) in bf16; BF16 exports have
no ``quantization_config``.
"""

import copy
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import struct
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch.distributed.checkpoint import FileSystemReader, load
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron.minimax.checkpoint.dist_checkpoint_layout import (
    CheckpointChunk,
    CheckpointUnit,
    dist_checkpoint_layout,
    single_process_group,
)
from megatron.minimax.checkpoint.fp8_blockwise import (
    dequantize_blockwise,
    quantize_blockwise,
    scale_inv_shape,
)
from megatron.minimax.checkpoint.hf_checkpoint import (
    CONFIG_FILE,
    INDEX_FILE,
    SCALE_SUFFIX,
    SINGLE_FILE,
    CheckpointError,
    HFCheckpoint,
    find_nonfinite,
)
from megatron.minimax.checkpoint.output_dir import atomic_output_dir, free_bytes
from megatron.minimax.models.conversion.mappings import (
    MappingContext,
    WeightMapping,
    WeightMappingTable,
)

__all__ = ["DistCheckpointReader", "ExportStats", "convert_mcore_to_hf", "parse_size"]

logger = logging.getLogger(__name__)

# torch_dist keys that belong to the model (everything else, e.g. optimizer state, is ignored).
_MODEL_KEY_PREFIXES = ("embedding.", "decoder.", "output_layer.", "mtp.")
_MTP_KEY = re.compile(r"mtp\.layers\.(\d+)\.")

# Files of the reference directory that are weights (never copied): safetensors shards and
# their index, and every pickle-based or foreign weight format.
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".pickle",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
)
_SKIPPED_DIRS = {".git", ".cache", ".huggingface"}

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*\Z")

_SAFETENSORS_NAMES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float8_e4m3fn: "F8_E4M3",
}

DEFAULT_READ_GROUP_BYTES = 256 * 2**20
"""Checkpoint bytes requested from DCP per read (consecutive model tensors, at least one)."""


def parse_size(text: Union[str, int]) -> int:
    """Parses a byte size: ``"5GB"``, ``"500MB"``, ``"1.5GB"``, ``"123"`` (decimal units: KB, MB,
    GB, TB = 10**3.. bytes; binary KiB, MiB, GiB, TiB are also accepted; case-insensitive).

    Raises:
        ValueError: if the text is not a positive size.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _SIZE.match(str(text))
        unit = m.group(2).upper() if m else None
        if unit not in _SIZE_UNITS:
            raise ValueError(f"invalid size {text!r}: expected e.g. 5GB, 500MB or a byte count")
        value = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise ValueError(f"invalid size {text!r}: must be positive")
    return value


@dataclass
class ExportStats:
    """What an export read and wrote."""

    source: str = ""
    fmt: str = "bf16"
    tensors_written: int = 0
    """HF weight tensors written (``weight_scale_inv`` companions not counted)."""
    scales_written: int = 0
    shards: int = 0
    bytes_read: int = 0
    """Checkpoint tensor bytes read."""
    reference_bytes_read: int = 0
    """Reference FP8 bytes read to decide byte-identical copies."""
    bytes_written: int = 0
    seconds: float = 0.0
    fp8_copied: int = 0
    """Quantised tensors written with the reference's FP8 bytes and scale (unchanged)."""
    fp8_quantized: int = 0
    """Quantised tensors re-quantised from the checkpoint value."""
    dropped_mtp_layers: int = 0
    dropped_mtp_tensors: int = 0
    ignored_entries: List[str] = field(default_factory=list)
    """Non-model torch_dist keys (optimizer state, ...) that were not exported."""
    copied_files: List[str] = field(default_factory=list)
    nonfinite: Dict[str, int] = field(default_factory=dict)
    """HF tensor name -> number of NaN/Inf values (in the checkpoint's value)."""

    def summary(self) -> str:
        gib = 1024**3
        rate = self.bytes_read / gib / self.seconds if self.seconds else 0.0
        lines = [
            f"exported {self.tensors_written} tensors (+{self.scales_written} weight_scale_inv) "
            f"as {self.fmt} in {self.shards} shards ({self.bytes_written / gib:.2f} GiB) from "
            f"{self.source}: read {self.bytes_read / gib:.2f} GiB in {self.seconds:.1f} s "
            f"({rate:.2f} GiB/s)"
        ]
        if self.fmt == "fp8":
            lines.append(
                f"fp8: {self.fp8_copied + self.fp8_quantized} tensors quantised: "
                f"{self.fp8_copied} unchanged (reference FP8 bytes and scales copied), "
                f"{self.fp8_quantized} re-quantised ({self.reference_bytes_read / gib:.2f} GiB "
                f"of the reference read to decide)"
            )
        if self.dropped_mtp_layers:
            lines.append(
                f"dropped {self.dropped_mtp_layers} MTP layers ({self.dropped_mtp_tensors} "
                f"checkpoint tensors): HF MiniMax-M2 has no MTP weights"
            )
        if self.ignored_entries:
            lines.append(
                f"ignored {len(self.ignored_entries)} non-model checkpoint tensors "
                f"(e.g. {self.ignored_entries[0]})"
            )
        if self.copied_files:
            lines.append(f"copied from the reference: {', '.join(self.copied_files)}")
        if self.nonfinite:
            worst = sorted(self.nonfinite.items(), key=lambda kv: -kv[1])[:5]
            lines.append(
                f"NaN/Inf in {len(self.nonfinite)} tensors "
                f"({sum(self.nonfinite.values())} values): {worst}"
            )
        else:
            lines.append("no NaN/Inf values")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- reading


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


# ---------------------------------------------------------------------------------------- writing


@dataclass
class _Output:
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


def _entry_bound(output: _Output, max_offset: int) -> int:
    """Upper bound of the header bytes ``output`` adds (offsets printed at their widest)."""
    entry = {
        "dtype": _SAFETENSORS_NAMES[output.dtype],
        "shape": list(output.shape),
        "data_offsets": [max_offset, max_offset],
    }
    return len(json.dumps({output.name: entry}, separators=(",", ":"))) - 1  # "{" / "}" -> ","


_HEADER_FIXED = len(json.dumps({"__metadata__": {"format": "pt"}}, separators=(",", ":"))) + 8 + 7
"""Length field, metadata entry and alignment padding of a safetensors header."""


def _assign_shards(groups: List[List[_Output]], max_shard_bytes: int) -> int:
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


class _SafetensorsShard:
    """A safetensors file whose header is written first; tensor data is then written at its
    planned offset in any order. Tensors are laid out by descending element size (as safetensors
    itself does), so every tensor is aligned to its element size."""

    def __init__(self, index: int, path: Path, outputs: List[_Output]):
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


# ---------------------------------------------------------------------------------------- planning


@dataclass
class _Job:
    """One model tensor: the unit to read and the HF tensors it becomes."""

    unit: CheckpointUnit
    mapping: WeightMapping
    names: Tuple[str, ...]
    shapes: Tuple[Tuple[int, ...], ...]
    out_dtypes: Tuple[torch.dtype, ...]
    quantized: Tuple[bool, ...]


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def _mtp_layers(keys: Iterable[str]) -> Set[int]:
    return {int(m.group(1)) for m in map(_MTP_KEY.match, keys) if m}


def _check_config(config: Dict, reader: DistCheckpointReader, config_path: Path) -> None:
    """The reference config.json must describe the checkpoint's model (one-line error naming the
    config value and the checkpoint tensor it contradicts)."""
    head_dim = config["head_dim"]
    derived = [
        ("hidden_size", "embedding.word_embeddings.weight", 1, 1),
        ("num_hidden_layers", "decoder.layers.self_attention.linear_qkv.weight", 0, 1),
        ("num_local_experts", "decoder.layers.mlp.router.weight", 1, 1),
        ("num_attention_heads", "decoder.layers.self_attention.q_layernorm.weight", 1, head_dim),
        ("num_key_value_heads", "decoder.layers.self_attention.k_layernorm.weight", 1, head_dim),
        ("intermediate_size", "decoder.layers.mlp.experts.experts.linear_fc2.weight", -1, 1),
    ]
    for hf_key, key, dim, unit in derived:
        if key not in reader.tensors:
            raise CheckpointError(
                f"{reader.directory}: no tensor {key}; not a MiniMax-M2 Megatron checkpoint"
            )
        shape = reader.shape(key)
        value = shape[dim]
        if value != config[hf_key] * unit:
            what = f"{hf_key}={config[hf_key]}"
            if unit != 1:
                what += f" (x head_dim {head_dim} = {config[hf_key] * unit})"
            raise CheckpointError(
                f"{config_path}: {what} does not match the checkpoint {reader.directory}, whose "
                f"{key} has shape {list(shape)} (dimension {dim} = {value})"
            )
    rows = reader.shape("embedding.word_embeddings.weight")[0]
    if rows < config["vocab_size"]:
        raise CheckpointError(
            f"{config_path}: vocab_size={config['vocab_size']} does not match the checkpoint "
            f"{reader.directory}, whose embedding has only {rows} rows"
        )


def _read_reference(path: Path) -> Tuple[Dict, Optional[HFCheckpoint]]:
    """The reference config, and its weights when it has any (a directory with only config and
    tokenizer files is a valid reference for a BF16 export or a release-set FP8 export)."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: reference directory does not exist")
    if (path / INDEX_FILE).is_file() or (path / SINGLE_FILE).is_file():
        reference = HFCheckpoint(path)
        reference.validate()
        return dict(reference.config), reference
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (the reference needs config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: cannot parse JSON: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: not a JSON object")
    return config, None


def _export_config(config: Dict, fmt: str, quantization_config: Optional[Dict]) -> Dict:
    out = copy.deepcopy(config)
    out.pop("quantization_config", None)
    if fmt == "fp8":
        out["quantization_config"] = copy.deepcopy(quantization_config)
    # Unquantised tensors are bf16 in both formats (the router is fp32 in both).
    out["torch_dtype"] = "bfloat16"
    if "dtype" in out:
        out["dtype"] = "bfloat16"
    return out


def _allowed_roots(root: Path) -> List[Path]:
    root = root.resolve()
    roots = [root]
    if root.parent.name == "snapshots":
        # huggingface_hub cache: snapshots/<rev>/<file> -> ../../blobs/<sha>.
        roots.append(root.parent.parent / "blobs")
    return roots


def _copy_reference_files(reference: Path, destination: Path) -> List[str]:
    """Copies every non-weight file of the reference (tokenizer, chat template, generation config,
    remote code, README, ...) except config.json; returns the relative paths copied."""
    roots = _allowed_roots(reference)
    copied = []
    for dirpath, dirnames, filenames in os.walk(reference):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        rel_dir = Path(dirpath).relative_to(reference)
        for name in sorted(filenames):
            rel = rel_dir / name
            lower = name.lower()
            if rel == Path(CONFIG_FILE) or lower.endswith(_WEIGHT_SUFFIXES):
                continue
            if lower.endswith(".index.json") and (
                ".safetensors." in lower or ".bin." in lower or lower == INDEX_FILE
            ):
                continue
            source = Path(dirpath) / name
            resolved = source.resolve()
            if not resolved.is_file() or not any(resolved.is_relative_to(r) for r in roots):
                logger.warning(
                    "not copying %s: it resolves outside the reference directory", source
                )
                continue
            (destination / rel_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(resolved, destination / rel)
            copied.append(rel.as_posix())
    return copied


class _Progress:
    def __init__(self, enabled: bool, total_bytes: int, total_tensors: int):
        self._bar = None
        self._total_tensors = total_tensors
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                dynamic_ncols=True,
                file=sys.stderr,
                desc="mcore-to-hf",
            )

    def update(self, nbytes: int, tensors_done: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)
            self._bar.set_postfix_str(
                f"tensors {tensors_done}/{self._total_tensors}", refresh=False
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def convert_mcore_to_hf(
    load_dir: Union[str, os.PathLike],
    save_dir: Union[str, os.PathLike],
    hf_reference_dir: Union[str, os.PathLike],
    *,
    fmt: str = "bf16",
    max_shard_bytes: int = 5 * 10**9,
    drop_mtp: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    read_group_bytes: int = DEFAULT_READ_GROUP_BYTES,
) -> ExportStats:
    """Export a Megatron torch_dist MiniMax-M2 checkpoint to a HF directory, streaming.

    Args:
        load_dir: a Megatron checkpoint root (``latest_checkpointed_iteration.txt`` naming
            ``release`` or an iteration) or a torch_dist directory. Any parallel layout; keys
            that are not model tensors (optimizer state, ...) are ignored and reported.
        save_dir: output directory; written into a hidden sibling and renamed when complete.
        hf_reference_dir: the HF directory the model came from: its config.json (checked against
            the checkpoint), every non-weight file (copied), and for ``fmt="fp8"`` which tensors
            are quantised and their original FP8 bytes.
        fmt: ``"bf16"`` or ``"fp8"`` (see the module docstring for the FP8 rules).
        max_shard_bytes: largest safetensors file; a single larger tensor gets its own file.
        drop_mtp: export a checkpoint that has MTP layers without them (HF MiniMax-M2 has no MTP
            weights); without it such a checkpoint is refused.
        overwrite: replace a non-empty ``save_dir``.
        progress: show a tqdm bar (bytes, tensors, rate) on stderr.
        read_group_bytes: checkpoint bytes read per DCP request (consecutive tensors; bounds the
            read buffer, at least one tensor).

    Returns:
        :class:`ExportStats`.

    Raises:
        CheckpointError: bad input or output: a one-line message naming the file and tensor.
    """
    start = time.time()
    if fmt not in ("bf16", "fp8"):
        raise ValueError(f"fmt must be 'bf16' or 'fp8', got {fmt!r}")
    max_shard_bytes = parse_size(max_shard_bytes)
    load_dir, save_dir, reference_dir = Path(load_dir), Path(save_dir), Path(hf_reference_dir)
    if not load_dir.is_dir():
        raise CheckpointError(f"{load_dir}: checkpoint directory does not exist")
    for source in (load_dir, reference_dir):
        a, b = save_dir.resolve(), source.resolve()
        if a == b or a.is_relative_to(b) or b.is_relative_to(a):
            raise CheckpointError(f"{save_dir}: the output must not overlap the input {source}")

    from megatron.minimax.models.minimax_m2.hf_config import minimax_m2_config_from_hf
    from megatron.minimax.models.minimax_m2.parity import resolve_dist_checkpoint_dir
    from megatron.minimax.models.minimax_m2.weight_mapping import (
        MINIMAX_M2_WEIGHTS,
        RELEASE_QUANTIZATION_CONFIG,
        mapping_context,
    )

    try:
        dist_dir = Path(resolve_dist_checkpoint_dir(load_dir))
    except ValueError as e:
        raise CheckpointError(f"{load_dir}/latest_checkpointed_iteration.txt: {e}") from None
    reader = DistCheckpointReader(dist_dir)
    config, reference = _read_reference(reference_dir)
    config_path = reference_dir / CONFIG_FILE
    try:
        megatron_config, model_args = minimax_m2_config_from_hf(config)
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from None

    # --- what the checkpoint holds
    stats = ExportStats(source=str(dist_dir), fmt=fmt)
    if "embedding.word_embeddings.weight" not in reader.tensors:
        raise CheckpointError(
            f"{dist_dir}: no embedding.word_embeddings.weight; not a MiniMax-M2 model checkpoint"
        )
    dtype = reader.dtype("embedding.word_embeddings.weight")
    model_keys = [k for k in reader.tensors if k.startswith(_MODEL_KEY_PREFIXES)]
    stats.ignored_entries = sorted(
        k for k in reader.tensors if not k.startswith(_MODEL_KEY_PREFIXES)
    )
    mtp_keys = [k for k in model_keys if k.startswith("mtp.")]
    if mtp_keys:
        layers = _mtp_layers(mtp_keys)
        if not drop_mtp:
            raise CheckpointError(
                f"{dist_dir}: the checkpoint has {len(layers)} MTP layers; HF MiniMax-M2 has no "
                f"MTP weights, pass --drop-mtp to export without them"
            )
        stats.dropped_mtp_layers = len(layers)
        stats.dropped_mtp_tensors = len(mtp_keys)
    _check_config(config, reader, config_path)

    # The group is only needed to build the (meta) model for the layout.
    with single_process_group():
        layout = dist_checkpoint_layout(config, dtype)
    units = _match_layout(layout.units, reader, config_path)
    expected_keys = {c.key for u in units for c in u.chunks}
    unexpected = sorted(set(model_keys) - expected_keys - set(mtp_keys))
    if unexpected:
        raise CheckpointError(
            f"{dist_dir}: tensors {unexpected[:5]} are not part of the MiniMax-M2 model that "
            f"{config_path} describes"
        )

    padded_vocab = reader.shape("embedding.word_embeddings.weight")[0]
    ctx = mapping_context(megatron_config, model_args, padded_vocab_size=padded_vocab)

    # --- which HF tensors are FP8, and how
    quantization_config = None
    block_size = (128, 128)
    quantized_names: Set[str] = set()
    if fmt == "fp8":
        if reference is not None and reference.quantization_config is not None:
            quantization_config = reference.quantization_config
            block_size = reference.block_size
        else:
            quantization_config = RELEASE_QUANTIZATION_CONFIG
        if reference is not None:
            quantized_names = {n for n in reference.tensor_names() if reference.is_quantized(n)}

    jobs = _plan_jobs(units, MINIMAX_M2_WEIGHTS, ctx, fmt, quantized_names)
    _check_exhaustive(jobs, MINIMAX_M2_WEIGHTS, config, quantized_names, reference_dir)
    plan = _ShardPlan(jobs, block_size, max_shard_bytes)

    bar = _Progress(progress, plan.total_bytes, sum(len(j.names) for j in jobs))
    try:
        with atomic_output_dir(save_dir, overwrite) as work:
            if free_bytes(work) < plan.total_bytes:
                raise CheckpointError(
                    f"{save_dir.parent}: {free_bytes(work) / 1024**3:.1f} GiB free, the export "
                    f"needs {plan.total_bytes / 1024**3:.1f} GiB"
                )
            try:
                weight_map = _write_shards(
                    work,
                    plan,
                    jobs,
                    reader,
                    reference,
                    ctx,
                    block_size,
                    stats,
                    bar,
                    read_group_bytes,
                )
            except OSError as e:
                raise CheckpointError(
                    f"{e.filename or save_dir}: cannot write ({e.strerror})"
                ) from None
            stats.shards = len(plan.file_names)
            index = {"metadata": {"total_size": plan.total_bytes}, "weight_map": weight_map}
            (work / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
            exported = _export_config(config, fmt, quantization_config)
            (work / CONFIG_FILE).write_text(json.dumps(exported, indent=2) + "\n")
            stats.copied_files = _copy_reference_files(reference_dir, work)
            stats.seconds = time.time() - start
    finally:
        bar.close()
        if reference is not None:
            reference.close()
    if stats.nonfinite:
        logger.warning(
            "%d exported tensors contain NaN/Inf: %s",
            len(stats.nonfinite),
            sorted(stats.nonfinite)[:5],
        )
    return stats


class _ShardPlan:
    """Every output tensor with its shard, planned before any data is read."""

    def __init__(self, jobs: List["_Job"], block_size: Tuple[int, int], max_shard_bytes: int):
        groups: List[List[_Output]] = []
        for job in jobs:
            for name, shape, dtype, quant in zip(
                job.names, job.shapes, job.out_dtypes, job.quantized
            ):
                group = [_Output(name, shape, dtype)]
                if quant:
                    scale_shape = scale_inv_shape(shape, block_size)
                    group.append(_Output(name + SCALE_SUFFIX, scale_shape, torch.float32))
                groups.append(group)
        num_shards = _assign_shards(groups, max_shard_bytes)
        outputs = [o for g in groups for o in g]
        self.total_bytes = sum(o.nbytes for o in outputs)
        width = max(5, len(str(num_shards)))
        # Zero-based like the releases, with an "of" count that matches the number of files.
        self.file_names = [
            f"model-{i:0{width}d}-of-{num_shards:0{width}d}.safetensors" for i in range(num_shards)
        ]
        self.outputs_of_shard: Dict[int, List[_Output]] = {}
        for o in outputs:
            self.outputs_of_shard.setdefault(o.shard, []).append(o)
        self.shard_of = {o.name: o.shard for o in outputs}


def _write_shards(
    work: Path,
    plan: _ShardPlan,
    jobs: List["_Job"],
    reader: DistCheckpointReader,
    reference: Optional[HFCheckpoint],
    ctx: MappingContext,
    block_size: Tuple[int, int],
    stats: ExportStats,
    bar: _Progress,
    read_group_bytes: int,
) -> Dict[str, str]:
    """Reads the checkpoint group by group and writes every planned tensor; returns the sorted
    weight map. Shards are filled in order, so one file is open at a time."""
    shard: Optional[_SafetensorsShard] = None
    weight_map: Dict[str, str] = {}
    try:
        for read_group in _read_groups(jobs, read_group_bytes):
            pieces = iter(reader.read([c for job in read_group for c in job.unit.chunks]))
            for job in read_group:
                full = job.unit.from_chunks([next(pieces) for _ in job.unit.chunks])
                stats.bytes_read += job.unit.nbytes
                hf_tensors = job.mapping.to_hf(full, ctx)
                del full
                for name, value, dtype, quant in zip(
                    job.names, hf_tensors, job.out_dtypes, job.quantized
                ):
                    tensors = _convert(name, value, dtype, quant, reference, block_size, stats)
                    nbytes = 0
                    for out_name, tensor in tensors:
                        index = plan.shard_of[out_name]
                        if shard is None or shard.index != index:
                            if shard is not None:
                                shard.close()
                            path = work / plan.file_names[index]
                            shard = _SafetensorsShard(index, path, plan.outputs_of_shard[index])
                        nbytes += shard.write(out_name, tensor)
                        weight_map[out_name] = plan.file_names[index]
                    stats.bytes_written += nbytes
                    stats.tensors_written += 1
                    stats.scales_written += len(tensors) - 1
                    bar.update(nbytes, stats.tensors_written)
                del hf_tensors
        if shard is not None:
            shard.close()
            shard = None
    finally:
        if shard is not None:
            shard.abort()
    missing = sorted(set(plan.shard_of) - set(weight_map))
    if missing:
        raise CheckpointError(f"{work}: internal error: tensors {missing[:5]} never written")
    return dict(sorted(weight_map.items()))


def _match_layout(
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


def _plan_jobs(
    units: List[CheckpointUnit],
    table: WeightMappingTable,
    ctx: MappingContext,
    fmt: str,
    quantized_names: Set[str],
) -> List[_Job]:
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
        jobs.append(_Job(unit, mapping, names, shapes, tuple(out_dtypes), tuple(quantized)))
    return jobs


def _check_exhaustive(
    jobs: List[_Job],
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


def _read_groups(jobs: List[_Job], budget: int) -> Iterable[List[_Job]]:
    group, size = [], 0
    for job in jobs:
        if group and size + job.unit.nbytes > budget:
            yield group
            group, size = [], 0
        group.append(job)
        size += job.unit.nbytes
    if group:
        yield group


def _convert(
    name: str,
    value: torch.Tensor,
    out_dtype: torch.dtype,
    quantized: bool,
    reference: Optional[HFCheckpoint],
    block_size: Tuple[int, int],
    stats: ExportStats,
) -> List[Tuple[str, torch.Tensor]]:
    """The HF tensors (weight, then its scale when quantised) for one checkpoint value."""
    bad = find_nonfinite(value)
    if bad:
        stats.nonfinite[name] = bad
    if not quantized:
        return [(name, value.to(out_dtype))]
    if reference is not None and name in reference and reference.is_quantized(name):
        ref_q, ref_scale = reference.get_raw(name)
        stats.reference_bytes_read += reference.nbytes(name)
        if tuple(ref_q.shape) == tuple(value.shape):
            unchanged = dequantize_blockwise(ref_q, ref_scale, block_size).to(value.dtype)
            if _bit_equal(unchanged, value):
                stats.fp8_copied += 1
                return [(name, ref_q), (name + SCALE_SUFFIX, ref_scale.to(torch.float32))]
    if bad:
        raise CheckpointError(
            f"tensor {name} has {bad} NaN/Inf values and cannot be quantised to FP8 (export "
            f"with --format bf16 to inspect it)"
        )
    q, scale = quantize_blockwise(value, block_size)
    stats.fp8_quantized += 1
    return [(name, q), (name + SCALE_SUFFIX, scale)]
