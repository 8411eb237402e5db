# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Write a quantized HF MiniMax-M2 directory as modelopt writes it and vLLM reads it.

Files: safetensors shards and their index (``model.safetensors.index.json``), ``config.json``
(the reference config with a ``quantization_config`` whose ``quant_method`` is ``"modelopt"``),
``hf_quant_config.json``::

    {"producer": {"name": "modelopt", "version": "0.47.0"},
     "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": null, "group_size": 16,
                      "exclude_modules": ["lm_head", "model.embed_tokens",
                                          "model.layers.0.block_sparse_moe.gate", ...]}}

and every non-weight file of the reference directory (tokenizer, chat template, generation
config). ``exclude_modules`` lists exactly the linear and embedding modules written unquantized,
by name; ``quantization_config`` is modelopt's own conversion of ``hf_quant_config.json``
(``convert_hf_quant_config_format``), which vLLM and compressed-tensors readers use.

Several processes write at once, one per pipeline stage (each writes the tensors its stage
exported), into a hidden sibling of the destination that is renamed into place only when every
stage succeeded: a failure or an interrupt leaves no directory that looks complete.
"""

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed
from safetensors.torch import save_file

from megatron.minimax.checkpoint.hf_checkpoint import CONFIG_FILE, INDEX_FILE, CheckpointError
from megatron.minimax.checkpoint.hf_reference_files import copy_reference_files
from megatron.minimax.checkpoint.output_dir import prepare_output_dir, publish_output_dir
from megatron.minimax.quantization.hf_export import quantized_module_names
from megatron.minimax.quantization.recipes import QuantizationRecipe

__all__ = [
    "HF_QUANT_CONFIG_FILE",
    "WriteStats",
    "hf_quant_config",
    "quantized_hf_config",
    "write_quantized_checkpoint",
]

logger = logging.getLogger(__name__)

HF_QUANT_CONFIG_FILE = "hf_quant_config.json"


def hf_quant_config(recipe: QuantizationRecipe, exclude_modules: Sequence[str]) -> Dict:
    """The contents of ``hf_quant_config.json``."""
    import modelopt

    quantization = {"quant_algo": recipe.quant_algo, "kv_cache_quant_algo": None}
    if recipe.is_nvfp4:
        quantization["group_size"] = recipe.group_size
    quantization["exclude_modules"] = sorted(exclude_modules)
    return {
        "producer": {"name": "modelopt", "version": modelopt.__version__},
        "quantization": quantization,
    }


def quantized_hf_config(reference_config: Dict, quant_config: Dict) -> Dict:
    """``config.json``: the reference's, with modelopt's ``quantization_config``; unquantized
    tensors are bf16."""
    from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format

    out = {k: v for k, v in reference_config.items() if k != "quantization_config"}
    out["torch_dtype"] = "bfloat16"
    if "dtype" in out:
        out["dtype"] = "bfloat16"
    out["quantization_config"] = convert_hf_quant_config_format(quant_config)
    out["quantization_config"]["quant_method"] = "modelopt"
    return out


@dataclass
class WriteStats:
    """What was written."""

    tensors: int = 0
    bytes: int = 0
    shards: int = 0
    seconds: float = 0.0
    quantized_modules: int = 0
    excluded_modules: List[str] = field(default_factory=list)
    copied_files: List[str] = field(default_factory=list)

    def summary(self) -> str:
        gib = 1024**3
        return (
            f"wrote {self.tensors} tensors ({self.bytes / gib:.2f} GiB) in {self.shards} shards "
            f"in {self.seconds:.1f} s: {self.quantized_modules} quantized modules, "
            f"{len(self.excluded_modules)} kept unquantized"
            + (f"; copied {', '.join(self.copied_files)}" if self.copied_files else "")
        )


@dataclass
class _StageFiles:
    """The shards one stage wrote: file name -> tensor names, and every tensor's shape."""

    files: List[Tuple[str, List[str]]] = field(default_factory=list)
    shapes: Dict[str, List[int]] = field(default_factory=dict)
    bytes: int = 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_distributed() -> bool:
    return torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def _gather(obj) -> List:
    if not _is_distributed():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _first_error(error: Optional[str]) -> Optional[str]:
    """Every rank's view of the lowest rank's error (collective)."""
    return next((e for e in _gather(error) if e is not None), None)


