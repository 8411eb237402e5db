# Copyright (c) 2026 NVIDIA CORPORATION & AFFILIATES. All rights reserved.

import pytest
import torch

import megatron.core.parallel_state as ps
from megatron.core.transformer.full_dim_qk_norm import FullDimQKRMSNorm
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.training.initialize import _set_random_seed
from tests.unit_tests.test_utilities import Utils

HEADS, GROUPS, HEAD_DIM, EPS = 8, 4, 16, 1e-6


def _reference(x, weight, grad_output):
    """float64 RMSNorm over all heads: returns (y, dx, dw)."""
    x = x.double().requires_grad_(True)
    weight = weight.double().requires_grad_(True)
    flat = x.flatten(-2)
    y = weight * flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + EPS)
    y = y.view_as(x)
    y.backward(grad_output.double())
    return y.detach(), x.grad, weight.grad


class TestFullDimQKRMSNorm:
    def teardown_method(self, method):
        Utils.destroy_model_parallel()

    @pytest.mark.parametrize("tp", [1, 2, 4])
    @pytest.mark.parametrize("projection", ["query", "key"])
    def test_matches_single_device_reference(self, tp, projection):
        if Utils.world_size % tp:
            pytest.skip(f"needs a world size divisible by {tp}")
        Utils.initialize_model_parallel(tensor_model_parallel_size=tp)
        _set_random_seed(seed_=123, data_parallel_random_init=False)
        config = TransformerConfig(
            num_layers=1,
            hidden_size=64,
            num_attention_heads=HEADS,
            num_query_groups=GROUPS,
            kv_channels=HEAD_DIM,
            normalization="RMSNorm",
            qk_layernorm=True,
            qk_layernorm_scope="layer",
            tensor_model_parallel_size=tp,
            use_cpu_initialization=True,
        )
        group = ps.get_tensor_model_parallel_group()
        rank = ps.get_tensor_model_parallel_rank()
        heads = HEADS if projection == "query" else GROUPS
        generator = torch.Generator().manual_seed(7)
        x = torch.randn(5, 2, heads, HEAD_DIM, generator=generator) * 3
        weight = torch.rand(heads * HEAD_DIM, generator=generator) + 0.5
        grad_output = torch.randn(5, 2, heads, HEAD_DIM, generator=generator)
        ref_y, ref_dx, ref_dw = _reference(x, weight, grad_output)

        norm = FullDimQKRMSNorm(config, HEAD_DIM, EPS, projection=projection, tp_group=group)
        norm = norm.cuda()
        assert norm.weight.shape == (heads * HEAD_DIM,)
        with torch.no_grad():
            norm.weight.copy_(weight.cuda())
        local = slice(rank * heads // tp, (rank + 1) * heads // tp)
        x_local = x[:, :, local].clone().cuda().requires_grad_(True)
        y = norm(x_local)
        y.backward(grad_output[:, :, local].cuda())
        # What finalize_model_grads does for q_layernorm/k_layernorm weights: sum over TP.
        dw = norm.weight.grad.clone()
        torch.distributed.all_reduce(dw, group=group)

        torch.testing.assert_close(y.double().cpu(), ref_y[:, :, local], rtol=0, atol=2e-6)
        torch.testing.assert_close(
            x_local.grad.double().cpu(), ref_dx[:, :, local], rtol=0, atol=2e-6
        )
        torch.testing.assert_close(
            dw.double().cpu(), ref_dw, rtol=2e-6, atol=2e-6 * ref_dw.abs().max().item()
        )
        assert not getattr(norm.weight, "sequence_parallel", False)

    def test_refuses_tensor_parallelism_without_a_group(self):
        Utils.initialize_model_parallel(tensor_model_parallel_size=1)
        config = TransformerConfig(
            num_layers=1,
            hidden_size=64,
            num_attention_heads=HEADS,
            num_query_groups=GROUPS,
            kv_channels=HEAD_DIM,
            normalization="RMSNorm",
            qk_layernorm=True,
            qk_layernorm_scope="layer",
            use_cpu_initialization=True,
        )
        config.tensor_model_parallel_size = 2
        with pytest.raises(ValueError, match="needs the tensor-parallel group"):
            FullDimQKRMSNorm(config, HEAD_DIM, EPS, projection="key", tp_group=None)
