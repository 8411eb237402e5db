# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Convert MiniMax-M2-family checkpoints between the released HF format and Megatron torch_dist.

    # released HF (FP8 128x128 blocks, or BF16) -> Megatron torch_dist, loadable at any layout
    python tools/checkpoint/convert_minimax_m2.py hf-to-mcore \\
        --hf-dir /models/MiniMax-M2.5 --save-dir /ckpt/minimax-m2.5-mcore --workers 16

    # Megatron torch_dist -> HF (BF16, or FP8 blocks like the release)
    python tools/checkpoint/convert_minimax_m2.py mcore-to-hf \\
        --load-dir /ckpt/minimax-m2.5-mcore --save-dir /models/my-m2.5 \\
        --hf-reference-dir /models/MiniMax-M2.5 --format fp8

Both stream tensor by tensor with bounded memory, write into a hidden sibling directory that is
renamed into place only when complete, check that every source tensor is consumed exactly once and
every target tensor produced exactly once, and report NaN/Inf. Exit status: 0 on success, 2 on bad
input or output (one line naming the file and tensor), 130 when interrupted.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

PROG = "convert_minimax_m2.py"


def _add_hf_to_mcore(subparsers) -> None:
    parser = subparsers.add_parser(
        "hf-to-mcore",
        help="Released HF checkpoint -> Megatron torch_dist checkpoint.",
        description="Convert a MiniMax-M2/M2.1/M2.5/M2.7 HF directory (sharded safetensors + "
        "index, FP8 128x128 blocks with weight_scale_inv or BF16/FP32) into a Megatron torch_dist "
        "checkpoint (latest_checkpointed_iteration.txt + release/) that --load reshards to any "
        "TP/PP/EP/ETP layout. FP8 weights are dequantised in fp32 and rounded once to --dtype; "
        "the router gate and e_score_correction_bias stay fp32.",
    )
    group = parser.add_argument_group(title="input")
    group.add_argument("--hf-dir", required=True, type=Path, help="HF checkpoint directory.")
    group = parser.add_argument_group(title="output")
    group.add_argument(
        "--save-dir", required=True, type=Path, help="Megatron checkpoint directory."
    )
    group.add_argument(
        "--dtype",
        choices=["bf16", "fp32"],
        default="bf16",
        help="dtype of the stored weights (default bf16; the router stays fp32).",
    )
    group.add_argument(
        "--mtp-num-layers",
        type=int,
        default=0,
        help="Also write this many MTP layers, freshly initialised (the releases ship none): "
        "RMSNorm weights 1, linear_proj/linear_fc2 N(0, 0.02/sqrt(2*num_layers)), other "
        "matrices N(0, 0.02), expert bias 0, seeded by tensor name.",
    )
    group.add_argument("--overwrite", action="store_true", help="Replace a non-empty --save-dir.")
    group = parser.add_argument_group(title="execution")
    group.add_argument(
        "--workers", type=int, default=1, help="Tensors converted in parallel (threads)."
    )
    group.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="Convert tensors that contain NaN/Inf (reported either way) instead of stopping.",
    )
    group.add_argument("--no-progress", action="store_true", help="No progress bar.")
    parser.set_defaults(run=_run_hf_to_mcore)