def _write_stage_shards(
    tensors: Iterable[Tuple[str, torch.Tensor]],
    work: Path,
    stage: int,
    max_shard_bytes: int,
    progress,
) -> Tuple[_StageFiles, Optional[str]]:
    """Writes the stream into shards; after a write error it still consumes the stream (the
    exporter's gathers are collective) and returns the error."""
    out = _StageFiles()
    pending: Dict[str, torch.Tensor] = {}
    pending_bytes = 0
    error = None

    def flush():
        nonlocal pending, pending_bytes
        if pending:
            name = f".stage{stage:05d}-{len(out.files):05d}.safetensors"
            save_file(pending, str(work / name), metadata={"format": "pt"})
            # safetensors writes through a private temporary file (mode 0600); give the shard
            # the permissions of every other file written here.
            os.chmod(work / name, 0o666 & ~_umask())
            out.files.append((name, sorted(pending)))
        pending, pending_bytes = {}, 0

    for name, tensor in tensors:
        if error is not None:
            continue
        try:
            if name in out.shapes:
                raise CheckpointError(f"tensor {name} was exported twice")
            nbytes = tensor.numel() * tensor.element_size()
            if pending and pending_bytes + nbytes > max_shard_bytes:
                flush()
            pending[name] = tensor.contiguous()
            pending_bytes += nbytes
            out.shapes[name] = list(tensor.shape)
            out.bytes += nbytes
            progress(nbytes)
        except (CheckpointError, OSError) as e:
            error = str(e)
    if error is None:
        try:
            flush()
        except OSError as e:
            error = f"{work}: cannot write ({e.strerror})"
    return out, error


def write_quantized_checkpoint(
    tensors: Iterable[Tuple[str, torch.Tensor]],
    save_dir: Path,
    reference_config: Dict,
    reference_dir: Optional[Path],
    recipe: QuantizationRecipe,
    *,
    is_stage_writer: bool,
    stage: int,
    max_shard_bytes: int = 5 * 10**9,
    overwrite: bool = False,
    progress: bool = False,
) -> WriteStats:
    """Writes the quantized directory.

    Collective over all ranks: every rank passes its stage's stream (e.g. from
    :func:`~megatron.minimax.quantization.hf_export.export_quantized_hf_weights`, collective over
    the stage), one rank per stage with ``is_stage_writer=True``; the others consume the stream
    without writing.

    Args:
        tensors: this rank's ``(HF name, tensor)`` stream.
        save_dir: output directory (must not exist, or be empty, unless ``overwrite``).
        reference_config: the model's HF ``config.json``.
        reference_dir: directory whose non-weight files are copied (None: none).
        recipe: the recipe the tensors were quantized with.
        is_stage_writer: whether this rank writes its stage's tensors.
        stage: this rank's pipeline stage (names the temporary shard files).
        max_shard_bytes: largest shard (a bigger tensor gets a shard of its own).
        overwrite: replace an existing, non-empty ``save_dir``.
        progress: a progress bar on stderr (the first stage's writer).

    Raises:
        CheckpointError: bad destination, or a failure on any rank (then nothing is left behind).
    """
    start = time.time()
    save_dir = Path(save_dir)
    leader = not _is_distributed() or torch.distributed.get_rank() == 0
    work, error = None, None
    if leader:
        try:
            work = prepare_output_dir(save_dir, overwrite)
        except CheckpointError as e:
            error = str(e)
    error = _first_error(error)
    if error is not None:
        raise CheckpointError(error)
    work = _gather(work)[0]
    try:
        bar = None
        if progress and is_stage_writer and stage == 0:
            from tqdm import tqdm

            bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc="write")
        try:
            error, gathered = _write_stages(
                tensors, work, stage, max_shard_bytes, is_stage_writer, bar
            )
        finally:
            if bar is not None:
                bar.close()
        stats = None
        if error is None and leader:
            stats, error = _finish(
                work, gathered, save_dir, reference_config, reference_dir, recipe
            )
        error = _first_error(error)
        if error is not None:
            raise CheckpointError(error)
    except BaseException:
        # Interrupted or failed: nothing that looks like a checkpoint stays behind.
        if leader:
            shutil.rmtree(work, ignore_errors=True)
        raise
    stats = _gather(stats if leader else None)[0]
    stats.seconds = time.time() - start
    return stats


