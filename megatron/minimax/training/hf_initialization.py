# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Train straight from a released HF checkpoint: ``pretrain_gpt.py --load-hf-dir DIR`` (and
``pretrain_hybrid.py``: the weight table names HybridModel parameters too).

The freshly built model (every pipeline stage and virtual stage of this rank, after
megatron-training's ``Float16Module``/DDP wrapping and before the optimizer copies its
parameters) is filled from the HF directory through the weight table, as a post-wrap hook of the
model config. Each rank reads only what it holds: its pipeline stage's layers, its expert-parallel
share of the experts, and, of a tensor-parallel weight, only the rows or columns of its piece
(an FP8 tensor in whole 128x128 blocks, dequantised in fp32 and rounded once to the parameter's
dtype, as ``convert_minimax_m2.py hf-to-mcore`` does). The router gate and
``e_score_correction_bias`` stay fp32. MTP layers, which the releases do not ship, keep their
initial values.

Checkpoints saved later are ordinary torch_dist checkpoints. When ``--load`` holds one, the run
resumes from it and the HF directory is not read.
"""

import argparse
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from megatron.core.utils import log_single_rank

logger = logging.getLogger(__name__)

__all__ = [
    "HFInitialization",
    "add_hf_initialization_args",
    "hf_initialization",
    "load_hf_checkpoint",
]


def add_hf_initialization_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--load-hf-dir``."""
    group = parser.add_argument_group(title="initialization from a HF checkpoint")
    group.add_argument(
        "--load-hf-dir",
        default=None,
        help="MiniMax-M2-family HF checkpoint directory (the released FP8 one, or BF16) to fill "
        "the freshly built model with, at any TP/PP/EP/ETP layout, instead of a converted "
        "checkpoint: each rank reads only the tensors and slices it holds; router tensors stay "
        "fp32; MTP layers keep their initial values. Checkpoints saved later (--save) are "
        "ordinary torch_dist ones, and when --load holds one the run resumes from it without "
        "reading this directory.",
    )
    return parser


@dataclass
class HFReadReport:
    """What this rank read from the HF checkpoint."""

    bytes_by_tensor: Dict[str, int] = field(default_factory=dict)
    """HF tensor name -> bytes of it (and its scales) read by this rank."""
    initial_values_kept: List[str] = field(default_factory=list)
    """Canonical names of model tensors the checkpoint has no source for (MTP layers)."""

    @property
    def bytes_read(self) -> int:
        return sum(self.bytes_by_tensor.values())


def load_hf_checkpoint(model_chunks: List[torch.nn.Module], hf_dir: str) -> HFReadReport:
    """Fill this rank's model chunks (possibly wrapped) from the HF checkpoint ``hf_dir``.

    Raises:
        CheckpointError: the directory is not a readable MiniMax-M2-family checkpoint.
        ValueError: a tensor of the checkpoint does not fit the model (one line naming it).
    """
    from megatron.core.utils import get_model_config

    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.conversion.mappings import MappingContext
    from megatron.minimax.models.conversion.model_weights import load_hf_weights, padded_vocab_rows
    from megatron.minimax.models.minimax_m2.weight_mapping import MINIMAX_M2_WEIGHTS

    report = HFReadReport()
    with HFCheckpoint(hf_dir) as ckpt:
        vocab_size = ckpt.config["vocab_size"]
        config = get_model_config(model_chunks[0])
        tp = config.tensor_model_parallel_size
        ctx = MappingContext(
            num_attention_heads=config.num_attention_heads,
            num_query_groups=config.num_query_groups or config.num_attention_heads,
            head_dim=config.kv_channels,
            vocab_size=vocab_size,
            padded_vocab_size=padded_vocab_rows(model_chunks, tp, vocab_size),
        )

        def counted(read):
            def wrapper(name, *args):
                before = ckpt.bytes_read
                tensor = read(name, *args)
                report.bytes_by_tensor[name] = (
                    report.bytes_by_tensor.get(name, 0) + ckpt.bytes_read - before
                )
                return tensor

            return wrapper

        for chunk in model_chunks:
            loaded = load_hf_weights(
                chunk,
                counted(lambda name: ckpt.get(name, torch.float32)),
                ctx,
                MINIMAX_M2_WEIGHTS,
                allow_unmapped=lambda name: name.startswith("mtp."),
                read_hf_slice=counted(
                    lambda name, dim, start, stop: ckpt.get_slice(name, dim, start, stop)
                ),
            )
            report.initial_values_kept += loaded.left_unmapped
    return report


class HFInitialization:
    """The post-wrap hook that fills the model from ``hf_dir``; :attr:`report` after it ran."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        self.report: Optional[HFReadReport] = None

    def __call__(self, model_chunks: List[torch.nn.Module]) -> List[torch.nn.Module]:
        self.report = load_hf_checkpoint(model_chunks, self.hf_dir)
        log_single_rank(
            logger,
            logging.INFO,
            f"Initialized the model from HF checkpoint {self.hf_dir}: read "
            f"{self.report.bytes_read / 1024**3:.2f} GiB on rank 0"
            + (
                f"; {len(self.report.initial_values_kept)} MTP tensors keep their initial values"
                if self.report.initial_values_kept
                else ""
            ),
        )
        return model_chunks


def hf_initialization(args: argparse.Namespace, model_config) -> Optional[HFInitialization]:
    """Register the ``--load-hf-dir`` hook on ``model_config`` (a megatron-training model
    config), unless the run resumes from ``--load``; returns the hook (None when not used).

    Raises:
        ValueError: ``--load-hf-dir`` is not a readable checkpoint directory, or
            ``--pretrained-checkpoint`` also gives the initial weights.
    """
    hf_dir = getattr(args, "load_hf_dir", None)
    if hf_dir is None:
        return None
    from megatron.training.checkpointing import checkpoint_exists

    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint

    if args.load is not None and checkpoint_exists(args.load):
        log_single_rank(
            logger,
            logging.INFO,
            f"--load {args.load} holds a checkpoint: resuming from it, --load-hf-dir unused",
        )
        return None
    if getattr(args, "pretrained_checkpoint", None) is not None:
        raise ValueError(
            "--load-hf-dir and --pretrained-checkpoint both give the initial weights; keep one"
        )
    if not os.path.isdir(hf_dir):
        raise ValueError(f"--load-hf-dir {hf_dir}: not a directory")
    HFCheckpoint(hf_dir).validate()  # config, index and shard headers: fail before building
    hook = HFInitialization(hf_dir)
    model_config.post_wrap_hooks.append(hook)
    return hook
