# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Report a MiniMax-M2-family model's parameters and per-GPU training memory as JSON.

Counts come from the model pretrain_gpt.py builds from tools/minimax_m2_args.py's flags,
constructed on the meta device (no storage, no GPU, a few seconds for the 229B model): total and
per-token active parameters from the whole model; weights, gradients and optimizer states per
rank from each pipeline stage's model chunk, built as a rank of the given layout in a fake process
group. Byte accounting (bf16 weights, fp32 router gate, fp32 gradient buffer, distributed Adam
with fp32 main parameters and moments sharded over data parallelism) is spelled out in the
output's "byte_accounting" and in megatron/minimax/training/model_report.py.

Exit status: 0 on success, 2 on a bad path, an unsupported config or an impossible layout (one
line on stderr naming the violated constraint).

    python tools/model_report.py --hf-config MiniMax-M2.5/config.json --tp 2 --pp 2 --ep 8 \\
        --etp 1 --num-gpus 64 --seq-length 4096 --micro-batch-size 1
"""

import argparse
import contextlib
import json
import sys


from megatron.minimax.launch import (
    add_layout_arguments,
    layout_from_args,
    quiet_optional_dependency_notices,
    send_library_logging_to_stderr,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    group = parser.add_argument_group(title="input")
    group.add_argument(
        "--hf-config",
        required=True,
        help="MiniMax-M2-family config.json, or the HF directory that contains it.",
    )
    group.add_argument(
        "--mtp-num-layers", type=int, default=None, help="MTP layers to include (default: none)."
    )
    add_layout_arguments(parser)
    group.add_argument(
        "--num-gpus",
        type=int,
        default=None,
        help="World size (default: the smallest that fits the layout, PP x lcm(TP, EP x ETP)).",
    )
    group.add_argument("--seq-length", type=int, default=4096, help="Sequence length.")
    group.add_argument("--micro-batch-size", type=int, default=1, help="Micro-batch size.")
    return parser.parse_args(argv)


def fail(message: str) -> "NoReturn":  # noqa: F821
    """Bad input: one line on stderr, exit status 2."""
    print(f"model_report.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_optional_dependency_notices()
    if args.mtp_num_layers is not None and args.mtp_num_layers < 1:
        fail(f"--mtp-num-layers must be >= 1, got {args.mtp_num_layers}")

    from megatron.minimax.models.minimax_m2.hf_config import load_hf_config
    from megatron.minimax.training.model_report import minimax_m2_model_report

    # stdout is the result: megatron's progress prints and log records go to stderr.
    send_library_logging_to_stderr()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            hf_config = load_hf_config(args.hf_config)
            if not isinstance(hf_config, dict):
                raise ValueError(f"{args.hf_config}: not a JSON object")
            report = minimax_m2_model_report(
                hf_config,
                layout_from_args(args),
                num_gpus=args.num_gpus,
                seq_length=args.seq_length,
                micro_batch_size=args.micro_batch_size,
                mtp_num_layers=args.mtp_num_layers,
            )
    except (ValueError, OSError) as e:
        fail(str(e).splitlines()[0])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