def _write_stages(
    tensors: Iterable[Tuple[str, torch.Tensor]],
    work: Path,
    stage: int,
    max_shard_bytes: int,
    is_stage_writer: bool,
    bar,
) -> Tuple[Optional[str], List]:
    """Every stage writes its shards; returns the first error and every rank's ``(error,
    files)`` (collective)."""
    result, error = None, None
    try:
        if is_stage_writer:
            progress = bar.update if bar is not None else (lambda n: None)
            result, error = _write_stage_shards(tensors, work, stage, max_shard_bytes, progress)
        else:
            for _ in tensors:  # the exporter's gathers need every rank of the stage
                pass
    except ValueError as e:  # from the exporter, on every rank of the stage alike
        error = str(e)
    if error is not None:
        error = f"pipeline stage {stage}: {error}"
    gathered = _gather((error, result))
    return next((e for e, _ in gathered if e is not None), None), gathered


def _finish(
    work: Path,
    gathered: List,
    save_dir: Path,
    reference_config: Dict,
    reference_dir: Optional[Path],
    recipe: QuantizationRecipe,
) -> Tuple[Optional[WriteStats], Optional[str]]:
    """On the leader: name the shards, copy the reference files, write index and configs,
    publish. Returns ``(stats, None)`` or ``(None, error)``."""
    stages = [files for _, files in gathered if files is not None]
    shapes: Dict[str, List[int]] = {}
    temporary: List[Tuple[str, List[str]]] = []
    seen_files = set()
    for files in stages:
        for file_name, names in files.files:
            if file_name in seen_files:  # several writers of one stage would be a caller error
                return None, f"shard {file_name} written twice"
            seen_files.add(file_name)
            temporary.append((file_name, names))
        for name, shape in files.shapes.items():
            if name in shapes:
                return None, f"tensor {name} was exported by two pipeline stages"
            shapes[name] = shape
    temporary.sort()
    width = max(5, len(str(len(temporary))))
    weight_map: Dict[str, str] = {}
    try:
        for index, (file_name, names) in enumerate(temporary):
            final = f"model-{index:0{width}d}-of-{len(temporary):0{width}d}.safetensors"
            (work / file_name).rename(work / final)
            weight_map.update((name, final) for name in names)
        # Copied first: a reference that is itself a quantized export brings configs we replace.
        copied = []
        if reference_dir is not None:
            copied = copy_reference_files(Path(reference_dir), work)
            copied = [f for f in copied if f != HF_QUANT_CONFIG_FILE]
        total = sum(s.bytes for s in stages)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (work / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        quantized, excluded = quantized_module_names(shapes)
        quant_config = hf_quant_config(recipe, excluded)
        (work / HF_QUANT_CONFIG_FILE).write_text(json.dumps(quant_config, indent=4) + "\n")
        config = quantized_hf_config(reference_config, quant_config)
        (work / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        publish_output_dir(work, save_dir)
    except OSError as e:
        return None, f"{e.filename or save_dir}: cannot write ({e.strerror})"
    stats = WriteStats(
        tensors=len(shapes),
        bytes=total,
        shards=len(temporary),
        quantized_modules=len(quantized),
        excluded_modules=excluded,
        copied_files=copied,
    )
    return stats, None
