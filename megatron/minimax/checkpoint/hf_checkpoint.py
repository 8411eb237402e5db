# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Lazy, validated reader for MiniMax-M2-family Hugging Face checkpoints as released.

The released layout is ``config.json`` plus either ``model.safetensors.index.json`` and the shards
it names, or a single ``model.safetensors``. Shard names such as ``model-00000-of-00130`` are
zero-based and their "of" count need not match the number of files, so the index is the only source
of truth for which tensor lives where.

Nothing is read until asked for: a shard's header is parsed (and checked against the file size and
the index) the first time a tensor of that shard is touched, and tensors are read one at a time
through ``safetensors.safe_open``; a whole shard is never loaded. Pickle formats (``.bin``, ``.pt``)
are never opened.

FP8 tensors come with a ``<name>_scale_inv`` companion (``...weight`` -> ``...weight_scale_inv``),
the DeepSeek-V3 block format handled by :mod:`megatron.minimax.checkpoint.fp8_blockwise`.
:meth:`HFCheckpoint.get` dequantises them in fp32 before the single cast to the requested dtype.
"""

import json
import logging
import math
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Dict, List, Optional, Tuple, Union

import numpy
import torch
from safetensors import safe_open

from megatron.minimax.checkpoint.fp8_blockwise import (
    dequantize_blockwise,
    dequantized_is_finite,
    scale_inv_shape,
)

__all__ = ["CheckpointError", "HFCheckpoint", "find_nonfinite"]

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SCALE_SUFFIX = "_scale_inv"
ARCHITECTURE = "MiniMaxM2ForCausalLM"
MODEL_TYPE = "minimax_m2"

# safetensors refuses headers above 100 MB; a larger length field means a corrupt file.
_MAX_HEADER_BYTES = 100 * 1024 * 1024

_SAFETENSORS_DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_SCALE_DTYPES = ("F32", "BF16", "F16")


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed or unsafe. The message is one line naming the file
    (and the tensor, where one is involved)."""

    def __init__(self, message: str):
        # One line, so that log scrapers and test assertions see the whole diagnosis.
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class _TensorInfo:
    """One entry of a safetensors header."""

    dtype: str
    shape: Tuple[int, ...]
    nbytes: int
    offset: int = 0
    """Absolute file offset of the tensor's first byte."""


def find_nonfinite(t: torch.Tensor, chunk_elems: int = 1 << 24) -> int:
    """Counts NaN and +-Inf elements of a tensor, in chunks so that peak extra memory is bounded.

    Integer and bool tensors have none. FP8 tensors are widened chunk by chunk (``isfinite`` has no
    FP8 kernel).

    Args:
        t: any tensor.
        chunk_elems: elements examined at a time.

    Returns:
        The number of non-finite elements.
    """
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    flat = t.reshape(-1)
    widen = t.element_size() == 1
    count = 0
    for start in range(0, flat.numel(), chunk_elems):
        chunk = flat[start : start + chunk_elems]
        if widen:
            chunk = chunk.to(torch.float32)
        # One reduction settles the common case: a finite sum means no NaN/Inf (they propagate
        # through addition); only a non-finite sum, which overflow can also cause, is counted.
        if chunk.is_complex() or not torch.isfinite(chunk.sum()):
            count += int((~torch.isfinite(chunk)).sum())
    return count


