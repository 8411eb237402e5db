# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Per-tensor FP8 (e4m3fn) weights, as modelopt's FP8 recipe exports them for vLLM::

    weight_scale = amax / 448                      fp32 scalar
    weight = e4m3(clamp(W / weight_scale, -448, 448))

The scale is ``amax / 448`` rounded once to fp32 from the float64 quotient, and ``W /
weight_scale`` is computed in fp32, as modelopt's HF exporter does for an fp32 model; the clamp
only matters for weights that outgrew a calibrated amax (QAT), which then saturate as they did in
the fake-quantised forward.
"""

from typing import Tuple, Union

import torch

from megatron.minimax.quantization.nvfp4_format import E4M3_MAX

__all__ = ["fp8_scale", "quantize_fp8_per_tensor"]


def fp8_scale(amax: Union[torch.Tensor, float]) -> torch.Tensor:
    """``amax / 448`` as an fp32 scalar."""
    return (torch.as_tensor(amax).detach().double().reshape(()) / E4M3_MAX).float()


def quantize_fp8_per_tensor(
    x: torch.Tensor, amax: Union[torch.Tensor, float]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(float8_e4m3fn values, fp32 scalar scale)`` of ``x`` for the tensor amax ``amax``."""
    scale = fp8_scale(amax).to(x.device)
    values = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX)
    return values.to(torch.float8_e4m3fn), scale
