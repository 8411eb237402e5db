# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Convert a released MiniMax-M2-family HF checkpoint into a Megatron torch_dist checkpoint.

Streaming: every model tensor is built from its HF tensors (FP8 blocks dequantised in fp32,
then rounded once to the target dtype), split into its torch_dist chunks and written while the
next is built; memory holds at most two tensors per worker, whatever the checkpoint size. The
output is Megatron's ``latest_checkpointed_iteration.txt`` + ``release/`` layout, with keys and
shapes taken from the model's own ``sharded_state_dict()``, so ``--load`` reshards it to any
TP/PP/EP/ETP.
"""

import hashlib
import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from megatron.minimax.checkpoint.dist_checkpoint_layout import (
    CheckpointUnit,
    DistCheckpointLayout,
    dist_checkpoint_layout,
    single_process_group,
)
from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError, HFCheckpoint
from megatron.minimax.checkpoint.output_dir import atomic_output_dir, free_bytes
from megatron.minimax.checkpoint.torch_dist_writer import CHECKPOINT_VERSION, TorchDistWriter

logger = logging.getLogger(__name__)

RELEASE_DIR = "release"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
PROVENANCE_FILE = "minimax_m2_conversion.json"


@dataclass
class ConversionStats:
    """What a conversion read and wrote."""

    tensors_read: int = 0
    bytes_read: int = 0
    chunks_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    fresh_mtp_tensors: int = 0
    nonfinite: Dict[str, int] = field(default_factory=dict)
    """HF tensor name -> number of NaN/Inf values."""

    def summary(self) -> str:
        gib = 1024**3
        rate = self.bytes_read / gib / self.seconds if self.seconds else 0.0
        lines = [
            f"read {self.tensors_read} HF tensors ({self.bytes_read / gib:.2f} GiB), wrote "
            f"{self.chunks_written} chunks ({self.bytes_written / gib:.2f} GiB) in "
            f"{self.seconds:.1f} s ({rate:.2f} GiB/s read)"
        ]
        if self.fresh_mtp_tensors:
            lines.append(f"initialised {self.fresh_mtp_tensors} MTP tensors (not in the release)")
        if self.nonfinite:
            lines.append(f"NaN/Inf in {len(self.nonfinite)} tensors: {sorted(self.nonfinite)[:5]}")
        return "\n".join(lines)


def _mtp_initial_value(unit: CheckpointUnit, init_std: float, num_layers: int) -> torch.Tensor:
    """Fresh MTP weights, as megatron-core initialises them: RMSNorm weights 1, the expert bias
    0, ``linear_proj``/``linear_fc2`` N(0, std / sqrt(2 * num_layers)), every other matrix
    N(0, std). Seeded from the tensor name, so reruns give identical checkpoints."""
    name = unit.canonical_name
    leaf = name.rsplit(".", 1)[-1]
    if "norm" in name or leaf == "layer_norm_weight":
        return torch.ones(unit.shape, dtype=unit.dtype)
    if name.endswith("expert_bias"):
        return torch.zeros(unit.shape, dtype=unit.dtype)
    std = init_std
    if ".linear_proj." in name or ".linear_fc2." in name:
        std = init_std / math.sqrt(2.0 * num_layers)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    generator = torch.Generator().manual_seed(seed)
    value = torch.randn(unit.shape, generator=generator, dtype=torch.float32) * std
    return value.to(unit.dtype)


def _without_crc32() -> None:
    """Turns off torch.save's zip CRC32s in the calling thread (the option is per thread).

    torch.save checksums every record (about 0.25 s per GB on one core); the DCP reader that
    megatron-core loads with does not check zip CRCs, so the chunks are written without."""
    torch.serialization.set_crc32_options(False)


class _Plan:
    """Which HF tensors build which unit; exhaustive in both directions."""

    def __init__(self, layout: DistCheckpointLayout, checkpoint: HFCheckpoint, config: Dict):
        from megatron.minimax.models.minimax_m2.weight_mapping import MINIMAX_M2_WEIGHTS

        self.table = MINIMAX_M2_WEIGHTS
        self.sources: List[Tuple[CheckpointUnit, Optional[object], Tuple[str, ...]]] = []
        consumed: Dict[str, str] = {}
        unmapped = []
        for unit in layout.units:
            if unit.canonical_name.startswith("mtp."):
                self.sources.append((unit, None, ()))
                continue
            try:
                mapping, fields = self.table.resolve_megatron(unit.canonical_name)
            except KeyError:
                unmapped.append(unit.canonical_name)
                continue
            names = mapping.hf_names(**fields)
            for name in names:
                if name in consumed:
                    raise CheckpointError(
                        f"{name} would feed both {consumed[name]} and {unit.canonical_name}"
                    )
                consumed[name] = unit.canonical_name
            self.sources.append((unit, mapping, names))
        if unmapped:
            raise CheckpointError(f"no HF source for Megatron tensors {unmapped[:10]}")
        available = set(checkpoint.tensor_names())
        missing = sorted(set(consumed) - available)
        unexpected = sorted(available - set(consumed))
        if missing or unexpected:
            raise CheckpointError(
                f"{checkpoint.path}: tensors do not match a MiniMax-M2 model of "
                f"{config['num_hidden_layers']} layers and {config['num_local_experts']} experts: "
                f"missing {len(missing)} {missing[:5]}, unexpected {len(unexpected)} "
                f"{unexpected[:5]}"
            )

    def check_shapes(self, checkpoint: HFCheckpoint, ctx) -> None:
        """Maps every source's on-disk shapes (meta tensors, headers only) and checks the result
        against the model that config.json describes, before anything is read or written."""
        # A mapping gives the same shape for the same source shapes: each layer's and expert's
        # tensors repeat a handful of cases (the full model has 32k units).
        mapped: Dict[Tuple, Tuple[int, ...]] = {}
        for unit, mapping, names in self.sources:
            if mapping is None:
                continue
            first = checkpoint.file_of(names[0])
            shapes = [tuple(checkpoint.shape(name)) for name in names]
            case = (id(mapping), tuple(shapes))
            if case not in mapped:
                try:
                    meta = [torch.empty(s, device="meta") for s in shapes]
                    mapped[case] = tuple(mapping.to_megatron(meta, ctx).shape)
                except (ValueError, RuntimeError) as e:
                    raise CheckpointError(
                        f"{first}: tensors {list(names)} of shapes {[list(s) for s in shapes]} do "
                        f"not fit the model described by config.json: {e}"
                    ) from None
            full_shape = mapped[case]
            if full_shape != unit.shape:
                raise CheckpointError(
                    f"{first}: {list(names)} of shapes {[list(s) for s in shapes]} give "
                    f"{unit.canonical_name} shape {full_shape}, the model described by "
                    f"config.json has {unit.shape}"
                )


def convert_hf_to_mcore(
    hf_dir: Path,
    save_dir: Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    workers: int = 1,
    mtp_num_layers: Optional[int] = None,
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
) -> ConversionStats:
    """Convert ``hf_dir`` into a Megatron torch_dist checkpoint at ``save_dir``.

    Args:
        hf_dir: released-format HF directory (FP8 or BF16/FP32).
        save_dir: output directory (``latest_checkpointed_iteration.txt`` + ``release/``).
        dtype: dtype of the stored weights; the router gate and expert bias stay fp32.
        workers: tensors converted concurrently (one output data file each, one thread each;
            each worker's writes overlap its next tensor's conversion).
        mtp_num_layers: also write this many freshly initialised MTP layers.
        overwrite: replace a non-empty ``save_dir``.
        allow_nonfinite: write tensors with NaN/Inf instead of refusing.
        progress: called as ``progress(bytes_read, tensors_done)`` after each tensor.

    Raises:
        CheckpointError: bad input or output (one-line message naming the file and tensor).
    """
    start = time.time()
    hf_dir, save_dir = Path(hf_dir), Path(save_dir)
    checkpoint = HFCheckpoint(hf_dir)
    checkpoint.validate()
    config = dict(checkpoint.config)
    try:
        from megatron.minimax.models.minimax_m2.hf_config import minimax_m2_config_from_hf

        megatron_config, model_args = minimax_m2_config_from_hf(
            config, mtp_num_layers=mtp_num_layers
        )
    except ValueError as e:
        raise CheckpointError(f"{hf_dir / 'config.json'}: {e}") from None

    # The group is only needed to build the (meta) model for the layout.
    with single_process_group():
        layout = dist_checkpoint_layout(config, dtype, mtp_num_layers)
    plan = _Plan(layout, checkpoint, config)

    from megatron.minimax.models.minimax_m2.weight_mapping import mapping_context

    embedding = layout.unit("embedding.word_embeddings.weight")
    ctx = mapping_context(megatron_config, model_args, padded_vocab_size=embedding.shape[0])
    plan.check_shapes(checkpoint, ctx)

    output_bytes = sum(unit.nbytes for unit in layout.units)
    stats = ConversionStats()
    lock = threading.Lock()

    with atomic_output_dir(save_dir, overwrite) as work:
        if free_bytes(work) < output_bytes:
            raise CheckpointError(
                f"{save_dir.parent}: {free_bytes(work) / 1024**3:.1f} GiB free, the checkpoint "
                f"needs {output_bytes / 1024**3:.1f} GiB"
            )
        writer = TorchDistWriter(work / RELEASE_DIR)
        buckets: List[List] = [[] for _ in range(max(1, workers))]
        sizes = [0] * len(buckets)
        for source in sorted(plan.sources, key=lambda s: -s[0].nbytes):
            i = sizes.index(min(sizes))
            buckets[i].append(source)
            sizes[i] += source[0].nbytes

        # Set when any worker fails or the main thread is interrupted: the other workers stop
        # after their current tensor instead of converting the rest of their bucket.
        stop = threading.Event()

        def write_unit(data_file, unit, pieces, names, read_bytes, nonfinite, fresh):
            written = sum(
                data_file.write_chunk(chunk, piece) for chunk, piece in zip(unit.chunks, pieces)
            )
            with lock:
                stats.tensors_read += len(names)
                stats.bytes_read += read_bytes
                stats.chunks_written += len(unit.chunks)
                stats.bytes_written += written
                stats.fresh_mtp_tensors += fresh
                stats.nonfinite.update(nonfinite)
                if progress is not None:
                    progress(stats.bytes_read, stats.tensors_read)

        def convert_bucket(bucket, data_file):
            reader = HFCheckpoint(hf_dir)
            # Each tensor is written by a second thread while the next one is read and converted,
            # so that the writes (mostly waiting for the kernel's writeback) overlap the CPU
            # work; a worker holds at most two tensors. Writes stay in order: same file layout.
            write_pool = ThreadPoolExecutor(max_workers=1, initializer=_without_crc32)
            pending = None
            try:
                for unit, mapping, names in bucket:
                    if stop.is_set():
                        break
                    read_bytes, nonfinite = 0, {}
                    if mapping is None:
                        full = _mtp_initial_value(
                            unit, megatron_config.init_method_std, megatron_config.num_layers
                        )
                    else:
                        tensors = []
                        for name in names:
                            # Dequantised in fp32 and rounded once, straight to the stored dtype
                            # (the mappings only move values, so this is the same as mapping in
                            # fp32 and casting after, with half the bytes to move for bf16).
                            tensor, bad = reader.get_counting_nonfinite(name, unit.dtype)
                            if bad:
                                nonfinite[name] = bad
                            tensors.append(tensor)
                            read_bytes += reader.nbytes(name)
                        full = mapping.to_megatron(tensors, ctx)
                        if tuple(full.shape) != unit.shape:
                            raise CheckpointError(
                                f"{reader.file_of(names[0])}: {list(names)} give "
                                f"{unit.canonical_name} shape {tuple(full.shape)}, the model "
                                f"described by config.json has {unit.shape}"
                            )
                        full = full.to(unit.dtype)
                        del tensors
                    if nonfinite and not allow_nonfinite:
                        name, count = next(iter(nonfinite.items()))
                        raise CheckpointError(
                            f"{reader.file_of(name)}: tensor {name} has {count} NaN/Inf values "
                            "(pass --allow-nonfinite to convert anyway)"
                        )
                    pieces = unit.to_chunks(full)
                    del full
                    if pending is not None:
                        pending.result()
                    pending = write_pool.submit(
                        write_unit, data_file, unit, pieces, names, read_bytes, nonfinite,
                        mapping is None,
                    )  # fmt: skip
                    del pieces
                if pending is not None:
                    pending.result()
            except BaseException:
                stop.set()
                raise
            finally:
                write_pool.shutdown(wait=True)
                data_file.close()
                reader.close()

        # One thread per worker; the workers are the parallelism. The ops here are small and
        # memory-bound, and OpenMP teams inside them cost more than they give (on 2 cores, one
        # worker with 2 intra-op threads took 58 s where one with 1 took 37 s, and 2 x 2 threads
        # ran 3-5x slower than 2 x 1).
        intra_op_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=len(buckets)) as pool:
                # Files opened here, in bucket order: each chunk lands at the same file and
                # offset on every run with the same --workers (byte-identical reruns).
                futures = [pool.submit(convert_bucket, b, writer.open_file()) for b in buckets if b]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    stop.set()
                    raise
            objects_file = writer.open_file()
            for obj in layout.objects:
                objects_file.write_object(obj.unique_key, obj.data)
            writer.finish({"checkpoint_version": CHECKPOINT_VERSION})
        except OSError as e:
            raise CheckpointError(
                f"{e.filename or save_dir}: cannot write ({e.strerror})"
            ) from None
        finally:
            torch.set_num_threads(intra_op_threads)

        expected = {(c.key, c.global_offset) for u in layout.units for c in u.chunks}
        written = set(writer.written_chunks())
        if expected != written:
            raise CheckpointError(
                f"{save_dir}: internal error, chunks missing {sorted(expected - written)[:5]} "
                f"unexpected {sorted(written - expected)[:5]}"
            )
        (work / TRACKER_FILE).write_text(RELEASE_DIR)
        stats.seconds = time.time() - start
        provenance = {
            "source": str(hf_dir.resolve()),
            "source_quantization": checkpoint.quantization_config,
            "dtype": str(dtype).replace("torch.", ""),
            "mtp_num_layers": mtp_num_layers or 0,
            "padded_vocab_size": embedding.shape[0],
            "hf_config": config,
            "stats": asdict(stats),
        }
        (work / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return stats
