# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Tests for megatron/minimax/checkpoint/fp8_blockwise.py."""

import pytest
import torch

from megatron.minimax.checkpoint.fp8_blockwise import (
    FP8_E4M3_MAX,
    dequantize_blockwise,
    dequantized_is_finite,
    quantize_blockwise,
    scale_inv_shape,
)

_TINY = torch.finfo(torch.float32).tiny  # 2**-126


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int32)


def _reference_dequant(q: torch.Tensor, s: torch.Tensor, block=(128, 128)) -> torch.Tensor:
    rows, cols = q.shape
    full = s.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return q.float() * full


def _multiscale_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Random weight whose 128x128 blocks span magnitudes from 1e-30 to 1e30."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    n_br, n_bc = scale_inv_shape((rows, cols))
    exponents = torch.randint(-30, 31, (n_br, n_bc), generator=gen).float()
    factors = (10.0**exponents).repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
    return w * factors


class TestScaleInvShape:
    def test_scale_inv_shape_uses_ceil(self):
        assert scale_inv_shape((300, 200)) == (3, 2)
        assert scale_inv_shape((6144, 3072)) == (48, 24)
        assert scale_inv_shape((128, 129)) == (1, 2)
        assert scale_inv_shape((10, 10), (4, 8)) == (3, 2)

    def test_scale_inv_shape_rejects_bad_block(self):
        with pytest.raises(ValueError, match="block_size"):
            scale_inv_shape((10, 10), (0, 128))


class TestDequantizeBlockwise:
    @pytest.mark.parametrize("shape", [(300, 200), (256, 384), (64, 48), (1, 1), (129, 257)])
    def test_dequant_equals_fp8_times_scale_bit_for_bit(self, shape):
        gen = torch.Generator().manual_seed(1)
        q = (torch.randn(shape, generator=gen) * 100).to(torch.float8_e4m3fn)
        # Arbitrary fp32 scales, not only ones the quantiser would produce.
        s = torch.rand(scale_inv_shape(shape), generator=gen) * 3 + 1e-3
        out = dequantize_blockwise(q, s)
        assert out.dtype == torch.float32 and out.shape == shape and out.is_contiguous()
        assert torch.equal(_bits(out), _bits(_reference_dequant(q, s)))

    def test_dequant_partial_block_uses_its_own_scale(self):
        q = torch.ones(300, 200).to(torch.float8_e4m3fn)
        s = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
        out = dequantize_blockwise(q, s)
        assert out[0, 0] == 1.0 and out[0, 127] == 1.0 and out[0, 128] == 2.0 and out[0, 199] == 2.0
        assert out[255, 199] == 4.0 and out[256, 0] == 5.0 and out[299, 199] == 6.0

    def test_dequant_custom_block_size(self):
        q = torch.full((10, 10), 2.0).to(torch.float8_e4m3fn)
        s = torch.arange(6, dtype=torch.float32).reshape(3, 2)
        out = dequantize_blockwise(q, s, block_size=(4, 8))
        assert torch.equal(out, _reference_dequant(q, s, (4, 8)))
        assert out[9, 9] == 10.0

    def test_dequant_wrong_scale_shape_message(self):
        q = torch.zeros(300, 200, dtype=torch.float8_e4m3fn)
        with pytest.raises(ValueError) as err:
            dequantize_blockwise(q, torch.ones(2, 2))
        assert str(err.value) == (
            "scale_inv has shape (2, 2) but a weight of shape (300, 200) with block size "
            "(128, 128) needs (3, 2) (ceil(rows/128), ceil(cols/128))"
        )

    def test_dequant_rejects_non_fp8_weight(self):
        with pytest.raises(ValueError, match="float8_e4m3fn weight, got torch.bfloat16"):
            dequantize_blockwise(torch.zeros(4, 4, dtype=torch.bfloat16), torch.ones(1, 1))

    def test_dequant_rejects_non_2d_weight(self):
        with pytest.raises(ValueError, match=r"2-D weight, got shape \(4,\)"):
            dequantize_blockwise(torch.zeros(4, dtype=torch.float8_e4m3fn), torch.ones(1, 1))


