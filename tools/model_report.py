# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Report a MiniMax-M2-family model's parameters and per-GPU training memory as JSON.

Counts come from the model pretrain_gpt.py (--model hybrid: pretrain_hybrid.py) builds from
tools/minimax_m2_args.py's flags, constructed on the meta device (no storage, no GPU, a few seconds for the 229B model): total and
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
import json

from megatron.minimax.launch import (
    add_layout_arguments,
    add_model_class_argument,
    compute_from_hf_config,
    layout_from_args,
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
    add_model_class_argument(group)
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


def main(argv=None) -> None:
    args = parse_args(argv)

    def report(hf_config):
        from megatron.minimax.training.model_report import minimax_m2_model_report

        return minimax_m2_model_report(
            hf_config,
            layout_from_args(args),
            num_gpus=args.num_gpus,
            seq_length=args.seq_length,
            micro_batch_size=args.micro_batch_size,
            mtp_num_layers=args.mtp_num_layers,
            model=args.model,
        )

    print(json.dumps(compute_from_hf_config("model_report.py", args, report), indent=2))


if __name__ == "__main__":
    main()
