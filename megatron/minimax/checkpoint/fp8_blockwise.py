# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Block-wise FP8 weights as stored by DeepSeek-V3 and MiniMax-M2 ("fine-grained FP8").

A 2-D weight ``W`` of shape ``[rows, cols]`` is stored as ``float8_e4m3fn`` values ``q`` plus an
fp32 tensor ``weight_scale_inv`` of shape ``[ceil(rows / 128), ceil(cols / 128)]`` holding one
scale per 128x128 block (the last block row/column may be partial)::

    W[i, j] = float(q[i, j]) * scale_inv[i // 128, j // 128]

Despite its name, ``weight_scale_inv`` is the multiplier that *dequantises*: the quantiser stores
``s = amax(|block|) / 448`` and ``q = x / s``, 448 being the largest finite e4m3fn value.

Round trip. For every block produced by :func:`quantize_blockwise`,
``quantize_blockwise(dequantize_blockwise(q, s))`` gives back ``q`` bit for bit and ``s`` exactly.
This holds because:

* the block's largest element quantises to exactly +-448 (``x / fl(x / 448)`` is within one fp32 ulp
  of 448, and the e4m3fn grid spacing there is 32), so the dequantised block's amax is
  ``fl(448 * s)`` and the re-derived scale is ``fl(fl(448 * s) / 448)``;
* ``fl(fl(448 * s) / 448) == s`` for every ``s`` of the form ``fl(a / 448)`` (checked exhaustively
  over one fp32 binade of ``a``; the map is scale invariant in the normal range). It does *not* hold
  for arbitrary fp32 scales: about 11% of fp32 values fail it, so a checkpoint whose scales were
  not computed as ``fp32(amax) / 448`` cannot in general be re-quantised to identical scales;
* every other element satisfies ``|fl(q * s) / s - q| <= 1 ulp(q)`` in fp32, far below the e4m3fn
  spacing, so the cast back to e4m3fn returns ``q``.

Two edge cases are chosen so that the round trip stays exact:

* an all-zero block gets ``s = 1.0`` (an identity scale: any consumer multiplying by it is a no-op,
  and it avoids dividing by zero);
* a non-zero block whose ``amax / 448`` would be an fp32 subnormal (or underflow to 0) gets
  ``s = 2**-126``, the smallest normal fp32. A power of two keeps ``q * s`` and its inverse exact,
  and ``x / s`` can no longer overflow to infinity.