class TestDequantizedIsFinite:
    """Decided from bytes and scales; must agree with counting NaN/Inf in the dequantised tensor
    whenever it says True."""

    @staticmethod
    def _case(seed=0):
        gen = torch.Generator().manual_seed(seed)
        raw = torch.randint(0, 256, (300, 260), generator=gen, dtype=torch.uint8)
        raw[(raw & 0x7F) == 0x7F] ^= 1  # no NaN codes
        scale = torch.rand(scale_inv_shape((300, 260)), generator=gen) * 1e-3
        return raw, scale

    @staticmethod
    def _nonfinite(raw, scale, dtype):
        value = dequantize_blockwise(raw.view(torch.float8_e4m3fn), scale, dtype=dtype)
        return int((~torch.isfinite(value.float())).sum())

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
    def test_clean_tensor_is_finite(self, dtype):
        raw, scale = self._case()
        assert dequantized_is_finite(raw.view(torch.float8_e4m3fn), scale, dtype)
        assert self._nonfinite(raw, scale, dtype) == 0

    @pytest.mark.parametrize("code", [0x7F, 0xFF])
    def test_nan_code_anywhere_is_caught(self, code):
        raw, scale = self._case()
        raw[299, 259] = code  # last element, in a partial block
        assert not dequantized_is_finite(raw.view(torch.float8_e4m3fn), scale, torch.bfloat16)
        assert self._nonfinite(raw, scale, torch.bfloat16) == 1

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_nonfinite_scale_is_caught(self, bad):
        raw, scale = self._case()
        scale[2, 2] = bad
        assert not dequantized_is_finite(raw.view(torch.float8_e4m3fn), scale, torch.bfloat16)

    def test_overflowing_scale_is_caught(self):
        raw, scale = self._case()
        raw[0, 0] = 0x7E  # 448
        # 448 * 1e36 overflows fp32 (and bf16): the dequantised value is inf.
        scale[0, 0] = 1e36
        assert not dequantized_is_finite(raw.view(torch.float8_e4m3fn), scale, torch.float32)
        assert self._nonfinite(raw, scale, torch.float32) >= 1
        # 448 * 7e35 is finite in fp32 but within the rounding margin: "may be non-finite".
        scale[0, 0] = 7.58e35
        assert not dequantized_is_finite(raw.view(torch.float8_e4m3fn), scale, torch.float32)
        # Well inside the range: finite.
        scale[0, 0] = 1e30
        assert dequantized_is_finite(raw.view(torch.float8_e4m3fn), scale, torch.float32)
        assert self._nonfinite(raw, scale, torch.float32) == 0


class TestQuantizeBlockwise:
    def test_quantize_shapes_and_dtypes(self):
        q, s = quantize_blockwise(torch.randn(300, 200))
        assert q.dtype == torch.float8_e4m3fn and q.shape == (300, 200) and q.is_contiguous()
        assert s.dtype == torch.float32 and s.shape == (3, 2)

    def test_quantize_scale_is_amax_over_448(self):
        w = _multiscale_weight(300, 200)
        q, s = quantize_blockwise(w)
        for bi, bj in [(0, 0), (0, 1), (2, 0), (2, 1)]:
            block = w[bi * 128 : (bi + 1) * 128, bj * 128 : (bj + 1) * 128]
            assert s[bi, bj].item() == (block.abs().max() / 448.0).item()
            # The block maximum lands exactly on the largest e4m3fn magnitude.
            qb = q[bi * 128 : (bi + 1) * 128, bj * 128 : (bj + 1) * 128].float()
            assert qb.abs().max().item() == FP8_E4M3_MAX

    def test_quantize_error_is_within_e4m3_resolution(self):
        w = _multiscale_weight(300, 200)
        q, s = quantize_blockwise(w)
        deq = dequantize_blockwise(q, s)
        full_s = s.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
        # 3 mantissa bits: half-ulp relative error 2**-4 for normals, absolute s * 2**-10 below.
        bound = torch.maximum(w.abs() * 2.0**-4, full_s * 2.0**-10)
        assert ((deq - w).abs() <= bound).all()

    def test_quantize_all_zero_block_gets_unit_scale(self):
        w = torch.randn(300, 200)
        w[128:256, :128] = 0.0
        q, s = quantize_blockwise(w)
        assert s[1, 0].item() == 1.0
        assert (q[128:256, :128].float() == 0).all()
        assert s[0, 0].item() != 1.0

    def test_quantize_tiny_block_gets_min_normal_scale(self):
        w = torch.randn(64, 64) * 1e-40  # amax / 448 would be subnormal in fp32
        q, s = quantize_blockwise(w)
        assert s.item() == _TINY
        assert torch.equal(dequantize_blockwise(q, s), q.float() * _TINY)

    def test_quantize_does_not_modify_input(self):
        w = torch.randn(256, 256)
        before = w.clone()
        quantize_blockwise(w)
        assert torch.equal(w, before)

    def test_quantize_accepts_bf16_input(self):
        w = torch.randn(130, 70).to(torch.bfloat16)
        q, s = quantize_blockwise(w)
        q32, s32 = quantize_blockwise(w.float())
        assert torch.equal(_bits(q), _bits(q32)) and torch.equal(s, s32)

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_quantize_rejects_nonfinite(self, bad):
        w = torch.randn(300, 200)
        w[200, 150] = bad
        with pytest.raises(ValueError, match=r"NaN/Inf in block \(1, 1\)"):
            quantize_blockwise(w)

    def test_quantize_rejects_non_2d(self):
        with pytest.raises(ValueError, match="2-D floating weight"):
            quantize_blockwise(torch.randn(4, 4, 4))


