# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Score given token sequences with a MiniMax-M2 Megatron model: per-token log-probabilities.

The train/inference mismatch check of RL: compute log p(tokens[:, t+1] | tokens[:, :t+1]) with the
Megatron model at any parallel layout (tensor, pipeline, expert parallel), from vocab-parallel
logits (the vocabulary is never gathered on one rank, padded rows never enter the softmax), and
optionally compare with transformers' fp32 model on rank 0.

Weights come from the HF directory (through the MiniMax-M2 weight table) or, with --load-dir, from
a Megatron torch_dist checkpoint (resharded at load). The Megatron model computes in fp32.

Input: a safetensors file with int64 ``tokens`` [batch, seq] and optionally ``loss_mask`` or
``response_mask`` [batch, seq] (0/1 or bool): only positions t with mask[:, t+1] set are scored and
reported. Output (--output, written by rank 0): fp32 ``logprobs`` [batch, seq-1] (0 where not
scored) and bool ``scored`` [batch, seq-1]; with --compare-hf also fp32 ``hf_logprobs``.

Exit status: 0 on success (and within --tolerance with --compare-hf), 1 above the tolerance, 2 on
bad input (one line on stderr). Launch it like any Megatron tool (gloo on CPU, nccl on GPU):

    torchrun --nproc-per-node 4 tools/score_logprobs.py --hf-dir /path/to/MiniMax-M2.5 \\
        --load-dir /path/to/mcore --tp 2 --ep 2 --etp 1 --tokens-file rollout.safetensors \\
        --output scores.safetensors --compare-hf
"""

import argparse
import sys
from typing import NoReturn

import torch
import torch.distributed as dist

from megatron.minimax import launch
from megatron.minimax.launch import (
    MODEL_CLASS_NAMES,
    TOKEN_MASK_KEYS,
    add_model_class_argument,
    add_parity_layout_arguments,
    distributed_process_group,
    parity_layout_from_args,
    quiet_library_notices,
    read_tokens_file,
)

PROG = "score_logprobs.py"


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
        help="MiniMax-M2-family HF directory (config.json, safetensors; BF16, FP32 or the released "
        "FP8 format). The model config, the --compare-hf reference, and the Megatron weights "
        "unless --load-dir is given.",
    )
    group.add_argument(
        "--load-dir",
        default=None,
        help="Megatron torch_dist checkpoint (e.g. from convert_minimax_m2.py hf-to-mcore) to load "
        "into the Megatron model instead of mapping the HF weights.",
    )
    group.add_argument(
        "--tokens-file",
        required=True,
        help="safetensors file: int64 'tokens' [batch, seq]; optional 'loss_mask' or "
        "'response_mask' [batch, seq] selecting the scored tokens.",
    )
    add_model_class_argument(group)
    group = add_parity_layout_arguments(parser)
    group.add_argument(
        "--micro-batch-size",
        type=int,
        default=None,
        help="Sequences per forward pass (default: the whole batch); must divide the batch.",
    )
    group = parser.add_argument_group(title="output")
    group.add_argument(
        "--output", default=None, help="safetensors file for the log-probabilities (rank 0)."
    )
    group.add_argument(
        "--compare-hf",
        action="store_true",
        help="Also compute transformers' fp32 log-probabilities on rank 0 (on exactly the weights "
        "Megatron holds, one decoder layer in host memory at a time) and report max |diff|, "
        "mean |diff| and the k3 KL estimate.",
    )
    group.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="--compare-hf: max accepted |log-prob difference| (exit status 1 above it).",
    )
    return parser.parse_args(argv)


def fail(message: str) -> NoReturn:
    launch.fail(PROG, message)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_library_notices()
    from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError, HFCheckpoint
    from megatron.minimax.models.minimax_m2 import logprobs

    try:
        checkpoint = HFCheckpoint(args.hf_dir)
        checkpoint.validate()
    except CheckpointError as e:
        fail(str(e))
    hf_config = checkpoint.config
    try:
        tokens, mask = read_tokens_file(args.tokens_file, hf_config["vocab_size"], TOKEN_MASK_KEYS)
    except ValueError as e:
        fail(str(e))
    scored = logprobs.scored_positions(mask, tokens)
    if args.micro_batch_size is not None and (
        args.micro_batch_size < 1 or tokens.shape[0] % args.micro_batch_size
    ):
        fail(
            f"--micro-batch-size {args.micro_batch_size} does not divide the batch {tokens.shape[0]}"
        )
    layout = parity_layout_from_args(args)

    with distributed_process_group():
        return _score(args, checkpoint, layout, tokens, scored)


def _score(args, checkpoint, layout, tokens, scored) -> int:
    from megatron.minimax.models.minimax_m2 import logprobs

    rank, world_size = dist.get_rank(), dist.get_world_size()
    loaded, rounding = launch.build_parity_model_from_args(PROG, args, checkpoint, layout)
    scores = logprobs.megatron_log_probs(loaded, tokens, args.micro_batch_size)
    scores = scores.masked_fill(~scored, 0.0)

    status = 0
    if rank == 0:
        source = args.load_dir if args.load_dir else args.hf_dir
        lines = [
            f"{MODEL_CLASS_NAMES[args.model]} at layout {layout} ({world_size} processes), "
            f"tokens {list(tokens.shape)}, "
            f"{int(scored.sum())} scored positions, weights from {source}"
        ]
        outputs = {"logprobs": scores.contiguous(), "scored": scored.contiguous()}
        if args.compare_hf:
            from megatron.minimax.models.minimax_m2.hf_reference import streamed_hf_logits

            # Layer by layer: host memory for one decoder layer, whatever the depth.
            reference_logits = streamed_hf_logits(args.hf_dir, tokens, round_to=rounding)
            reference = logprobs.log_probs_from_logits(reference_logits, tokens)
            reference = reference.masked_fill(~scored, 0.0)
            result = logprobs.compare_log_probs(scores, reference, scored)
            ok = result.ok(args.tolerance)
            lines += [
                f"  max |logprob diff|   {result.max_abs_diff:.3e}  (tolerance {args.tolerance:g})",
                f"  mean |logprob diff|  {result.mean_abs_diff:.3e}",
                f"  KL k3 (HF || Megatron) {result.kl_k3:.3e}",
                f"  {'PASS' if ok else 'FAIL'}",
            ]
            outputs["hf_logprobs"] = reference.contiguous()
            status = 0 if ok else 1
        print("\n".join(lines), flush=True)
        if args.output:
            from safetensors.torch import save_file

            save_file(outputs, args.output)
    verdict = torch.tensor([status])
    dist.broadcast(verdict, src=0)
    return int(verdict.item())


if __name__ == "__main__":
    sys.exit(main())