"""

import math
from typing import Tuple

import torch

__all__ = [
    "FP8_E4M3_MAX",
    "dequantize_blockwise",
    "dequantized_is_finite",
    "quantize_blockwise",
    "scale_inv_shape",
]

FP8_E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)
"""Largest finite ``float8_e4m3fn`` value (448.0)."""

# Smallest normal fp32: the floor for non-zero block scales (see the module docstring).
_MIN_SCALE = float(torch.finfo(torch.float32).tiny)


def scale_inv_shape(
    shape: Tuple[int, int], block_size: Tuple[int, int] = (128, 128)
) -> Tuple[int, int]:
    """Returns the ``weight_scale_inv`` shape for a 2-D weight: ``ceil`` of each dim by the block.

    Args:
        shape: ``(rows, cols)`` of the weight.
        block_size: ``(block_rows, block_cols)``.

    Returns:
        ``(ceil(rows / block_rows), ceil(cols / block_cols))``.
    """
    _check_block_size(block_size)
    return (math.ceil(shape[0] / block_size[0]), math.ceil(shape[1] / block_size[1]))


def dequantize_blockwise(
    weight_fp8: torch.Tensor,
    scale_inv: torch.Tensor,
    block_size: Tuple[int, int] = (128, 128),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantises a block-wise FP8 weight to fp32 (or to ``dtype``, rounding the fp32 value once).

    Every element is the fp32 product ``float(weight_fp8[i, j]) * scale_inv[i // br, j // bc]``,
    bit for bit what the formula gives (one rounding, no fused or reassociated arithmetic), then
    cast to ``dtype``. NaN (an FP8 NaN code, or a NaN scale) gives NaN, its payload unspecified.

    A block has 256 possible FP8 values, so the products are computed once per block into a
    table (``table[i, j, b] = fp32(value(b) * scale_inv[i, j])``, the same multiplication) and
    each element is looked up by its byte. That is several times faster than converting every
    element from FP8 (a scalar path on CPU) and then scaling and casting it.

    Args:
        weight_fp8: ``[rows, cols]`` tensor of dtype ``torch.float8_e4m3fn``.
        scale_inv: ``[ceil(rows / br), ceil(cols / bc)]`` floating tensor (fp32 in checkpoints).
        block_size: ``(br, bc)``, the block shape.
        dtype: result dtype (default fp32: the exact products).

    Returns:
        A new contiguous ``dtype`` tensor of shape ``[rows, cols]`` on ``weight_fp8``'s device.

    Raises:
        ValueError: if the dtypes, ranks or the scale shape do not match the format.
    """
    _check_block_size(block_size)
    if weight_fp8.dtype != torch.float8_e4m3fn:
        raise ValueError(
            f"dequantize_blockwise expects a torch.float8_e4m3fn weight, got {weight_fp8.dtype}"
        )
    if weight_fp8.dim() != 2:
        raise ValueError(
            f"dequantize_blockwise expects a 2-D weight, got shape {tuple(weight_fp8.shape)}"
        )
    if not scale_inv.is_floating_point() or scale_inv.dtype == torch.float8_e4m3fn:
        raise ValueError(f"scale_inv must be a float32/bf16/fp16 tensor, got {scale_inv.dtype}")
    rows, cols = weight_fp8.shape
    expected = scale_inv_shape((rows, cols), block_size)
    if tuple(scale_inv.shape) != expected:
        raise ValueError(
            f"scale_inv has shape {tuple(scale_inv.shape)} but a weight of shape {(rows, cols)} "
            f"with block size {tuple(block_size)} needs {expected} (ceil(rows/{block_size[0]}), "
            f"ceil(cols/{block_size[1]}))"
        )

    br, bc = block_size
    n_br, n_bc = expected
    device = weight_fp8.device
    values = _fp8_values(device)
    # table[i, j * 256 + b]: byte b of block (i, j), dequantised and cast.
    table = (values[None, None, :] * scale_inv.to(device, torch.float32)[:, :, None]).to(dtype)
    table = table.reshape(n_br, n_bc * 256)
    # Element (r, c) reads entry (c // bc) * 256 + byte of its block row's table.
    column_base = torch.arange(cols, device=device, dtype=torch.int32)
    column_base = column_base.div_(bc, rounding_mode="floor").mul_(256)
    raw = weight_fp8.view(torch.uint8)
    out = torch.empty((rows, cols), dtype=dtype, device=device)
    # One index buffer for every block row (filled in place: no allocation per block row).
    index_buffer = torch.empty((min(br, rows), cols), dtype=torch.int32, device=device)
    for i in range(n_br):
        rows_i = slice(i * br, min((i + 1) * br, rows))
        index = index_buffer[: rows_i.stop - rows_i.start]
        index.copy_(raw[rows_i]).add_(column_base)
        torch.index_select(table[i], 0, index.view(-1), out=out[rows_i].view(-1))
    return out


