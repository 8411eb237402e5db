# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The NVFP4 packer against nvidia-modelopt's reference ``NVFP4QTensor`` math, byte for byte."""

import pytest
import torch

from megatron.minimax.quantization.nvfp4_format import (
    E2M1_VALUES,
    NVFP4Tensor,
    dequantize_nvfp4,
    nvfp4_fake_quantize_values,
    quantize_nvfp4,
)


def _weights(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Rows of very different magnitudes, an all-zero group, a tiny negative value, huge outliers.
    x = torch.randn(64, 96, generator=g) * torch.logspace(-3, 1, 64).unsqueeze(1)
    x[5, :16] = 0
    x[6, 3] = -1e-12
    x[7, 40] = 300.0
    return x.to(dtype)


def _modelopt(x, amax):
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    packed, scale, scale_2 = NVFP4QTensor.quantize(x, 16, weights_scaling_factor_2=amax / 2688.0)
    values = packed.dequantize(
        dtype=torch.float32, scale=scale, double_scale=scale_2, block_sizes={-1: 16}
    )
    return packed._quantized_data, scale, scale_2, values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("amax_factor", [1.0, 0.25, 4.0])
def test_packing_matches_modelopt_byte_for_byte(dtype, amax_factor):
    x = _weights(dtype)
    amax = x.abs().max().float() * amax_factor  # below the max: saturation; above: spare range
    ours = quantize_nvfp4(x, amax)
    packed, scale, scale_2, values = _modelopt(x, amax)
    assert ours.weight.dtype == torch.uint8 and ours.weight.shape == (64, 48)
    assert ours.weight_scale.dtype == torch.float8_e4m3fn and ours.weight_scale.shape == (64, 6)
    assert ours.weight_scale_2.dtype == torch.float32 and ours.weight_scale_2.shape == ()
    assert torch.equal(ours.weight, packed)
    assert torch.equal(ours.weight_scale.view(torch.uint8), scale.view(torch.uint8))
    assert torch.equal(ours.weight_scale_2, scale_2.float())
    assert torch.equal(dequantize_nvfp4(ours), values)
    assert torch.equal(nvfp4_fake_quantize_values(x, amax), values.to(dtype))


def test_ties_round_to_the_even_code_and_negatives_keep_the_sign_bit():
    # amax 2688 makes weight_scale_2 exactly 1; a group whose amax is 6 then has scale 1, so the
    # values below are divided by exactly 1 and land on the midpoints between e2m1 magnitudes.
    midpoints = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    group = torch.tensor(midpoints + [6.0, -0.25, -5.0, -0.1, 0.0, 1.0, 2.0, 3.0, 4.0])
    q = quantize_nvfp4(group.unsqueeze(0), 2688.0)
    assert q.weight_scale.float().item() == 1.0 and q.weight_scale_2.item() == 1.0
    codes = torch.stack([q.weight & 15, q.weight >> 4], dim=-1).flatten().tolist()
    # ties to even index: 0.25->0, 0.75->1.0 (2), 1.25->1.0 (2), 1.75->2.0 (4), 2.5->2.0 (4),
    # 3.5->4.0 (6), 5.0->4.0 (6); negatives set bit 3, also when rounding to zero.
    assert codes == [0, 2, 2, 4, 4, 6, 6, 7, 8, 14, 8, 0, 2, 4, 5, 6]
    assert torch.equal(_modelopt(group.unsqueeze(0), torch.tensor(2688.0))[0], q.weight)
    assert dequantize_nvfp4(q).tolist()[0][:8] == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0]


def test_dequantization_uses_the_e2m1_grid():
    q = NVFP4Tensor(
        weight=torch.tensor([[0x10 * i + (8 + i) for i in range(8)]], dtype=torch.uint8),
        weight_scale=torch.tensor([[2.0]]).to(torch.float8_e4m3fn),
        weight_scale_2=torch.tensor(0.5),
    )
    values = dequantize_nvfp4(q).flatten().tolist()
    assert values[0::2] == [-v for v in E2M1_VALUES]
    assert values[1::2] == list(E2M1_VALUES)


def test_last_dimension_must_be_whole_groups():
    with pytest.raises(ValueError, match="multiple of 16"):
        quantize_nvfp4(torch.ones(4, 24), 1.0)
