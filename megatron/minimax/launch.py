# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""What the command-line tools share: process-group setup, the tokens-file format, layout flags,
one-line errors, and keeping library notices nobody can act on off their output.

Nothing heavy is imported at module level, so tools can answer ``--help`` and reject bad input
before megatron-core loads.
"""

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
from typing import Callable, Iterator, NoReturn, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

TOKEN_MASK_KEYS = ("loss_mask", "response_mask")
"""Optional [batch, seq] 0/1 masks a tokens file may carry (at most one)."""


@contextlib.contextmanager
def distributed_process_group() -> Iterator[None]:
    """Join the torchrun process group for the block (a one-process group when run without
    torchrun): nccl on GPU; gloo on CPU, with megatron-core's CPU shims applied.

    On exit, megatron-core's model-parallel state and the group are destroyed, the shims
    restored and the launch variables set here removed, so the calling process is left as it
    was. The shims are scoped to the block (and the thread that entered it).
    """
    added_env = {}
    if "RANK" not in os.environ:
        added_env = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                added_env["MASTER_PORT"] = str(s.getsockname()[1])
        os.environ.update(added_env)
    from megatron.minimax.platform.cpu_shims import cpu_shims

    try:
        with cpu_shims():
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
                dist.init_process_group("nccl")
            else:
                dist.init_process_group("gloo")
            try:
                yield
            finally:
                leave_process_group()
    finally:
        for name in added_env:
            os.environ.pop(name, None)


def leave_process_group() -> None:
    """Destroy megatron-core's model-parallel state (if any) and the default process group (if
    any)."""
    if not dist.is_initialized():
        return
    from megatron.core import parallel_state

    from megatron.minimax.platform.parallel_state import destroy_model_parallel

    if parallel_state.model_parallel_is_initialized():
        destroy_model_parallel()
    dist.destroy_process_group()


def read_tokens_file(
    path: str, vocab_size: int, mask_keys: Sequence[str] = ()
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Read a tokens file: safetensors with int64 ``tokens`` [batch, seq], and optionally one of
    ``mask_keys`` of the same shape with 0/1 values.

    Returns:
        ``(tokens, mask or None)``.

    Raises:
        ValueError: one line naming the file and what is wrong.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise ValueError(f"{path}: cannot read tokens ({e})") from None
    tokens = tensors.get("tokens")
    if tokens is None:
        raise ValueError(f"{path}: no tensor named 'tokens' (found {sorted(tensors)})")
    if tokens.dtype != torch.int64 or tokens.dim() != 2:
        raise ValueError(
            f"{path}: 'tokens' must be int64 [batch, seq], got {tokens.dtype} {list(tokens.shape)}"
        )
    if tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(
            f"{path}: need at least one sequence of at least 2 tokens, got {list(tokens.shape)}"
        )
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(f"{path}: token ids must lie in [0, {vocab_size})")
    present = [key for key in mask_keys if key in tensors]
    if len(present) > 1:
        raise ValueError(f"{path}: both {present[0]!r} and {present[1]!r} given; keep one")
    mask = tensors[present[0]] if present else None
    if mask is not None:
        if mask.shape != tokens.shape:
            raise ValueError(
                f"{path}: {present[0]!r} has shape {list(mask.shape)}, tokens {list(tokens.shape)}"
            )
        if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"{path}: {present[0]!r} values must be 0 or 1")
        if not mask[:, 1:].bool().any():
            raise ValueError(
                f"{path}: {present[0]!r} selects no token after the first; nothing to score"
            )
    return tokens, mask


def add_layout_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The ``layout`` argument group of the tools that take a parallel layout (uneven pipeline
    stages included); returned so that a tool can add its own layout flags to it."""
    group = parser.add_argument_group(title="layout")
    group.add_argument("--tp", type=int, default=1, help="Tensor-parallel size.")
    group.add_argument("--pp", type=int, default=1, help="Pipeline-parallel size.")
    group.add_argument("--ep", type=int, default=1, help="Expert-parallel size.")
    group.add_argument(
        "--etp", type=int, default=None, help="Expert tensor-parallel size (default: --tp)."
    )
    group.add_argument(
        "--first-stage-layers",
        type=int,
        default=None,
        help="Decoder layers on the first pipeline stage, for uneven pipelines (62 layers over "
        "PP4: 15, with --last-stage-layers 15, gives 15/16/16/15).",
    )
    group.add_argument(
        "--last-stage-layers",
        type=int,
        default=None,
        help="Decoder layers on the last pipeline stage, for uneven pipelines.",
    )
    return group


