# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Quantize a MiniMax-M2 model with nvidia-modelopt and write it for serving (vLLM, TensorRT-LLM).

Builds the model in Megatron at any TP/PP/EP/ETP layout (gloo on CPU, nccl on GPU), fills it
from a Megatron torch_dist checkpoint or a released HF directory, calibrates the recipe's
quantizers on calibration tokens (or, for a checkpoint trained with ``pretrain_gpt.py`` or
``pretrain_hybrid.py --modelopt-recipe``, keeps the trained scales), and writes a HF directory in modelopt's format:
packed weights with their scales, ``hf_quant_config.json`` and a ``quantization_config`` in
``config.json``, the router in fp32, tokenizer and chat template copied from the reference.

    # a fine-tuned checkpoint -> NVFP4 experts (NVIDIA's MiniMax-M2.x NVFP4 layout)
    torchrun --nproc-per-node 8 tools/quantize_minimax_m2.py \\
        --load-dir /ckpt/my-run --hf-reference-dir /models/MiniMax-M2.5 \\
        --calib-data /data/calib_text_document --calib-samples 512 --calib-seq-length 2048 \\
        --save-dir /models/my-m2.5-nvfp4 --tp 1 --ep 8
    vllm serve /models/my-m2.5-nvfp4 --quantization modelopt_fp4 --tensor-parallel-size 4

