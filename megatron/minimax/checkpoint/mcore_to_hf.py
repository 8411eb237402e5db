# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Export a Megatron torch_dist MiniMax-M2 checkpoint to the released HF format, streaming.

The checkpoint is read lazily (:mod:`dist_checkpoint_reader`): its ``.metadata`` is parsed
once, the model layout (keys, global shapes, chunk offsets, GLU split of expert ``linear_fc1``) is
taken from the model's own ``sharded_state_dict()`` at TP=PP=EP=1 (:mod:`dist_checkpoint_layout`)
of the class that saved it (``GPTModel`` or ``HybridModel``, told apart by the keys), and the
regions of a few model tensors at a time are read through PyTorch DCP, which reshards whatever
layout the checkpoint was saved at. The export is planned before any data is read
(:mod:`hf_export_plan`): each tensor is mapped to its HF tensors by the weight table, and every
safetensors shard's header is fixed (:mod:`safetensors_shards`); each tensor is then cast or
quantised and written straight to its place. Memory therefore holds one read group of model tensors
plus the HF tensors of one of them, whatever the checkpoint size; no shard is ever assembled in
memory. The reference directory gives the config and the non-weight files
(:mod:`hf_reference_files`).

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
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple, Union

import torch

from megatron.minimax.checkpoint.dist_checkpoint_layout import (
    dist_checkpoint_layout,
    model_class_of_keys,
    single_process_group,
)
from megatron.minimax.checkpoint.dist_checkpoint_reader import DistCheckpointReader
from megatron.minimax.checkpoint.fp8_blockwise import dequantize_blockwise, quantize_blockwise
from megatron.minimax.checkpoint.hf_checkpoint import (
    CONFIG_FILE,
    INDEX_FILE,
    SCALE_SUFFIX,
    CheckpointError,
    HFCheckpoint,
    find_nonfinite,
)
from megatron.minimax.checkpoint.hf_export_plan import (
    ExportJob,
    check_config,
    check_exhaustive,
    match_layout,
    output_groups,
    plan_jobs,
    read_groups,
)
from megatron.minimax.checkpoint.hf_reference_files import (
    copy_reference_files,
    export_config,
    read_reference,
)
from megatron.minimax.checkpoint.output_dir import atomic_output_dir, free_bytes
from megatron.minimax.checkpoint.safetensors_shards import SafetensorsShard, ShardPlan
from megatron.minimax.models.conversion.mappings import MappingContext

__all__ = ["ExportStats", "convert_mcore_to_hf", "parse_size"]

logger = logging.getLogger(__name__)

# torch_dist keys that belong to the model (everything else, e.g. optimizer state, is ignored).
_MODEL_KEY_PREFIXES = ("embedding.", "decoder.", "output_layer.", "mtp.")
_MTP_KEY = re.compile(r"mtp\.layers\.(\d+)\.")

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


_MODEL_CLASS_NAMES = {"gpt": "GPTModel", "hybrid": "HybridModel"}

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
    model_class: str = "gpt"
    """Layout of the checkpoint: ``"gpt"`` (GPTModel) or ``"hybrid"`` (HybridModel)."""
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
            f"{self.source} ({_MODEL_CLASS_NAMES[self.model_class]} layout): read "
            f"{self.bytes_read / gib:.2f} GiB in {self.seconds:.1f} s "
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


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def _mtp_layers(keys: Iterable[str]) -> Set[int]:
    return {int(m.group(1)) for m in map(_MTP_KEY.match, keys) if m}


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
    config, reference = read_reference(reference_dir)
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
    try:
        model = model_class_of_keys(reader.tensors)
    except ValueError as e:
        raise CheckpointError(f"{dist_dir}: {e}; not a MiniMax-M2 model checkpoint") from None
    stats.model_class = model
    check_config(config, reader, config_path, model)

    # The group is only needed to build the (meta) model for the layout.
    with single_process_group():
        layout = dist_checkpoint_layout(config, dtype, model=model)
    units = match_layout(layout.units, reader, config_path)
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

    jobs = plan_jobs(units, MINIMAX_M2_WEIGHTS, ctx, fmt, quantized_names)
    check_exhaustive(jobs, MINIMAX_M2_WEIGHTS, config, quantized_names, reference_dir)
    plan = ShardPlan(output_groups(jobs, block_size), max_shard_bytes)

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
            exported = export_config(config, fmt, quantization_config)
            (work / CONFIG_FILE).write_text(json.dumps(exported, indent=2) + "\n")
            stats.copied_files = copy_reference_files(reference_dir, work)
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


def _write_shards(
    work: Path,
    plan: ShardPlan,
    jobs: List[ExportJob],
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
    shard: Optional[SafetensorsShard] = None
    weight_map: Dict[str, str] = {}
    try:
        for read_group in read_groups(jobs, read_group_bytes):
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
                            shard = SafetensorsShard(index, path, plan.outputs_of_shard[index])
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