def _read_safetensors_header(path: Path) -> Dict[str, _TensorInfo]:
    """Parses and checks a safetensors header without touching the tensor data.

    Checks the length field, the JSON, every entry's dtype/shape/offsets, and that the file holds
    exactly the bytes the header describes (a shorter file is truncated, a longer one corrupt).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CheckpointError(
                    f"{path}: truncated safetensors file ({size} bytes, no header length)"
                )
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > _MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: corrupt safetensors header (length field {header_len} bytes)"
                )
            if 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: truncated safetensors file: header needs {8 + header_len} bytes, "
                    f"file has {size}"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from e
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON: {e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")

    infos: Dict[str, _TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            valid = (
                isinstance(begin, int)
                and isinstance(end, int)
                and 0 <= begin <= end
                and isinstance(shape, list)
                and all(isinstance(d, int) and d >= 0 for d in shape)
            )
        except (TypeError, KeyError, ValueError):
            valid = False
        if not valid:
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor '{name}'")
        if dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dtype!r}")
        expected = math.prod(shape) * _SAFETENSORS_DTYPES[dtype].itemsize
        if end - begin != expected:
            raise CheckpointError(
                f"{path}: corrupt header: tensor '{name}' {dtype}{shape} needs {expected} bytes "
                f"but its data_offsets span {end - begin}"
            )
        infos[name] = _TensorInfo(dtype, tuple(shape), end - begin, 8 + header_len + begin)
        spans.append((begin, end, name))

    spans.sort()
    data_len = size - 8 - header_len
    prev_end, prev_name = 0, None
    for begin, end, name in spans:
        if begin < prev_end:
            raise CheckpointError(
                f"{path}: corrupt header: data of tensor '{name}' overlaps tensor '{prev_name}'"
            )
        prev_end, prev_name = end, name
    if prev_end > data_len:
        cut = [(begin, end, name) for begin, end, name in spans if end > data_len]
        _, end, name = cut[0]
        more = f" (and {len(cut) - 1} more after it)" if len(cut) > 1 else ""
        raise CheckpointError(
            f"{path}: truncated safetensors file: data of tensor '{name}'{more} ends at byte "
            f"{8 + header_len + end} but the file has {size} bytes"
        )
    if prev_end < data_len:
        raise CheckpointError(
            f"{path}: corrupt safetensors file: {data_len - prev_end} bytes after the last tensor "
            f"('{prev_name}') that the header does not describe"
        )
    return infos


class HFCheckpoint:
    """Lazy, validated view of a MiniMax-M2 (M2 / M2.1 / M2.5 / M2.7) Hugging Face directory.

    Construction reads ``config.json`` and the index (or the single file's header) and checks every
    file name the index uses; shard headers are read on first use. Names are the on-disk tensor
    names (``model.layers.0.block_sparse_moe.experts.3.w1.weight``).

    Args:
        hf_dir: the checkpoint directory. A Hugging Face cache snapshot (files symlinked into the
            repository's ``blobs/``) is accepted; any other symlink leaving ``hf_dir`` is refused.
        max_open_files: most shard handles kept open at once (least recently used are closed).

    Raises:
        CheckpointError: for a missing/invalid config, index, or file name.
    """

    def __init__(self, hf_dir: Union[str, os.PathLike], max_open_files: int = 8):
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        self.path = Path(hf_dir)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: checkpoint directory does not exist")
        self._max_open_files = max_open_files
        root = self.path.resolve()
        self._allowed_roots = [root]
        if root.parent.name == "snapshots":
            # huggingface_hub cache: snapshots/<rev>/<file> -> ../../blobs/<sha>.
            self._allowed_roots.append(root.parent.parent / "blobs")

        self.config: dict = self._read_config()
        self.quantization_config: Optional[dict] = self.config.get("quantization_config")
        self.block_size: Tuple[int, int] = self._read_block_size()

        self._headers: Dict[Path, Dict[str, _TensorInfo]] = {}
        self._handles: "OrderedDict[Path, object]" = OrderedDict()
        self._names_by_file: Dict[Path, List[str]] = {}
        self._weight_map: Dict[str, Path] = self._read_weight_map()
        for name, file in self._weight_map.items():
            self._names_by_file.setdefault(file, []).append(name)
        self._tensor_names = sorted(n for n in self._weight_map if not self._is_companion(n))
        self.bytes_read = 0
        """Tensor-data bytes read from the shards so far (weights and scales)."""

    # ------------------------------------------------------------------ public API

    def tensor_names(self) -> List[str]:
        """Sorted logical tensor names: every index entry except ``*_scale_inv`` companions."""
        return list(self._tensor_names)

    def __contains__(self, name: str) -> bool:
        return name in self._weight_map

    def is_quantized(self, name: str) -> bool:
        """Whether ``name`` has a ``<name>_scale_inv`` companion (i.e. is block-wise FP8)."""
        self._require(name)
        return name + SCALE_SUFFIX in self._weight_map

    def file_of(self, name: str) -> Path:
        """The shard file holding ``name``."""
        self._require(name)
        return self._weight_map[name]

    def shape(self, name: str) -> Tuple[int, ...]:
        """On-disk shape of ``name``, from the shard header (no tensor data is read)."""
        return self._info(name).shape

    def dtype(self, name: str) -> torch.dtype:
        """On-disk dtype of ``name``, from the shard header (no tensor data is read)."""
        return _SAFETENSORS_DTYPES[self._info(name).dtype]

    def get_raw(self, name: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Reads ``name`` exactly as stored, plus its ``scale_inv`` companion (or ``None``)."""
        scale_name = self._check_quantized_pair(name)
        tensor = self._read(name)
        scale = self._read(scale_name) if scale_name is not None else None
        return tensor, scale

    def get(self, name: str, dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
        """Reads ``name``; FP8 tensors are dequantised.

        Args:
            name: on-disk tensor name.
            dtype: result dtype. A quantised tensor is dequantised in fp32 and then cast once, so
                ``dtype=torch.bfloat16`` rounds each weight a single time. ``None`` returns the
                on-disk tensor unchanged (FP8 stays FP8, not dequantised).

        Returns:
            The tensor.
        """
        tensor, scale = self.get_raw(name)
        if dtype is None:
            return tensor
        if scale is not None:
            return self._dequantize(name, tensor, scale, dtype)
        return tensor.to(dtype)

    def get_slice(
        self, name: str, dim: int, start: int, stop: int, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Reads ``name[start:stop]`` along ``dim`` (0, or 1 of a 2-D tensor) without reading
        the rest of it, dequantised like :meth:`get`.

        Rows (``dim=0``) are one contiguous read; columns are one read per row. An FP8 tensor is
        read in whole blocks (the slice widened to block boundaries along ``dim``, with the
        scales of those blocks) and cut after dequantisation, so the values equal those of
        :meth:`get`.
        """
        info = self._info(name)
        shape = info.shape
        if not (dim == 0 or (dim == 1 and len(shape) == 2)) or not 0 <= start <= stop <= shape[dim]:
            raise ValueError(
                f"{name} {list(shape)}: cannot read [{start}:{stop}] along dimension {dim}"
            )
        scale_name = self._check_quantized_pair(name)
        if scale_name is None:
            return self._read(name, dim, start, stop).to(dtype)
        block = self.block_size[dim]
        first, last = start // block, -(-stop // block)
        raw = self._read(name, dim, first * block, min(last * block, shape[dim]))
        scale = self._read(scale_name, dim, first, last)
        value = self._dequantize(name, raw, scale, torch.float32)
        return value.narrow(dim, start - first * block, stop - start).to(dtype)

    def get_counting_nonfinite(
        self, name: str, dtype: torch.dtype = torch.float32
    ) -> Tuple[torch.Tensor, int]:
        """Like :meth:`get` (dequantised to ``dtype``), with the number of NaN/Inf values in the
        result. For an FP8 tensor, finiteness is settled from its bytes and scales where it
        can be (:func:`dequantized_is_finite`), so clean tensors are not scanned again."""
        tensor, scale = self.get_raw(name)
        if scale is None:
            tensor = tensor.to(dtype)
            return tensor, find_nonfinite(tensor)
        value = self._dequantize(name, tensor, scale, dtype)
        if dequantized_is_finite(tensor, scale, dtype):
            return value, 0
        return value, find_nonfinite(value)

    def _dequantize(
        self, name: str, tensor: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        try:
            return dequantize_blockwise(tensor, scale, self.block_size, dtype=dtype)
        except ValueError as e:
            raise CheckpointError(f"{self.file_of(name)}: tensor '{name}': {e}") from e

    def nbytes(self, name: str) -> int:
        """On-disk bytes of ``name`` plus its ``scale_inv`` companion, from the shard headers."""
        scale_name = self._check_quantized_pair(name)
        return self._info(name).nbytes + (self._info(scale_name).nbytes if scale_name else 0)

    def total_bytes(self) -> int:
        """Bytes of tensor data the index refers to (scales included), from the shard headers."""
        return sum(self._info(name).nbytes for name in self._weight_map)

    def validate(self, deep: bool = False) -> None:
        """Checks the whole checkpoint.

        Always (headers only, cheap): every shard's header and size, every index entry present in
        its shard, every shard accepted by ``safe_open``, every FP8 tensor paired with a correctly
        shaped scale, no scale without its weight. With ``deep=True`` it also reads every tensor
        and scale and rejects NaN/Inf.

        Raises:
            CheckpointError: on the first problem found.
        """
        for file in self._names_by_file:
            self._handle(file)
        for name in sorted(self._weight_map):
            if self._is_scale_name(name) and not self._is_companion(name):
                raise CheckpointError(
                    f"{self._weight_map[name]}: scale tensor '{name}' has no weight "
                    f"'{name[: -len(SCALE_SUFFIX)]}' in the index"
                )
        for name in self._tensor_names:
            self._check_quantized_pair(name)
        if self.quantization_config is None and any(
            self._is_companion(n) for n in self._weight_map
        ):
            logger.warning(
                "%s has FP8 tensors but config.json has no quantization_config; assuming "
                "block size %s",
                self.path,
                self.block_size,
            )
        if deep:
            for name in self._tensor_names:
                tensor, scale = self.get_raw(name)
                for what, t in ((name, tensor), (name + SCALE_SUFFIX, scale)):
                    bad = find_nonfinite(t) if t is not None else 0
                    if bad:
                        raise CheckpointError(
                            f"{self._weight_map[what]}: tensor '{what}' has {bad} NaN/Inf values"
                        )

    def close(self) -> None:
        """Closes every open shard handle (the object stays usable; handles reopen on demand)."""
        while self._handles:
            _, handle = self._handles.popitem(last=False)
            handle.__exit__(None, None, None)

    def __enter__(self) -> "HFCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # Handles hold file descriptors and mmaps; release them even without an explicit close().
        try:
            self.close()
        except Exception:  # interpreter shutdown: the handles go away with the process anyway
            pass

    def __repr__(self) -> str:
        return (
            f"HFCheckpoint({str(self.path)!r}, tensors={len(self._tensor_names)}, "
            f"files={len(self._names_by_file)})"
        )

    # ------------------------------------------------------------------ construction helpers

    def _safe_path(self, name: str, what: str) -> Path:
        """Resolves a file name from the index (or a fixed name) and refuses anything that leaves
        the checkpoint directory, by path syntax or by symlink."""
        if (
            not name
            or PurePosixPath(name).is_absolute()
            or PureWindowsPath(name).is_absolute()
            or PureWindowsPath(name).drive
        ):
            raise CheckpointError(f"{self.path}: {what} names file {name!r}: absolute path refused")
        candidate = self.path / name
        resolved = candidate.resolve()
        if not any(resolved.is_relative_to(root) for root in self._allowed_roots):
            raise CheckpointError(
                f"{self.path}: {what} names file {name!r}, which resolves to {resolved} outside "
                f"the checkpoint directory; refused"
            )
        return candidate

    def _read_json(self, path: Path) -> object:
        try:
            with open(path, "r", encoding="utf-8") as f:
                return json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: cannot parse JSON: {e}") from e

    def _read_config(self) -> dict:
        path = self.path / CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (every HF checkpoint needs config.json)")
        path = self._safe_path(CONFIG_FILE, "config")
        config = self._read_json(path)
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: not a JSON object")
        archs = config.get("architectures")
        if not isinstance(archs, list) or ARCHITECTURE not in archs:
            raise CheckpointError(
                f"{path}: architectures is {archs!r}, expected [{ARCHITECTURE!r}]"
            )
        if config.get("model_type") != MODEL_TYPE:
            raise CheckpointError(
                f"{path}: model_type is {config.get('model_type')!r}, expected {MODEL_TYPE!r}"
            )
        return config

    def _read_block_size(self) -> Tuple[int, int]:
        qc = self.quantization_config
        if qc is None:
            return (128, 128)
        where = self.path / CONFIG_FILE
        if not isinstance(qc, dict):
            raise CheckpointError(f"{where}: quantization_config is not an object")
        if qc.get("quant_method") != "fp8":
            raise CheckpointError(
                f"{where}: quantization_config.quant_method is {qc.get('quant_method')!r}; "
                f"only 'fp8' block-wise checkpoints are supported"
            )
        if qc.get("fmt", "float8_e4m3fn") not in ("float8_e4m3fn", "e4m3"):
            raise CheckpointError(
                f"{where}: quantization_config.fmt is {qc.get('fmt')!r}, expected 'float8_e4m3fn'"
            )
        block = qc.get("weight_block_size", [128, 128])
        if (
            not isinstance(block, (list, tuple))
            or len(block) != 2
            or not all(isinstance(b, int) and b > 0 for b in block)
        ):
            raise CheckpointError(
                f"{where}: quantization_config.weight_block_size is {block!r}, expected two "
                f"positive ints"
            )
        return (block[0], block[1])

    def _read_weight_map(self) -> Dict[str, Path]:
        index_path = self.path / INDEX_FILE
        single_path = self.path / SINGLE_FILE
        if index_path.is_file():
            return self._read_index(self._safe_path(INDEX_FILE, "checkpoint"))
        if single_path.is_file():
            file = self._safe_path(SINGLE_FILE, "checkpoint")
            return {name: file for name in self._header(file)}
        pickles = sorted(
            p.name
            for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt")
            for p in self.path.glob(pattern)
        )
        if pickles:
            raise CheckpointError(
                f"{self.path}: only pickle weight files found ({', '.join(pickles[:3])}"
                f"{', ...' if len(pickles) > 3 else ''}); they are never loaded (unsafe), convert "
                f"the checkpoint to safetensors"
            )
        raise CheckpointError(f"{self.path}: neither {INDEX_FILE} nor {SINGLE_FILE} exists")

    def _read_index(self, index_path: Path) -> Dict[str, Path]:
        index = self._read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: no 'weight_map' object (or it is empty)")
        resolved: Dict[str, Path] = {}
        files: Dict[str, Path] = {}
        for name, file_name in weight_map.items():
            if not isinstance(file_name, str):
                raise CheckpointError(
                    f"{index_path}: tensor '{name}' maps to {file_name!r}, not a file name"
                )
            if file_name not in files:
                what = f"index entry for tensor '{name}'"
                if not file_name.endswith(".safetensors"):
                    raise CheckpointError(
                        f"{index_path}: {what} names {file_name!r}, not a .safetensors file "
                        f"(pickle weights are never loaded)"
                    )
                path = self._safe_path(file_name, f"{index_path.name}: {what}")
                if not path.is_file():
                    raise CheckpointError(
                        f"{path}: shard listed in {index_path.name} (tensor '{name}') is missing"
                    )
                files[file_name] = path
            resolved[name] = files[file_name]
        return resolved

    # ------------------------------------------------------------------ lazy access

    def _require(self, name: str) -> None:
        if name not in self._weight_map:
            where = self.path / (INDEX_FILE if (self.path / INDEX_FILE).is_file() else SINGLE_FILE)
            raise CheckpointError(f"{where}: tensor '{name}' is not in the checkpoint")

    @staticmethod
    def _is_scale_name(name: str) -> bool:
        return name.endswith(SCALE_SUFFIX)

    def _is_companion(self, name: str) -> bool:
        return self._is_scale_name(name) and name[: -len(SCALE_SUFFIX)] in self._weight_map

    def _header(self, file: Path) -> Dict[str, _TensorInfo]:
        """The shard's parsed header, checked on first use (with the index's entries for it)."""
        header = self._headers.get(file)
        if header is None:
            header = _read_safetensors_header(file)
            for name in self._names_by_file.get(file, ()):
                if name not in header:
                    raise CheckpointError(
                        f"{file}: tensor '{name}' is listed in the index for this shard but is "
                        f"not in it"
                    )
            self._headers[file] = header
        return header

    def _info(self, name: str) -> _TensorInfo:
        self._require(name)
        return self._header(self._weight_map[name])[name]

    def _check_quantized_pair(self, name: str) -> Optional[str]:
        """Checks that an FP8 weight and its scale come as a well-shaped pair; returns the scale's
        name, or ``None`` for an unquantised tensor."""
        info = self._info(name)
        file = self._weight_map[name]
        scale_name = name + SCALE_SUFFIX
        if scale_name not in self._weight_map:
            if info.dtype.startswith("F8_"):
                raise CheckpointError(
                    f"{file}: FP8 tensor '{name}' has no '{scale_name}' (cannot dequantise)"
                )
            return None
        scale = self._info(scale_name)
        scale_file = self._weight_map[scale_name]
        if info.dtype != "F8_E4M3":
            raise CheckpointError(
                f"{file}: tensor '{name}' has a '{scale_name}' but dtype {info.dtype}, not F8_E4M3"
            )
        if len(info.shape) != 2:
            raise CheckpointError(
                f"{file}: FP8 tensor '{name}' has shape {list(info.shape)}; block-wise FP8 needs "
                f"2-D weights"
            )
        expected = scale_inv_shape(info.shape, self.block_size)
        if scale.shape != expected:
            raise CheckpointError(
                f"{scale_file}: scale '{scale_name}' has shape {list(scale.shape)} but weight "
                f"'{name}' {list(info.shape)} with block {list(self.block_size)} needs "
                f"{list(expected)}"
            )
        if scale.dtype not in _SCALE_DTYPES:
            raise CheckpointError(
                f"{scale_file}: scale '{scale_name}' has dtype {scale.dtype}, expected F32"
            )
        return scale_name

    def _handle(self, file: Path):
        handle = self._handles.get(file)
        if handle is not None:
            self._handles.move_to_end(file)
            return handle
        self._header(file)
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError, not an OSError
            raise CheckpointError(f"{file}: cannot open safetensors file: {e}") from e
        self._handles[file] = handle
        while len(self._handles) > self._max_open_files:
            _, old = self._handles.popitem(last=False)
            old.__exit__(None, None, None)
        return handle

    def _read(
        self, name: str, dim: int = 0, start: int = 0, stop: Optional[int] = None
    ) -> torch.Tensor:
        """Reads the tensor's bytes (or those of ``[start:stop]`` along ``dim``, 0 or 1) into
        memory of its own (the shard is opened with ``safe_open`` once, to check it, but not read
        through its memory map: pages of a map stay in this process's resident set while the map
        is open, so reading every tensor of a checkpoint through maps grows the RSS with the
        checkpoint)."""
        file = self._weight_map[name]
        self._handle(file)
        info = self._header(file)[name]
        dtype = _SAFETENSORS_DTYPES[info.dtype]
        shape = list(info.shape)
        if stop is None:
            stop = shape[dim] if shape else 1
        # The region as (file offset, bytes) runs: one for rows, one per row for columns.
        row_bytes = info.nbytes // shape[0] if shape and shape[0] else info.nbytes
        if not shape:
            runs = [(info.offset, info.nbytes)]
        elif dim == 0:
            runs = [(info.offset + start * row_bytes, (stop - start) * row_bytes)]
            shape[0] = stop - start
        else:
            item = row_bytes // shape[1]
            runs = [
                (info.offset + row * row_bytes + start * item, (stop - start) * item)
                for row in range(shape[0])
            ]
            shape[1] = stop - start
        total = sum(n for _, n in runs)
        if total == 0:
            return torch.empty(shape, dtype=dtype)
        buffer = numpy.empty(total, dtype=numpy.uint8)  # not zeroed: every byte is read
        view = memoryview(buffer)
        try:
            with open(file, "rb", buffering=0) as f:
                at = 0
                for offset, nbytes in runs:
                    done = 0
                    while done < nbytes:
                        n = os.preadv(f.fileno(), [view[at + done : at + nbytes]], offset + done)
                        if n == 0:
                            raise CheckpointError(
                                f"{file}: truncated while reading tensor '{name}' ({done} of "
                                f"{nbytes} bytes at offset {offset})"
                            )
                        done += n
                    at += nbytes
        except OSError as e:
            raise CheckpointError(f"{file}: cannot read tensor '{name}': {e}") from e
        self.bytes_read += total
        return torch.from_numpy(buffer).view(dtype).reshape(shape)
