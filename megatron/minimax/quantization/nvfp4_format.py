# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""NVFP4: 4-bit e2m1 values in groups of 16 with an e4m3 scale per group and one fp32 scale per
tensor, in the on-disk layout that vLLM's ``modelopt_fp4`` loader reads.

For a weight ``W`` of shape ``[rows, cols]`` (``cols`` a multiple of 16) quantised with a tensor
amax ``a`` (the calibrated ``max |W|`` of the weight quantizer)::

    weight_scale_2 = a / (6 * 448)                                   fp32 scalar
    weight_scale[i, g] = e4m3(clamp(max|W[i, 16g:16g+16]| / (6 * weight_scale_2), 2**-9, 448))
    W[i, j] ~= e2m1(W[i, j] / (weight_scale[i, j // 16] * weight_scale_2)) * that same product

6 is the largest e2m1 magnitude and 448 the largest e4m3fn value: a block whose amax equals the
tensor amax gets the largest block scale, 448. An all-zero block gets the scale 1.0, and the
clamp keeps every scale a finite, positive e4m3 value. ``weight`` packs two e2m1 codes per byte,
element ``2k`` in the low nibble and ``2k + 1`` in the high one; a code is a sign bit (bit 3, set
for negative inputs, also when they round to zero) and the index 0..7 of the magnitude in
:data:`E2M1_VALUES`. Rounding is to nearest, ties to the even index (2.5 -> 2, 5 -> 4).

The arithmetic (fp32 throughout, the per-tensor product ``6 * weight_scale_2`` formed first) is
that of nvidia-modelopt's ``NVFP4QTensor`` and HF exporter, so a weight and amax give the same
bytes here and there; the tests check this against modelopt itself. The same numbers define the
fake quantization of :mod:`nvfp4_cpu_backend`: ``dequantize_nvfp4(quantize_nvfp4(x, a))`` is the
fake-quantised ``x``.
"""

from dataclasses import dataclass
from typing import Union

import torch

__all__ = [
    "E2M1_MAX",
    "E2M1_VALUES",
    "E4M3_MAX",
    "NVFP4_GROUP_SIZE",
    "NVFP4Tensor",
    "dequantize_nvfp4",
    "nvfp4_fake_quantize_values",
    "quantize_nvfp4",
]

NVFP4_GROUP_SIZE = 16
"""Elements sharing one e4m3 scale (along the last dimension)."""
E2M1_MAX = 6.0
"""Largest e2m1 magnitude."""
E4M3_MAX = 448.0
"""Largest finite float8_e4m3fn value."""
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
"""e2m1 magnitudes by code index."""

_SMALLEST_E4M3_SUBNORMAL = 2.0**-9
# Midpoints between consecutive e2m1 magnitudes; a value on a midpoint rounds to the even index.
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


@dataclass
class NVFP4Tensor:
    """One NVFP4-quantised 2-D tensor in the on-disk format."""

    weight: torch.Tensor
    """uint8 ``[rows, cols / 2]``: two e2m1 codes per byte, element 2k in the low nibble."""
    weight_scale: torch.Tensor
    """float8_e4m3fn ``[rows, cols / 16]``: per-group scale."""
    weight_scale_2: torch.Tensor
    """fp32 scalar: tensor amax / (6 * 448)."""


def _check_groups(x: torch.Tensor, group_size: int) -> None:
    if x.dim() < 1 or x.shape[-1] % group_size:
        raise ValueError(
            f"NVFP4 needs the last dimension to be a multiple of {group_size}, got shape "
            f"{tuple(x.shape)}"
        )


def _tensor_scale(amax: Union[torch.Tensor, float], device: torch.device) -> torch.Tensor:
    """weight_scale_2 = amax / (6 * 448), an fp32 scalar."""
    amax = torch.as_tensor(amax, device=device).float().reshape(())
    return amax / (E2M1_MAX * E4M3_MAX)


def _group_scales(x: torch.Tensor, tensor_scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-group e4m3 scales ``[..., groups]`` of fp32 ``x``."""
    group_amax = x.abs().unflatten(-1, (-1, group_size)).amax(dim=-1)
    scale = group_amax / (E2M1_MAX * tensor_scale)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale.clamp(_SMALLEST_E4M3_SUBNORMAL, E4M3_MAX).to(torch.float8_e4m3fn)


def _e2m1_codes(scaled: torch.Tensor) -> torch.Tensor:
    """uint8 e2m1 codes (sign in bit 3) of values already divided by their scales."""
    magnitude = scaled.abs()
    midpoints = torch.tensor(_E2M1_MIDPOINTS, dtype=magnitude.dtype, device=magnitude.device)
    # Number of midpoints strictly below the magnitude = nearest index, ties rounded down ...
    index = torch.bucketize(magnitude, midpoints, right=False)
    # ... then up when that leaves an odd index on a tie (round half to even).
    on_midpoint = magnitude == midpoints[index.clamp(max=len(_E2M1_MIDPOINTS) - 1)]
    index = index + (on_midpoint & (index % 2 == 1)).to(index.dtype)
    sign = (scaled < 0).to(torch.uint8) << 3
    return index.to(torch.uint8) | sign


def _e2m1_values(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=dtype)
    return table.to(codes.device)[codes.long()]


def quantize_nvfp4(
    x: torch.Tensor, amax: Union[torch.Tensor, float], group_size: int = NVFP4_GROUP_SIZE
) -> NVFP4Tensor:
    """Quantises ``x`` (any float dtype, last dimension a multiple of ``group_size``).

    Args:
        x: the tensor, e.g. a weight ``[out, in]``.
        amax: the tensor amax that sets ``weight_scale_2`` (a weight quantizer's calibrated amax;
            values above it saturate at the largest code).
        group_size: elements per e4m3 scale.

    Raises:
        ValueError: if the last dimension is not a multiple of ``group_size``.
    """
    _check_groups(x, group_size)
    values = x.float()
    tensor_scale = _tensor_scale(amax, values.device)
    group_scale = _group_scales(values, tensor_scale, group_size)
    divisor = (group_scale.float() * tensor_scale).unsqueeze(-1)
    codes = _e2m1_codes(values.unflatten(-1, (-1, group_size)) / divisor).flatten(-2)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return NVFP4Tensor(weight=packed, weight_scale=group_scale, weight_scale_2=tensor_scale)


def dequantize_nvfp4(
    quantized: NVFP4Tensor, dtype: torch.dtype = torch.float32, group_size: int = NVFP4_GROUP_SIZE
) -> torch.Tensor:
    """The values an NVFP4 tensor stands for (computed in fp32, returned in ``dtype``)."""
    packed = quantized.weight
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)
    values = _e2m1_values(codes).unflatten(-1, (-1, group_size))
    scale = quantized.weight_scale.float() * quantized.weight_scale_2.float()
    return (values * scale.unsqueeze(-1)).flatten(-2).to(dtype)


def nvfp4_fake_quantize_values(
    x: torch.Tensor, amax: Union[torch.Tensor, float], group_size: int = NVFP4_GROUP_SIZE
) -> torch.Tensor:
    """``dequantize_nvfp4(quantize_nvfp4(x, amax))`` without packing, in ``x``'s dtype."""
    _check_groups(x, group_size)
    values = x.float()
    tensor_scale = _tensor_scale(amax, values.device)
    scale = (_group_scales(values, tensor_scale, group_size).float() * tensor_scale).unsqueeze(-1)
    codes = _e2m1_codes(values.unflatten(-1, (-1, group_size)) / scale)
    return (_e2m1_values(codes) * scale).flatten(-2).to(x.dtype)
