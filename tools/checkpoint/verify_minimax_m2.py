# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Check a MiniMax-M2 Megatron model against transformers' MiniMaxM2ForCausalLM, in fp32.

Builds the Megatron model at the requested parallel layout, fills it either with the HF weights
(through the MiniMax-M2 weight table) or, with --load-dir, from a Megatron torch_dist checkpoint
(resharded at load), runs the same token ids through Megatron and (on rank 0) through
transformers, and prints the max abs / rel logit difference and the next-token loss difference.
The HF reference uses exactly the weights Megatron holds: rounded to bf16 when the torch_dist
checkpoint stores bf16. It runs one decoder layer at a time, reading each layer's weights just
before it runs, so rank 0's host memory holds one layer in fp32 (about 15 GB for the released
model) plus the embedding or lm_head, whatever the depth. Exit status: 0 within tolerance, 1
above it, 2 on bad input.

Launch it like any Megatron tool (gloo on CPU, nccl on GPU):

    torchrun --nproc-per-node 4 tools/checkpoint/verify_minimax_m2.py \\
        --hf-dir /path/to/MiniMax-M2.5 --tp 2 --ep 2 --etp 1
"""

import argparse
import sys
from typing import NoReturn

import torch
import torch.distributed as dist

from megatron.minimax import launch
from megatron.minimax.launch import (
    MODEL_CLASS_NAMES,
    add_model_class_argument,
    add_parity_layout_arguments,
    distributed_process_group,
    parity_layout_from_args,
    quiet_library_notices,
    read_tokens_file,
)

PROG = "verify_minimax_m2.py"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    group = parser.add_argument_group(title="input")
    group.add_argument(
        "--hf-dir",
        required=True,
        help="MiniMax-M2-family HF directory (config.json, safetensors shards + index; BF16, FP32 "
        "or the released FP8 128x128-block format, which is dequantised in fp32). The reference, "
        "and the Megatron weights unless --load-dir is given.",
    )
    group.add_argument(
        "--load-dir",
        default=None,
        help="Megatron torch_dist checkpoint (e.g. from convert_minimax_m2.py hf-to-mcore) to "
        "load into the Megatron model instead of mapping the HF weights.",
    )
    group.add_argument(
        "--tokens-file",
        default=None,
        help="safetensors file with an int64 tensor 'tokens' of shape [batch, seq]. Default: "
        "random ids (see --batch-size, --seq-length, --seed).",
    )
    group.add_argument("--batch-size", type=int, default=2, help="Random tokens: batch size.")
    group.add_argument("--seq-length", type=int, default=16, help="Random tokens: sequence length.")
    group.add_argument("--seed", type=int, default=0, help="Random tokens: generator seed.")
    add_model_class_argument(group)
    group = add_parity_layout_arguments(parser)
    group = parser.add_argument_group(title="output")
    group.add_argument(
        "--dump-logits",
        default=None,
        help="Write the Megatron logits (fp32, key 'logits', [batch, seq, vocab] without "
        "padding) to this safetensors file.",
    )
    group.add_argument(
        "--logits-atol", type=float, default=1e-4, help="Max accepted |logit difference|."
    )
    group.add_argument(
        "--loss-atol", type=float, default=1e-5, help="Max accepted |loss difference|."
    )
    return parser.parse_args(argv)


def fail(message: str) -> NoReturn:
    launch.fail(PROG, message)


def load_tokens(args, vocab_size: int) -> torch.Tensor:
    if args.tokens_file is None:
        generator = torch.Generator().manual_seed(args.seed)
        return torch.randint(0, vocab_size, (args.batch_size, args.seq_length), generator=generator)
    try:
        return read_tokens_file(args.tokens_file, vocab_size)[0]
    except ValueError as e:
        fail(str(e))


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_library_notices()
    from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError, HFCheckpoint

    try:
        checkpoint = HFCheckpoint(args.hf_dir)
        checkpoint.validate()
    except CheckpointError as e:
        fail(str(e))
    layout = parity_layout_from_args(args)
    with distributed_process_group():
        return _verify(args, checkpoint, layout)


def _verify(args, checkpoint, layout) -> int:
    from megatron.minimax.models.minimax_m2 import parity

    rank, world_size = dist.get_rank(), dist.get_world_size()
    tokens = load_tokens(args, checkpoint.config["vocab_size"])
    loaded, rounding = launch.build_parity_model_from_args(PROG, args, checkpoint, layout)
    logits = parity.megatron_logits(loaded, tokens)

    status = 0
    if rank == 0:
        from megatron.minimax.models.minimax_m2.hf_reference import streamed_hf_logits
        from megatron.minimax.native_core import describe_megatron_core

        # Layer by layer: host memory for one decoder layer, whatever the depth.
        reference = streamed_hf_logits(args.hf_dir, tokens, round_to=rounding)
        result = parity.compare_logits(logits, reference, tokens)
        ok = result.ok(args.logits_atol, args.loss_atol)
        source = args.load_dir if args.load_dir else args.hf_dir
        print(
            f"{describe_megatron_core()}\n"
            f"{MODEL_CLASS_NAMES[args.model]} at layout {layout} ({world_size} processes), "
            f"tokens {list(tokens.shape)}, "
            f"weights from {source}\n"
            f"  max |logit diff|  {result.max_abs_diff:.3e}  (tolerance {args.logits_atol:g})\n"
            f"  max rel diff      {result.max_rel_diff:.3e}\n"
            f"  loss megatron     {result.megatron_loss:.7f}\n"
            f"  loss HF           {result.reference_loss:.7f}\n"
            f"  |loss diff|       {result.loss_diff:.3e}  (tolerance {args.loss_atol:g})\n"
            f"  {'PASS' if ok else 'FAIL'}",
            flush=True,
        )
        if args.dump_logits:
            from safetensors.torch import save_file

            save_file({"logits": logits.contiguous()}, args.dump_logits)
        status = 0 if ok else 1
    verdict = torch.tensor([status])
    dist.broadcast(verdict, src=0)
    return int(verdict.item())


if __name__ == "__main__":
    sys.exit(main())