Recipes: nvfp4-experts (default: routed experts NVFP4 W4A4 in groups of 16, attention,
embeddings and lm_head BF16, router fp32), nvfp4 (attention too), fp8 (per-tensor FP8 experts and
attention, for Hopper). Exit status: 0 on success, 2 on bad input (one line), 130 when
interrupted; the output directory appears only when complete.
"""

import argparse
import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import NoReturn

PROG = "quantize_minimax_m2.py"
DEFAULT_RECIPE = "nvfp4-experts"
MODELOPT_REQUIREMENT = "nvidia-modelopt==0.47.0"


def parse_args(argv=None) -> argparse.Namespace:
    from megatron.minimax.launch import add_parity_layout_arguments

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    group = parser.add_argument_group(title="input")
    group.add_argument(
        "--load-dir",
        type=Path,
        default=None,
        help="Megatron torch_dist checkpoint (root with latest_checkpointed_iteration.txt, or an "
        "iteration directory), any layout, saved by pretrain_gpt.py or pretrain_hybrid.py (the "
        "model class is read from its keys). A checkpoint trained with --modelopt-recipe keeps "
        "its trained scales (no calibration).",
    )
    group.add_argument(
        "--hf-dir",
        type=Path,
        default=None,
        help="Released HF directory (FP8 128x128 blocks or BF16) to quantize instead of a "
        "Megatron checkpoint; also the default --hf-reference-dir.",
    )
    group.add_argument(
        "--hf-reference-dir",
        type=Path,
        default=None,
        help="HF directory whose config.json describes the model and whose tokenizer, chat "
        "template and generation config are copied (required with --load-dir).",
    )
    group = parser.add_argument_group(title="recipe")
    group.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help="nvfp4-experts (default): routed experts NVFP4 (W4A4, groups of 16), the rest BF16, "
        "router fp32, as NVIDIA's published MiniMax-M2.x NVFP4 checkpoints; serve with vLLM "
        "--quantization modelopt_fp4 on Blackwell. nvfp4: attention projections NVFP4 too. fp8: "
        "per-tensor FP8 experts and attention (Hopper).",
    )
    group = parser.add_argument_group(title="calibration")
    group.add_argument(
        "--calib-data",
        default=None,
        help="Megatron indexed dataset prefix (tools/preprocess_data.py output) or a .jsonl file "
        "with a 'text' per line (needs --tokenizer-dir).",
    )
    group.add_argument(
        "--tokenizer-dir",
        default=None,
        help="Tokenizer for --calib-data .jsonl (default: --hf-reference-dir).",
    )
    group.add_argument(
        "--calib-samples", type=int, default=128, help="Calibration sequences (default 128)."
    )
    group.add_argument(
        "--calib-seq-length",
        type=int,
        default=2048,
        help="Tokens per calibration sequence (default 2048).",
    )
    group.add_argument(
        "--calib-tokens-file",
        default=None,
        help="Instead of --calib-data: safetensors file with int64 'tokens' [batch, seq] (as "
        "verify_minimax_m2.py --tokens-file).",
    )
    group.add_argument(
        "--calib-batch-size",
        type=int,
        default=4,
        help="Sequences per calibration forward on each data-parallel rank (default 4).",
    )
    add_parity_layout_arguments(parser)
    group = parser.add_argument_group(title="output")
    group.add_argument("--save-dir", type=Path, required=True, help="HF output directory.")
    group.add_argument(
        "--dtype",
        choices=["bf16", "fp32"],
        default="bf16",
        help="Model dtype for loading and calibration (default bf16; the router stays fp32).",
    )
    group.add_argument(
        "--max-shard-size", default="5GB", help="Largest safetensors shard (default 5GB)."
    )
    group.add_argument("--overwrite", action="store_true", help="Replace a non-empty --save-dir.")
    group.add_argument("--no-progress", action="store_true", help="No progress bars.")
    return parser.parse_args(argv)


def fail(message: str) -> NoReturn:
    from megatron.minimax import launch

    launch.fail(PROG, message)


def import_modelopt() -> None:
    """modelopt, or one line naming the requirement (its import also needs ``requests``)."""
    try:
        importlib.import_module("modelopt.torch.quantization")
    except ImportError as e:
        fail(
            f"nvidia-modelopt is not importable ({e}); install {MODELOPT_REQUIREMENT} and requests"
        )


def check_inputs(args) -> None:
    """Everything that can be refused before the process group and megatron-core start."""
    from megatron.minimax.quantization.recipes import get_recipe

    try:
        get_recipe(args.recipe)
    except ValueError as e:
        fail(str(e))
    if (args.load_dir is None) == (args.hf_dir is None):
        fail("give exactly one of --load-dir and --hf-dir")
    if args.load_dir is not None and args.hf_reference_dir is None:
        fail("--load-dir needs --hf-reference-dir (the model's config.json and tokenizer)")
    if args.calib_data is not None and args.calib_tokens_file is not None:
        fail("give --calib-data or --calib-tokens-file, not both")
    for flag in ("calib_samples", "calib_seq_length", "calib_batch_size"):
        if getattr(args, flag) < 1:
            fail(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("load_dir", "hf_dir", "hf_reference_dir"):
        path = getattr(args, flag)
        if path is not None and not path.is_dir():
            fail(f"{path}: --{flag.replace('_', '-')} is not a directory")
    if args.calib_tokens_file is not None and not os.path.isfile(args.calib_tokens_file):
        fail(f"{args.calib_tokens_file}: no such file")


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron.minimax.launch import quiet_library_notices

    quiet_library_notices()  # before megatron-core's and modelopt's imports, which warn
    check_inputs(args)
    import_modelopt()

    import torch
    import torch.distributed as dist

    from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError, HFCheckpoint
    from megatron.minimax.checkpoint.mcore_to_hf import parse_size
    from megatron.minimax.launch import distributed_process_group, parity_layout_from_args
    from megatron.minimax.models.minimax_m2.hf_config import load_hf_config
    from megatron.minimax.quantization.calibration_data import (
        CalibrationData,
        load_calibration_tokens,
    )
    from megatron.minimax.quantization.checkpoint_state import has_quantizer_state
    from megatron.minimax.quantization.ptq import (
        check_calibration_tokens,
        check_quantizable_hf,
        checkpoint_directory,
    )
    from megatron.minimax.quantization.recipes import get_recipe

    recipe = get_recipe(args.recipe)
    reference_dir = args.hf_reference_dir or args.hf_dir
    checkpoint = None
    try:
        if args.hf_dir is not None:
            checkpoint = HFCheckpoint(args.hf_dir)
            checkpoint.validate()
        hf_config = load_hf_config(str(reference_dir / "config.json"))
        max_shard_bytes = parse_size(args.max_shard_size)
        layout = parity_layout_from_args(args)
        check_quantizable_hf(hf_config, recipe, layout.tp, layout.expert_tp)
        trained = False
        if args.load_dir is not None:
            trained = has_quantizer_state(checkpoint_directory(args.load_dir))
        tokens = None
        if args.calib_data is not None or args.calib_tokens_file is not None:
            calibration = CalibrationData(
                path=args.calib_data,
                tokens_file=args.calib_tokens_file,
                tokenizer_dir=args.tokenizer_dir or str(reference_dir),
                num_samples=args.calib_samples,
                seq_length=args.calib_seq_length,
            )
            tokens = load_calibration_tokens(calibration, hf_config["vocab_size"])
        if not trained:
            source = args.load_dir or args.hf_dir
            check_calibration_tokens(tokens, layout, str(source))
    except (CheckpointError, ValueError, OSError) as e:
        fail(str(e).splitlines()[0])

    with distributed_process_group():
        return _quantize(
            args, recipe, layout, hf_config, checkpoint, tokens, trained, reference_dir,
            max_shard_bytes,
        )  # fmt: skip


def _quantize(
    args, recipe, layout, hf_config, checkpoint, tokens, trained, reference_dir, max_shard_bytes
) -> int:
    """The collective part of :func:`main`, inside the tool's process group."""
    import torch
    import torch.distributed as dist

    from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError
    from megatron.minimax.quantization.ptq import quantize_to_hf

    try:
        layout.validate(dist.get_world_size(), hf_config, backend=dist.get_backend())
    except ValueError as e:
        fail(f"impossible layout {layout} on {dist.get_world_size()} processes: {e}")
    rank = dist.get_rank()

    def read_hf_tensor(name: str) -> torch.Tensor:
        return checkpoint.get(name, torch.float32)

    try:
        # modelopt and megatron-core print progress notes; stdout carries only the result.
        with contextlib.redirect_stdout(sys.stderr):
            result = quantize_to_hf(
                hf_config,
                recipe,
                layout,
                args.save_dir,
                hf_weights=None if checkpoint is None else read_hf_tensor,
                load_dir=args.load_dir,
                calibration_tokens=None if trained else tokens,
                calib_batch_size=args.calib_batch_size,
                reference_dir=reference_dir,
                params_dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype],
                max_shard_bytes=max_shard_bytes,
                overwrite=args.overwrite,
                progress=not args.no_progress and sys.stderr.isatty(),
            )
    except (CheckpointError, ValueError) as e:
        fail(str(e).splitlines()[0])
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output was left behind", file=sys.stderr)
        return 130
    if rank == 0:
        print(
            f"{recipe.name} ({recipe.quant_algo}), layout {layout}, {dist.get_world_size()} "
            f"processes\n{result.summary()}\nwrote {args.save_dir}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
