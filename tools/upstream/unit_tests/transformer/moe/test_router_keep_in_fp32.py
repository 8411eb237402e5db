# Copyright (c) 2026 NVIDIA CORPORATION & AFFILIATES. All rights reserved.

import pytest
import torch

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_submodules
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.spec_utils import get_submodules
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.training.initialize import _set_random_seed
from tests.unit_tests.test_utilities import Utils

EXPERTS, HIDDEN = 8, 32


def _config(keep_in_fp32, router_dtype="fp32"):
    return TransformerConfig(
        num_layers=1,
        hidden_size=HIDDEN,
        num_attention_heads=4,
        num_moe_experts=EXPERTS,
        moe_ffn_hidden_size=16,
        moe_router_topk=2,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        moe_router_load_balancing_type="none",
        moe_router_dtype=router_dtype,
        moe_router_keep_in_fp32=keep_in_fp32,
        add_bias_linear=False,
        bf16=True,
        params_dtype=torch.bfloat16,
        use_cpu_initialization=True,
    )


class TestRouterKeepInFp32:
    def setup_method(self, method):
        Utils.initialize_model_parallel(tensor_model_parallel_size=1)

    def teardown_method(self, method):
        Utils.destroy_model_parallel()

    def _router(self, keep_in_fp32):
        _set_random_seed(seed_=123, data_parallel_random_init=False)
        config = _config(keep_in_fp32)
        submodules = get_submodules(
            get_gpt_layer_local_submodules(num_experts=EXPERTS, moe_grouped_gemm=False).mlp
        )
        wrapped = Float16Module(config, MoELayer(config, submodules)).cuda()
        return wrapped.module.router

    def test_requires_fp32_router_dtype(self):
        with pytest.raises(ValueError, match="moe_router_keep_in_fp32 needs moe_router_dtype"):
            _config(True, router_dtype=None)

    def test_weight_and_buffers_stay_fp32_under_float16_module(self):
        router = self._router(keep_in_fp32=True)
        assert router.weight.dtype == torch.float32
        assert router.expert_bias.dtype == torch.float32
        assert router.local_tokens_per_expert.dtype == torch.float32
        # Same draws as the default router, without the rounding to bf16.
        stock = self._router(keep_in_fp32=False)
        assert stock.weight.dtype == torch.bfloat16
        assert torch.equal(stock.weight, router.weight.to(torch.bfloat16))
        assert not torch.equal(router.weight, router.weight.to(torch.bfloat16).float())

    def test_gating_is_fp32_with_an_fp32_weight_gradient(self):
        router = self._router(keep_in_fp32=True)
        x = torch.randn(6, 2, HIDDEN, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        logits = router.gating(x)
        assert logits.dtype == torch.float32
        logits.sum().backward()
        assert router.weight.grad.dtype == torch.float32
        assert x.grad.dtype == torch.bfloat16
        expected = torch.ones_like(logits).reshape(-1, EXPERTS).t() @ x.detach().float().reshape(
            -1, HIDDEN
        )
        torch.testing.assert_close(router.weight.grad, expected)

    def test_token_counts_do_not_saturate(self):
        # A bf16 counter stops at 256 when incremented by one.
        router = self._router(keep_in_fp32=False)
        router.local_tokens_per_expert.zero_()
        for _ in range(300):
            router.local_tokens_per_expert += 1
        assert router.local_tokens_per_expert.dtype == torch.float32
        assert router.local_tokens_per_expert[0].item() == 300