def _add_mcore_to_hf(subparsers) -> None:
    parser = subparsers.add_parser(
        "mcore-to-hf",
        help="Megatron torch_dist checkpoint -> HF directory (BF16 or FP8).",
        description="Export a Megatron torch_dist MiniMax-M2 checkpoint to a HF directory that "
        "transformers, vLLM and SGLang load: sharded safetensors + index, a config.json matching "
        "the tensors, and the tokenizer, chat template and generation files copied from "
        "--hf-reference-dir.",
    )
    group = parser.add_argument_group(title="input")
    group.add_argument(
        "--load-dir",
        required=True,
        type=Path,
        help="Megatron checkpoint directory (with latest_checkpointed_iteration.txt) or a "
        "torch_dist directory.",
    )
    group.add_argument(
        "--hf-reference-dir",
        required=True,
        type=Path,
        help="The HF directory the model came from: config, tokenizer and, for --format fp8, "
        "which tensors are quantised.",
    )
    group = parser.add_argument_group(title="output")
    group.add_argument("--save-dir", required=True, type=Path, help="HF output directory.")
    group.add_argument(
        "--format",
        choices=["bf16", "fp8"],
        default="bf16",
        help="bf16: plain weights, no quantization_config. fp8: the release's 128x128-block FP8 "
        "with weight_scale_inv for the same tensors and the same quantization_config; tensors "
        "unchanged since conversion keep their original bytes and scales.",
    )
    group.add_argument(
        "--max-shard-size",
        default="5GB",
        help="Largest safetensors shard, e.g. 5GB or 500MB (default 5GB).",
    )
    group.add_argument(
        "--drop-mtp",
        action="store_true",
        help="Export without the checkpoint's MTP layers (HF MiniMax-M2 has no MTP weights); "
        "without it a checkpoint with MTP layers is refused rather than silently truncated.",
    )
    group.add_argument("--overwrite", action="store_true", help="Replace a non-empty --save-dir.")
    group = parser.add_argument_group(title="execution")
    group.add_argument("--no-progress", action="store_true", help="No progress bar.")
    parser.set_defaults(run=_run_mcore_to_hf)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_hf_to_mcore(subparsers)
    _add_mcore_to_hf(subparsers)
    return parser.parse_args(argv)


def _progress_bar(total_bytes: int, total_tensors: int, disable: bool):
    from tqdm import tqdm

    bar = tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=disable,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    state = {"bytes": 0}

    def update(bytes_done: int, tensors_done: int) -> None:
        bar.update(bytes_done - state["bytes"])
        state["bytes"] = bytes_done
        bar.set_postfix_str(f"tensors {tensors_done}/{total_tensors}", refresh=False)

    return bar, update


def _run_hf_to_mcore(args) -> int:
    import torch

    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.checkpoint.hf_to_mcore import convert_hf_to_mcore

    if args.workers < 1:
        raise ValueError("--workers must be >= 1")
    if args.mtp_num_layers < 0:
        raise ValueError("--mtp-num-layers must be >= 0")
    source = HFCheckpoint(args.hf_dir)
    bar, update = _progress_bar(
        source.total_bytes(),
        len(source.tensor_names()),
        args.no_progress or not sys.stderr.isatty(),
    )
    with bar:
        stats = convert_hf_to_mcore(
            args.hf_dir,
            args.save_dir,
            dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype],
            workers=args.workers,
            mtp_num_layers=args.mtp_num_layers or None,
            overwrite=args.overwrite,
            allow_nonfinite=args.allow_nonfinite,
            progress=update,
        )
    print(stats.summary())
    print(f"wrote {args.save_dir}")
    return 0


def _run_mcore_to_hf(args) -> int:
    from megatron.minimax.checkpoint.mcore_to_hf import convert_mcore_to_hf, parse_size

    stats = convert_mcore_to_hf(
        args.load_dir,
        args.save_dir,
        args.hf_reference_dir,
        fmt=args.format,
        max_shard_bytes=parse_size(args.max_shard_size),
        drop_mtp=args.drop_mtp,
        overwrite=args.overwrite,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(stats.summary())
    print(f"wrote {args.save_dir}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron.minimax.launch import quiet_library_notices

    quiet_library_notices()
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    from megatron.minimax.checkpoint.converter_process import (
        import_megatron_core_uncompiled,
        keep_freed_memory_mapped,
    )

    # This process only converts (see converter_process): both directions build the model on the
    # meta device only, and allocate and free thousands of tensors.
    import_megatron_core_uncompiled()
    keep_freed_memory_mapped()
    from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError

    try:
        return args.run(args)
    except (CheckpointError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{PROG}: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    status = main()
    # Every output file is closed and fsynced by now; skip the interpreter's teardown of torch and
    # megatron-core (about a second) and leave at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
