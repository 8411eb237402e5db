# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Per-tensor FP8 weights as modelopt's HF exporter computes them."""

import torch

from megatron.minimax.quantization.fp8_per_tensor import fp8_scale, quantize_fp8_per_tensor


def test_scale_and_values_follow_modelopt():
    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(0))
    amax = w.abs().max()
    values, scale = quantize_fp8_per_tensor(w, amax)
    # modelopt: torch.tensor(amax.item() / 448) (a float64 quotient) and (w / scale).to(fp8).
    expected_scale = torch.tensor(amax.item() / 448.0)
    assert scale.dtype == torch.float32 and scale.shape == ()
    assert torch.equal(scale, expected_scale)
    assert values.dtype == torch.float8_e4m3fn
    assert torch.equal(
        values.view(torch.uint8), (w / expected_scale).to(torch.float8_e4m3fn).view(torch.uint8)
    )
    assert (values.float() * scale - w).abs().max() <= amax / 16  # e4m3: 3 mantissa bits


def test_values_beyond_the_amax_saturate():
    values, scale = quantize_fp8_per_tensor(torch.tensor([1.0, -10.0, 10.0]), 2.0)
    assert values.float().tolist() == [224.0, -448.0, 448.0]
    assert fp8_scale(2.0).item() == torch.tensor(2.0 / 448.0, dtype=torch.float32).item()
