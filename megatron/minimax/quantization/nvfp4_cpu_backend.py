# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""A pure-PyTorch NVFP4 fake quantizer for modelopt, so that calibration, fake-quant forwards and
QAT run without a GPU.

modelopt 0.47 fake-quantises NVFP4 with a Triton kernel or a CUDA extension only (on CPU its
``dynamic_block_quant`` asserts "amax must be a CUDA tensor"). It lets a quantizer use another
implementation through ``register_quant_backend(name, fn)`` and ``"backend": name`` in the
quantizer's config; :mod:`recipes` sets that name when the model is not on CUDA, and on CUDA
modelopt's own kernels run.

The forward is :func:`~megatron.minimax.quantization.nvfp4_format.nvfp4_fake_quantize_values`:
modelopt's reference ``NVFP4QTensor`` quantise/dequantise, hence exactly the values the exported
checkpoint dequantises to. (modelopt's GPU kernel agrees with it except on groups whose scale is
below 1e-5, which it zeroes.) The tensor amax is the quantizer's calibrated amax, or the input's
own when it has none yet. The backward is the straight-through estimator of modelopt's dynamic
block quantizer: the gradient passes unchanged, or, for a quantizer configured with
``pass_through_bwd=False``, only where ``|x| <= amax``.
"""

from typing import Optional

import torch

from megatron.minimax.quantization.nvfp4_format import NVFP4_GROUP_SIZE, nvfp4_fake_quantize_values

__all__ = ["NVFP4_CPU_BACKEND", "nvfp4_fake_quantize", "register_nvfp4_cpu_backend"]

NVFP4_CPU_BACKEND = "megatron_minimax_nvfp4_cpu"
"""The name this backend is registered under in modelopt."""


class _NVFP4FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, amax, group_size, clip_gradient):
        ctx.clip_gradient = clip_gradient
        if clip_gradient:
            ctx.save_for_backward(x, amax)
        return nvfp4_fake_quantize_values(x, amax, group_size)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.clip_gradient:
            return grad_output, None, None, None
        x, amax = ctx.saved_tensors
        inside = x.abs() <= amax.to(x.dtype)
        return grad_output * inside.to(grad_output.dtype), None, None, None


def nvfp4_fake_quantize(
    x: torch.Tensor,
    amax: Optional[torch.Tensor] = None,
    group_size: int = NVFP4_GROUP_SIZE,
    pass_through_backward: bool = True,
) -> torch.Tensor:
    """NVFP4 quantise-dequantise of ``x`` along its last dimension, differentiable (STE).

    Args:
        x: any float tensor whose last dimension is a multiple of ``group_size``.
        amax: tensor amax (sets the fp32 per-tensor scale); default ``max |x|``.
        group_size: elements per e4m3 scale.
        pass_through_backward: gradient passes unchanged; else it is zero where ``|x| > amax``.
    """
    if amax is None:
        amax = x.detach().abs().amax().float()
    amax = amax.detach().float().reshape(())
    return _NVFP4FakeQuantize.apply(x, amax, group_size, not pass_through_backward)


def _modelopt_entrypoint(inputs: torch.Tensor, quantizer) -> torch.Tensor:
    """``QuantBackendEntrypoint``: fake-quantise ``inputs`` with ``quantizer``'s settings."""
    block_sizes = quantizer.block_sizes or {}
    group_size = block_sizes.get(-1) or block_sizes.get(inputs.dim() - 1) or NVFP4_GROUP_SIZE
    amax = quantizer.amax
    return nvfp4_fake_quantize(
        inputs,
        amax,
        group_size=group_size,
        pass_through_backward=getattr(quantizer, "_pass_through_bwd", True),
    )


def register_nvfp4_cpu_backend() -> str:
    """Registers the backend with modelopt (idempotent) and returns its name."""
    from modelopt.torch.quantization.nn.modules.tensor_quantizer import (
        is_registered_quant_backend,
        register_quant_backend,
    )

    if not is_registered_quant_backend(NVFP4_CPU_BACKEND):
        register_quant_backend(NVFP4_CPU_BACKEND, _modelopt_entrypoint)
    return NVFP4_CPU_BACKEND
