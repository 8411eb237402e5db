# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Print the pretrain_gpt.py (or, with --model hybrid, pretrain_hybrid.py) flags that build the
model a MiniMax-M2-family config.json describes.

The flags are generated from megatron.minimax's HF-config translation (never hand-copied) and
checked before printing: parsed back with the training parser, they must reproduce the
TransformerConfig that the translation builds. They cover the architecture (including
--qk-layernorm-scope layer and --moe-router-dtype fp32), the GPT model arguments (RoPE, untied
embeddings, vocabulary) and the parallel layout given here, which also decides
--make-vocab-size-divisible-by: the released 200,064-token vocabulary stays unpadded (padded rows
would be extra zero logits in the training softmax).

Output: one flag with its values per line, no backslashes, no spaces inside a token. A shell
script reads them into an array without pathname expansion (the --model hybrid pattern,
--hybrid-layer-pattern '*E*E...', holds '*' and '|'):

    mapfile -t MODEL_ARGS < <(python tools/minimax_m2_args.py --hf-config config.json \
        --tp 2 --ep 8 | tr ' ' '\n')
    torchrun ... pretrain_gpt.py "${MODEL_ARGS[@]}" ...

With --model hybrid the pattern replaces --num-layers, --mtp-num-layers and the uneven-stage
flags: '*E' per layer, '|' between pipeline stages (--first-stage-layers/--last-stage-layers
place them), '/*E' per MTP depth.

Exit status: 0 on success, 2 on a bad path, an unsupported config or an impossible layout (one
line on stderr naming the problem).
"""

import argparse

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
        "--mtp-num-layers",
        type=int,
        default=None,
        help="Build this many MTP layers (default: none; the releases ship no MTP weights).",
    )
    add_model_class_argument(group)
    add_layout_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)

    def training_flags(hf_config):
        from megatron.minimax.training.minimax_m2_flags import minimax_m2_training_flags

        flags, _, _ = minimax_m2_training_flags(
            hf_config, layout_from_args(args), mtp_num_layers=args.mtp_num_layers, model=args.model
        )
        return flags

    print("\n".join(compute_from_hf_config("minimax_m2_args.py", args, training_flags)))


if __name__ == "__main__":
    main()