MODEL_CLASS_NAMES = {"gpt": "GPTModel", "hybrid": "HybridModel"}
"""``--model`` choices and the megatron-core class each builds."""

MODEL_CLASS_HELP = (
    "megatron-core model class: gpt (GPTModel) or hybrid (HybridModel, pattern '*E' per decoder "
    "layer; the class megatron-core keeps developing). Same weights, bit-identical logits."
)


def add_model_class_argument(group: argparse._ArgumentGroup) -> None:
    """``--model {gpt,hybrid}``: the megatron-core class a tool builds MiniMax-M2 as."""
    group.add_argument(
        "--model", choices=tuple(MODEL_CLASS_NAMES), default="gpt", help=MODEL_CLASS_HELP
    )


def add_parity_layout_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The layout flags of the parity tools (:class:`~megatron.minimax.models.minimax_m2.parity.
    ParallelLayout`: sequence parallelism on by default with TP, at any sequence length)."""
    group = add_layout_arguments(parser)
    group.add_argument(
        "--no-sequence-parallel",
        action="store_true",
        help="Turn sequence parallelism off (it is on by default whenever --tp > 1; sequences "
        "of any length are padded internally to a multiple of --tp, and the padding is dropped "
        "from every result).",
    )
    return group


def parity_layout_from_args(args: argparse.Namespace):
    """The :class:`~megatron.minimax.models.minimax_m2.parity.ParallelLayout` of
    :func:`add_parity_layout_arguments`' flags."""
    from megatron.minimax.models.minimax_m2.parity import ParallelLayout

    return ParallelLayout(
        tp=args.tp,
        pp=args.pp,
        ep=args.ep,
        etp=args.etp,
        sequence_parallel=False if args.no_sequence_parallel else None,
        first_stage_layers=args.first_stage_layers,
        last_stage_layers=args.last_stage_layers,
    )


def build_parity_model_from_args(prog: str, args: argparse.Namespace, checkpoint, layout):
    """This rank's model of a parity tool (``verify_minimax_m2.py``, ``score_logprobs.py``), inside
    the tools' process group: ``layout`` checked against the world and the model, then the model
    built from ``args.load_dir`` or from ``checkpoint`` (an ``HFCheckpoint``; each rank reads only
    its tensors, and of tensor-parallel ones only its part). Bad input: :func:`fail`.

    Returns:
        ``(loaded, rounding)`` of
        :func:`~megatron.minimax.models.minimax_m2.parity.build_for_comparison`.
    """
    from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError
    from megatron.minimax.models.minimax_m2 import parity

    world_size = dist.get_world_size()
    try:
        layout.validate(world_size, checkpoint.config, backend=dist.get_backend())
    except ValueError as e:
        fail(prog, f"impossible layout {layout} on {world_size} processes: {e}")
    try:
        return parity.build_for_comparison(
            checkpoint.config,
            lambda name: checkpoint.get(name, torch.float32),
            layout,
            args.load_dir,
            model=args.model,
            read_hf_slice=checkpoint.get_slice,
        )
    except (CheckpointError, ValueError) as e:
        fail(prog, str(e))


def layout_from_args(args: argparse.Namespace):
    """The :class:`~megatron.minimax.training.minimax_m2_flags.Layout` of
    :func:`add_layout_arguments`' flags."""
    from megatron.minimax.training.minimax_m2_flags import Layout

    return Layout(
        tp=args.tp,
        pp=args.pp,
        ep=args.ep,
        etp=args.etp,
        first_stage_layers=args.first_stage_layers,
        last_stage_layers=args.last_stage_layers,
    )


