# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""HF-named weights of a live, sharded MiniMax-M2 model, for RL refit of a rollout engine.

:func:`export_hf_weights` walks this rank's model chunks and yields the released on-disk names
(``model.layers.3.block_sparse_moe.experts.17.w1.weight``, ...) with full tensors: tensor-parallel
pieces are all-gathered over the (expert-)TP group and expert weights over the expert-parallel
group (:func:`~megatron.minimax.models.conversion.model_weights.iter_hf_weights`), the vocabulary
padding is stripped, and each tensor is cast (or block-quantised to FP8) the way the release
stores it. It is the in-memory twin of ``convert_mcore_to_hf``; both read the same weight table.

Pipeline parallelism: every rank of a pipeline stage yields that stage's tensors (its decoder
layers, plus the embedding on the first stage and the final norm and ``lm_head`` on the last), so
the union over stages is the whole model, each name exactly once. An engine fed by one rank per
stage needs nothing more. To collect everything on one rank, iterate on every rank and send each
stage's tensors to the destination, e.g. with ``torch.distributed.broadcast_object_list`` of the
``(name, shape, dtype)`` headers of a batch followed by a ``broadcast`` of each tensor over the
pipeline group from the stage's rank (``parallel_state.get_pipeline_model_parallel_group()``);
stages never share a name, so the order of stages does not matter.
"""

from typing import Iterable, Iterator, Optional, Set, Tuple, Union

import torch

from megatron.minimax.checkpoint.fp8_blockwise import quantize_blockwise
from megatron.minimax.checkpoint.hf_checkpoint import SCALE_SUFFIX
from megatron.minimax.models.conversion.model_weights import iter_hf_weights, padded_vocab_rows
from megatron.minimax.models.minimax_m2.hf_config import GPTModelArgs, padded_vocab_size
from megatron.minimax.models.minimax_m2.weight_mapping import (
    MINIMAX_M2_WEIGHTS,
    mapping_context,
    release_fp8_tensor,
)
from megatron.minimax.transformer.transformer_config import TransformerConfig

__all__ = ["export_hf_weights"]


def export_hf_weights(
    model_chunks: Union[torch.nn.Module, Iterable[torch.nn.Module]],
    config: TransformerConfig,
    model_args: GPTModelArgs,
    *,
    fmt: str = "bf16",
    dtype: torch.dtype = torch.bfloat16,
    reference_quantized: Optional[Set[str]] = None,
    block_size: Tuple[int, int] = (128, 128),
) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yields ``(HF on-disk name, full tensor)`` for this pipeline stage's weights.

    Collective: every rank of the stage's tensor-, expert-tensor- and expert-parallel groups must
    iterate to the end together (all ranks of a stage yield the same names and values).

    Args:
        model_chunks: this rank's model chunk, or its list of chunks (virtual pipeline), possibly
            wrapped (DDP, Float16Module).
        config: the model's ``TransformerConfig``.
        model_args: the model's ``GPTModelArgs`` (for the unpadded vocabulary size).
        fmt: ``"bf16"``: every tensor in ``dtype``; ``"fp8"``: the quantised set as block-wise
            ``float8_e4m3fn``, each followed by its ``<name>_scale_inv`` (fp32), the rest in
            ``dtype``.
        dtype: dtype of the unquantised tensors (except the router, always fp32).
        reference_quantized: HF names to quantise for ``fmt="fp8"``, e.g. those with a
            ``weight_scale_inv`` in the rollout engine's checkpoint; default: the release's set
            (attention q/k/v/o projections and every expert w1/w2/w3).
        block_size: FP8 block shape (the release's ``weight_block_size``).

    Yields:
        ``(name, tensor)`` on the model's device. The router ``gate.weight`` and
        ``e_score_correction_bias`` are fp32. A tensor may share memory with a parameter when no
        gather, cast or slice was needed (e.g. norms at TP=1 in the model dtype): consume or copy
        it before the next optimizer step. MTP layers are skipped: the HF format has no MTP
        weights.

    Raises:
        ValueError: for an unknown ``fmt`` or a quantised name that is not a 2-D weight.
    """
    if fmt not in ("bf16", "fp8"):
        raise ValueError(f"fmt must be 'bf16' or 'fp8', got {fmt!r}")
    if isinstance(model_chunks, torch.nn.Module):
        chunks = [model_chunks]
    else:
        chunks = list(model_chunks)
    tp = config.tensor_model_parallel_size
    # The exporter slices the live model's padded rows back to the HF vocabulary.
    padded = padded_vocab_rows(chunks, tp, padded_vocab_size(model_args.vocab_size, tp))
    ctx = mapping_context(config, model_args, padded)

    def quantized(name: str) -> bool:
        if fmt != "fp8":
            return False
        if reference_quantized is not None:
            return name in reference_quantized
        return release_fp8_tensor(name)

    for chunk in chunks:
        for name, tensor in iter_hf_weights(
            chunk, ctx, MINIMAX_M2_WEIGHTS, skip_unmapped=lambda n: n.startswith("mtp.")
        ):
            mapping, _ = MINIMAX_M2_WEIGHTS.resolve_hf(name)
            if mapping.dtype is not None:
                yield name, tensor.to(mapping.dtype)
            elif quantized(name):
                if tensor.dim() != 2:
                    raise ValueError(f"{name}: shape {tuple(tensor.shape)} cannot be FP8-blocked")
                q, scale = quantize_blockwise(tensor, block_size)
                yield name, q
                yield name + SCALE_SUFFIX, scale
            else:
                yield name, tensor.to(dtype)