def dequantized_is_finite(
    weight_fp8: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32
) -> bool:
    """Whether :func:`dequantize_blockwise` of these bytes and scales is certainly free of
    NaN/Inf, decided from the bytes and scales alone (two reductions over the bytes, no
    dequantisation).

    Every dequantised value is ``fp32(value(b) * s)`` cast to ``dtype``; it is finite unless the
    byte is a NaN code (``0x7f``, ``0xff``; e4m3fn has no infinities) or ``448 * |s|`` leaves
    ``dtype``'s range (or ``s`` is NaN/Inf). The range test keeps a margin of ``2**-7`` for the
    roundings, so False means "may contain NaN/Inf": count them on the dequantised tensor.

    Args:
        weight_fp8: ``float8_e4m3fn`` (or ``uint8``) weight bytes.
        scale_inv: the block scales.
        dtype: the dequantised dtype.
    """
    raw = weight_fp8.view(torch.uint8)
    if raw.numel() and (int(raw.amax()) == 0xFF or int(raw.view(torch.int8).amax()) == 0x7F):
        return False
    if scale_inv.numel() == 0:
        return True
    limit = torch.finfo(dtype).max * (1 - 2**-7)
    largest = float(scale_inv.detach().to(torch.float64).abs().amax()) * FP8_E4M3_MAX
    return largest <= limit  # False for a NaN scale too


_FP8_VALUES = {}


def _fp8_values(device: torch.device) -> torch.Tensor:
    """The 256 ``float8_e4m3fn`` values (NaN for 0x7f and 0xff) as fp32, indexed by byte."""
    values = _FP8_VALUES.get(device)
    if values is None:
        codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
        values = codes.view(torch.float8_e4m3fn).to(torch.float32).to(device)
        _FP8_VALUES[device] = values
    return values


def quantize_blockwise(
    weight: torch.Tensor, block_size: Tuple[int, int] = (128, 128)
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantises a 2-D weight to block-wise FP8 (e4m3fn values + fp32 ``scale_inv``).

    Per block: ``s = amax(|x|) / 448`` in fp32 (``1.0`` for an all-zero block, at least ``2**-126``
    otherwise), ``q = e4m3fn(clamp(x / s, -448, 448))`` with ``x`` converted to fp32 first.
    The clamp only absorbs the ulp by which ``x / s`` can exceed 448 for the block maximum; it makes
    the result independent of how a backend casts out-of-range values.

    Args:
        weight: ``[rows, cols]`` floating tensor (any float dtype; not modified).
        block_size: ``(br, bc)``, the block shape.

    Returns:
        ``(q, scale_inv)``: ``q`` is ``[rows, cols]`` ``float8_e4m3fn``, ``scale_inv`` is the fp32
        ``[ceil(rows / br), ceil(cols / bc)]`` per-block multiplier used by
        :func:`dequantize_blockwise`.

    Raises:
        ValueError: if the weight is not 2-D floating point or contains NaN/Inf.
    """
    _check_block_size(block_size)
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"quantize_blockwise expects a 2-D floating weight, got shape {tuple(weight.shape)} "
            f"dtype {weight.dtype}"
        )
    rows, cols = weight.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"quantize_blockwise: weight of shape {(rows, cols)} is empty")
    br, bc = block_size
    n_br, n_bc = scale_inv_shape((rows, cols), block_size)

    # One fp32 working buffer serves both the dtype conversion and the zero padding to whole blocks
    # (zeros leave every block's amax unchanged); it is then scaled in place.
    work = torch.zeros(n_br * br, n_bc * bc, dtype=torch.float32, device=weight.device)
    work[:rows, :cols].copy_(weight)
    blocks = work.view(n_br, br, n_bc, bc)

    amax = blocks.abs().amax(dim=(1, 3))  # [n_br, n_bc]
    if not torch.isfinite(amax).all():
        bad = (~torch.isfinite(amax)).nonzero()[0].tolist()
        raise ValueError(
            f"quantize_blockwise: weight of shape {(rows, cols)} has NaN/Inf in block {tuple(bad)}"
        )
    scale = amax / FP8_E4M3_MAX
    scale = torch.where(amax == 0, torch.ones_like(scale), scale.clamp_min(_MIN_SCALE))

    blocks.div_(scale[:, None, :, None]).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    q = work[:rows, :cols].to(torch.float8_e4m3fn).contiguous()
    return q, scale


def _check_block_size(block_size: Tuple[int, int]) -> None:
    if len(block_size) != 2 or any(int(b) != b or b <= 0 for b in block_size):
        raise ValueError(f"block_size must be two positive ints, got {block_size!r}")
