# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Quantizer state in Megatron torch_dist checkpoints.

modelopt's megatron-core plugin makes a quantized model's ``sharded_state_dict()`` carry its
quantizers: every quantized linear adds its quantizers' settings as ``_extra_state`` and their
amaxes as sharded tensors (``...linear_fc1.input_quantizer._amax``). A checkpoint saved from such a
model therefore holds the quantizer state, resharded at load like any other tensor. What it does
not hold is the record that the model was quantized at all (the ``modelopt_state`` directory that
modelopt's ``save_sharded_modelopt_state`` writes; megatron-training 0.19's ``save_checkpoint``
writes it only when ``megatron.post_training``, absent from the megatron-core wheel, is
importable). So loading is modelopt's two-phase restore with the recipe standing in for that
record when it is missing:

1. insert the recipe's quantizers, uncalibrated, then load every quantized module's
   ``_extra_state``, which restores each quantizer's settings and creates its amax buffers
   (modelopt's ``_load_extra_state_from_sharded_checkpoint``, the second half of its
   ``restore_sharded_modelopt_state``);
2. load the model's whole sharded state dict: weights and amaxes.

:func:`save_quantized_model` writes both the model state and ``modelopt_state`` (for modelopt's
and Megatron-LM's own tools).
"""

import os
from pathlib import Path
from typing import Union

import torch

from megatron.minimax.models.conversion.model_weights import unwrap_model
from megatron.minimax.quantization.recipes import QuantizationRecipe

__all__ = [
    "MODELOPT_STATE_DIR",
    "has_quantizer_state",
    "load_quantized_model",
    "restore_quantizers",
    "save_quantized_model",
]

MODELOPT_STATE_DIR = "modelopt_state"
"""Subdirectory of a torch_dist checkpoint where modelopt keeps its mode record."""

_AMAX_SUFFIX = "_quantizer._amax"


def has_quantizer_state(dist_dir: Union[str, os.PathLike]) -> bool:
    """Whether the torch_dist checkpoint ``dist_dir`` was saved from a quantized model."""
    from torch.distributed.checkpoint import FileSystemReader

    if (Path(dist_dir) / MODELOPT_STATE_DIR).is_dir():
        return True
    metadata = FileSystemReader(str(dist_dir)).read_metadata()
    return any(key.endswith(_AMAX_SUFFIX) for key in metadata.state_dict_metadata)


def restore_quantizers(
    model: torch.nn.Module, recipe: QuantizationRecipe, dist_dir: Union[str, os.PathLike]
) -> None:
    """Phase 1: the quantizers of the checkpoint ``dist_dir``, with their settings and amax
    buffers (values still to be loaded). Collective (a torch_dist load)."""
    from modelopt.torch.opt.plugins.mcore_dist_checkpointing import (
        _load_extra_state_from_sharded_checkpoint,
    )

    from megatron.minimax.quantization.calibration import insert_quantizers, use_local_kernels

    gpt = unwrap_model(model)
    # The recipe, not a saved modelopt_state, says which quantizers exist: megatron-training
    # checkpoints have no modelopt_state, and one saved on a CPU names the CPU backend.
    insert_quantizers(gpt, recipe)
    _load_extra_state_from_sharded_checkpoint(gpt, str(dist_dir), prefix="")
    use_local_kernels(gpt)


def load_quantized_model(
    model: torch.nn.Module, recipe: QuantizationRecipe, dist_dir: Union[str, os.PathLike]
) -> None:
    """Restores the quantizers and loads weights and amaxes from ``dist_dir`` (any layout).

    Raises:
        ValueError: if the checkpoint lacks tensors of the quantized model or has foreign ones.
    """
    from megatron.core import dist_checkpointing

    restore_quantizers(model, recipe, dist_dir)
    gpt = unwrap_model(model)
    sharded = gpt.sharded_state_dict()
    state = dist_checkpointing.load(sharded, str(dist_dir))
    state = {k: v for k, v in state.items() if k in sharded}
    missing, unexpected = gpt.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ValueError(
            f"{dist_dir}: checkpoint lacks {missing[:5]}, has unexpected {unexpected[:5]}"
        )


def save_quantized_model(model: torch.nn.Module, dist_dir: Union[str, os.PathLike]) -> None:
    """Saves a quantized model chunk as a torch_dist checkpoint with modelopt's mode record
    into the directory ``dist_dir`` (created if missing; must be empty). Collective."""
    from megatron.core import dist_checkpointing
    from modelopt.torch.opt.plugins.mcore_dist_checkpointing import save_sharded_modelopt_state

    gpt = unwrap_model(model)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        os.makedirs(dist_dir, exist_ok=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    dist_checkpointing.save(gpt.sharded_state_dict(), str(dist_dir))
    save_sharded_modelopt_state([gpt], str(dist_dir))
