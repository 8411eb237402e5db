#!/usr/bin/env python3
# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Tokenise JSONL into Megatron indexed datasets for MiniMax-M2 pretraining (text) or SFT (chat).

Pretraining text, one ``{"text": ...}`` per line::

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \\
        --tokenizer-dir /models/MiniMax-M2.5 --append-eod --workers 16
    # -> data/corpus_text_document.bin/.idx

SFT conversations, one ``{"messages": [...], "tools": [...]}`` per line::

    python tools/preprocess_data.py --mode chat --input sft.jsonl --output-prefix data/sft \\
        --tokenizer-dir /models/MiniMax-M2.5 --workers 16
    # -> data/sft_chat_document.bin/.idx and data/sft_chat_loss_mask.bin/.idx

The logic lives in :mod:`megatron.minimax.data.preprocess`; see ``docs/data.md`` for the formats.
Exit status: 0 on success, 2 on a bad option, path or input row (one line on stderr), 130 when
interrupted.
"""

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

_PROG = "preprocess_data.py"


def _silence_import_noise() -> None:
    """Hide the optional-dependency notices that torch and megatron-core print on import."""
    for pattern in (
        r"Transformer Engine and Apex are not installed",
        r"Apex is not installed",
        r"absl\.logging is not installed",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


# At import, not in main(): the worker pool's fork server imports this script (as __mp_main__)
# before the library, and must be quiet as well.
_silence_import_noise()


class _OneLineParser(argparse.ArgumentParser):
    """Reports usage errors as a single line (no usage dump) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    """argparse type for integers >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = _OneLineParser(
        prog=_PROG,
        description="Tokenise a JSONL file with a local Hugging Face tokenizer into Megatron "
        "indexed datasets (.bin/.idx) for MiniMax-M2 pretraining (text mode) or supervised "
        "fine-tuning with a loss mask (chat mode).",
    )
    parser.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help="JSONL file to read, one JSON object per line; blank lines are ignored.",
    )
    parser.add_argument(
        "--output-prefix",
        required=True,
        metavar="PREFIX",
        help="Output path prefix. Text mode writes PREFIX_<key>_document.bin/.idx for every json "
        "key; chat mode writes PREFIX_chat_document.bin/.idx (tokens) and "
        "PREFIX_chat_loss_mask.bin/.idx (uint8 loss mask). The directory must exist; existing "
        "files are replaced only when the run succeeds.",
    )
    parser.add_argument(
        "--tokenizer-dir",
        required=True,
        metavar="DIR",
        help="Local directory of the Hugging Face tokenizer (tokenizer.json, tokenizer_config.json "
        "and, for chat mode, the chat template), e.g. a MiniMax-M2.5 download. Nothing is fetched "
        "from the hub.",
    )
    parser.add_argument(
        "--mode",
        choices=("text", "chat"),
        default="text",
        help="text: tokenise each json key's string as a document (pretraining). chat: render "
        "the conversation under the json key with the tokenizer's chat template and write a loss "
        "mask that covers the assistant turns only (SFT). Default: text.",
    )
    parser.add_argument(
        "--json-keys",
        nargs="+",
        default=None,
        metavar="KEY",
        help="Keys to read from each row. Text mode: one output dataset per key, default 'text'. "
        "Chat mode: exactly one key holding the messages list, default 'messages'.",
    )
    parser.add_argument(
        "--append-eod",
        action="store_true",
        help="Text mode only: append the tokenizer's EOS id (MiniMax-M2: [e~[ = 200020) to every "
        "document.",
    )
    parser.add_argument(
        "--split-multiturn",
        action="store_true",
        help="Chat mode only: write one sample per round (a user message and the assistant and "
        "tool turns after it), ending after that round's last assistant turn and trained on that "
        "round only, so that every turn's reasoning is kept and trained in the context the model "
        "sees at inference. Costs roughly quadratic tokens in the number of rounds. Default: one "
        "sample per conversation, in which the template drops the reasoning of turns before the "
        "last user message.",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="Worker processes that tokenise in parallel. The output is byte-identical for any "
        "value. Default: 1.",
    )
    parser.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=256,
        metavar="N",
        help="Rows sent to a worker at a time. Default: 256.",
    )
    parser.add_argument(
        "--max-documents",
        type=_positive_int,
        default=None,
        metavar="N",
        help="Stop after this many input rows, e.g. for a quick trial. Default: read everything.",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Show a progress bar on stderr (bytes read, rows, tokens, tokens per second). "
        "Default: only when stderr is a terminal.",
    )
    return parser


def _path_problem(args: argparse.Namespace) -> Optional[str]:
    """The first bad path, checked before the slow imports so such mistakes fail at once."""
    if not os.path.isfile(args.input):
        return f"input file not found: {args.input}"
    if not os.path.isdir(args.tokenizer_dir):
        return f"tokenizer directory not found: {args.tokenizer_dir}"
    out_dir = os.path.dirname(args.output_prefix) or "."
    if not os.path.isdir(out_dir):
        return f"output directory does not exist: {out_dir}"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (already reported) and --help
        return int(exc.code or 0)
    problem = _path_problem(args)
    if problem is not None:
        print(f"{_PROG}: error: {problem}", file=sys.stderr)
        return 2

    from megatron.minimax.data.preprocess import PreprocessConfig, PreprocessError, preprocess

    # After the imports, so megatron-core's import-time INFO messages stay hidden.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{_PROG}: %(levelname)s: %(message)s"))
    package_logger = logging.getLogger("megatron.minimax")
    saved = (package_logger.level, package_logger.propagate)
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False

    config = PreprocessConfig(
        input_path=args.input,
        output_prefix=args.output_prefix,
        tokenizer_dir=args.tokenizer_dir,
        mode=args.mode,
        json_keys=args.json_keys,
        append_eod=args.append_eod,
        split_multiturn=args.split_multiturn,
        workers=args.workers,
        chunk_size=args.chunk_size,
        max_documents=args.max_documents,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    try:
        preprocess(config)
    except PreprocessError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted; no output written", file=sys.stderr)
        return 130
    finally:
        # main() may run inside a larger program (tests); leave its logging as it was.
        package_logger.removeHandler(handler)
        package_logger.setLevel(saved[0])
        package_logger.propagate = saved[1]
    return 0


if __name__ == "__main__":
    sys.exit(main())