class TestRoundTrip:
    @pytest.mark.parametrize("shape", [(300, 200), (128, 128), (64, 48), (1, 1), (513, 130)])
    def test_requantize_is_bit_exact(self, shape):
        w = _multiscale_weight(*shape, seed=shape[0])
        if shape[0] > 128 and shape[1] > 128:
            w[:128, 128:] = 0.0  # an all-zero block
            # A block whose amax / 448 is subnormal: its scale is clamped to 2**-126.
            w[128:256, :128] = torch.randn(128, 128, generator=torch.Generator().manual_seed(2))
            w[128:256, :128] *= 1e-37
        q, s = quantize_blockwise(w)
        if shape[0] > 128 and shape[1] > 128:
            assert s[0, 1].item() == 1.0 and s[1, 0].item() == _TINY
        q2, s2 = quantize_blockwise(dequantize_blockwise(q, s))
        assert torch.equal(_bits(q2), _bits(q))
        assert torch.equal(_bits(s2), _bits(s))

    def test_negative_zero_survives(self):
        w = torch.tensor([[-0.0, -1e-9, 1.0]])  # -1e-9 rounds to e4m3fn -0
        q, s = quantize_blockwise(w)
        assert q.view(torch.uint8)[0, 0].item() == 0x80
        q2, _ = quantize_blockwise(dequantize_blockwise(q, s))
        assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8))

    def test_scales_from_quantizer_survive_for_every_mantissa(self):
        # Every fp32 amax in [1, 2): scale invariance covers the rest of the normal range.
        amax = (torch.arange(0, 2**23, dtype=torch.int32) | (127 << 23)).view(torch.float32)
        s = amax / FP8_E4M3_MAX
        assert torch.equal((s * FP8_E4M3_MAX) / FP8_E4M3_MAX, s)

    def test_arbitrary_scales_do_not_all_survive(self):
        # Why the quantiser must compute s as fp32(amax) / 448: about 11% of fp32 values s have
        # fl(fl(448 * s) / 448) != s, so a foreign scale can come back one ulp off.
        s = (torch.arange(0, 2**23, dtype=torch.int32) | (120 << 23)).view(torch.float32)
        survives = (s * FP8_E4M3_MAX) / FP8_E4M3_MAX == s
        assert 0.10 < 1 - survives.float().mean().item() < 0.12
        s_bad = s[~survives][:1].reshape(1, 1)
        q = torch.full((4, 4), FP8_E4M3_MAX).to(torch.float8_e4m3fn)
        _, s2 = quantize_blockwise(dequantize_blockwise(q, s_bad))
        assert s2.item() != s_bad.item()