_UNACTIONABLE_WARNINGS = (
    # megatron-core, on import: optional packages a tool does not use.
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "absl.logging is not installed",
    "Only transformer-engine>=",
    "The following imports from `dynamic_context.py`",
    "MimoModelConfig is experimental",
    # megatron-core's own defaults and a launch without torchrun (a one-process group).
    "full scope is deprecated",
    "Could not determine rank from torch.distributed",
    # megatron-core's layers: an expert-TP size of 1 under sequence parallelism, and a GPU
    # launch setting (a check's speed does not depend on it).
    "`sequence_parallel` is set to `True`, but tensor model parallel size is 1",
    "When using sequence parallelism it is recommended to set the environment variable",
    # torch APIs that megatron-core's collectives and checkpointing call.
    "`torch.distributed.reduce_scatter_tensor` is deprecated",
    "`torch.distributed.all_gather_into_tensor` is deprecated",
    "The argument order of load has been changed",
    "Please use DTensor instead and we are deprecating ShardedTensor",
    "torch.distributed is disabled, unavailable or uninitialized",
    # torch, inside nvidia-modelopt: a deprecation its import triggers, and its Megatron
    # plugin's read of the quantizer state it serialized itself (never written through).
    "`torch.jit.script` is deprecated",
    "The given buffer is not writable",
)
"""Starts of the warning messages that :func:`quiet_library_notices` drops."""

_UNACTIONABLE_WARNING_PATTERNS = (
    # nvidia-modelopt's import: MiniMaxM2ForCausalLM needs a newer transformers than modelopt's
    # tested matrix, and the warning concerns modelopt's HF integration, which no tool uses.
    r"transformers \S+ is not tested with current version of modelopt",
)
"""Regular expressions for the starts of further messages it drops (they name versions)."""

_UNACTIONABLE_LOG_RECORDS = {
    # torch: no GPU on this machine.
    "torch.utils.cpp_extension": ("No CUDA runtime",),
    # Choosing GPTModel is deliberate (pretrain_hybrid.py and --model hybrid build the class
    # megatron-core develops); the notice repeats on every rank for every model built.
    "megatron.core.models.gpt.gpt_model": ("GPTModel IS DEPRECATED",),
    # megatron-core's default save strategy.
    "megatron.core.dist_checkpointing.strategies.torch": ("MCore's async save is deprecated",),
}
"""Logger name -> starts of the messages that :func:`quiet_library_notices` drops."""


class _DropMessages(logging.Filter):
    def __init__(self, *starts: str):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_library_notices() -> None:
    """Drop the notices of torch and megatron-core that no user of a tool can act on, for the
    rest of the process (call it first thing in a tool's ``main``; forked workers inherit it):
    megatron-core's import-time warnings about optional packages (TE, Apex, absl), its
    ``GPTModel`` deprecation notice, torch's note that there is no CUDA runtime (``CUDA_HOME``),
    deprecations of torch APIs inside megatron-core and nvidia-modelopt, and modelopt's
    version-matrix notice (:data:`_UNACTIONABLE_WARNINGS`, :data:`_UNACTIONABLE_WARNING_PATTERNS`,
    :data:`_UNACTIONABLE_LOG_RECORDS`). Every other warning, ours included, is still shown."""
    for start in _UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(start))
    for pattern in _UNACTIONABLE_WARNING_PATTERNS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, starts in _UNACTIONABLE_LOG_RECORDS.items():
        logging.getLogger(name).addFilter(_DropMessages(*starts))


def send_library_logging_to_stderr() -> None:
    """megatron.training installs a root log handler on stdout when imported; a tool whose stdout
    is its result moves it to stderr."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (
            sys.stdout,
            sys.__stdout__,
        ):
            handler.setStream(sys.__stderr__)


def fail(prog: str, message: str) -> NoReturn:
    """Bad input: one line on stderr naming ``prog``, exit status 2 (the process group, if any,
    is left first)."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    leave_process_group()
    sys.exit(2)


def compute_from_hf_config(prog: str, args: argparse.Namespace, compute: Callable[[dict], T]) -> T:
    """The body of the tools that answer from a config.json alone (``args.hf_config``,
    ``args.mtp_num_layers``): ``compute(hf_config)`` with megatron's import notices silenced
    and its prints and log records on stderr (stdout is the tool's result). A bad path, config
    or layout (``ValueError``/``OSError``) exits through :func:`fail` with its first line."""
    quiet_library_notices()
    if args.mtp_num_layers is not None and args.mtp_num_layers < 1:
        fail(prog, f"--mtp-num-layers must be >= 1, got {args.mtp_num_layers}")

    from megatron.minimax.models.minimax_m2.hf_config import load_hf_config

    send_library_logging_to_stderr()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            hf_config = load_hf_config(args.hf_config)
            if not isinstance(hf_config, dict):
                raise ValueError(f"{args.hf_config}: not a JSON object")
            return compute(hf_config)
    except (ValueError, OSError) as e:
        fail(prog, str(e).splitlines()[0])
