# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The CPU NVFP4 fake quantizer: modelopt's reference math, straight-through gradients, and use
through modelopt's backend hook on CPU (where modelopt's own NVFP4 kernels assert)."""

import pytest
import torch

from megatron.minimax.quantization.nvfp4_cpu_backend import (
    NVFP4_CPU_BACKEND,
    nvfp4_fake_quantize,
    register_nvfp4_cpu_backend,
)


def _reference(x, amax):
    """modelopt's NVFP4QTensor quantise then dequantise, in fp32."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    packed, scale, scale_2 = NVFP4QTensor.quantize(x, 16, weights_scaling_factor_2=amax / 2688.0)
    return packed.dequantize(
        dtype=torch.float32, scale=scale, double_scale=scale_2, block_sizes={-1: 16}
    )


@pytest.mark.parametrize("shape", [(8, 64), (2, 3, 32)])
def test_forward_is_modelopts_reference_quantize_dequantize(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3
    for amax in (x.abs().max(), x.abs().max() / 2):
        expected = _reference(x.reshape(-1, shape[-1]), amax).reshape(shape)
        assert torch.equal(nvfp4_fake_quantize(x, amax), expected)
    # Without an amax the tensor's own is used (an uncalibrated quantizer).
    assert torch.equal(
        nvfp4_fake_quantize(x), _reference(x.reshape(-1, shape[-1]), x.abs().max()).reshape(shape)
    )


def test_backward_is_straight_through_or_clipped_at_amax():
    x = torch.tensor([[0.5, -3.0, 7.0, -9.0] * 4], requires_grad=True)
    amax = torch.tensor(4.0)
    nvfp4_fake_quantize(x, amax).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    x.grad = None
    nvfp4_fake_quantize(x, amax, pass_through_backward=False).sum().backward()
    assert x.grad.flatten().tolist()[:4] == [1.0, 1.0, 0.0, 0.0]


def test_modelopt_quantizer_runs_nvfp4_on_cpu_through_the_backend():
    from modelopt.torch.quantization.nn import TensorQuantizer
    from modelopt.torch.quantization.config import QuantizerAttributeConfig

    nvfp4 = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    stock = TensorQuantizer(QuantizerAttributeConfig(**nvfp4))
    stock.amax = x.abs().max()
    with pytest.raises(AssertionError, match="CUDA"):
        stock(x)  # modelopt 0.47 fake-quantises NVFP4 with CUDA kernels only
    assert register_nvfp4_cpu_backend() == NVFP4_CPU_BACKEND
    quantizer = TensorQuantizer(QuantizerAttributeConfig(**nvfp4, backend=NVFP4_CPU_BACKEND))
    quantizer.amax = x.abs().max() / 2
    assert torch.equal(quantizer(x), _reference(x, x.abs().max() / 2))
