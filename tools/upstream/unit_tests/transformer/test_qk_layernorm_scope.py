# Copyright (c) 2026 NVIDIA CORPORATION & AFFILIATES. All rights reserved.

import argparse

import pytest
import torch

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.full_dim_qk_norm import FullDimQKRMSNorm
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer
from megatron.training.arguments import add_megatron_arguments
from megatron.training.initialize import _set_random_seed
from tests.unit_tests.test_utilities import Utils

HEADS, GROUPS, HEAD_DIM = 8, 4, 16


def _config(**overrides):
    kwargs = dict(
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
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


class TestQkLayernormScopeConfig:
    def test_default_is_head(self):
        assert (
            TransformerConfig(
                num_layers=1, hidden_size=64, num_attention_heads=8
            ).qk_layernorm_scope
            == "head"
        )

    @pytest.mark.parametrize(
        "overrides, message",
        [
            (dict(qk_layernorm=False), "requires qk_layernorm=True"),
            (dict(normalization="LayerNorm"), "normalization must be 'RMSNorm'"),
            (dict(qk_l2_norm=True), "qk_l2_norm"),
            (dict(layernorm_zero_centered_gamma=True), "layernorm_zero_centered_gamma"),
            (dict(qk_layernorm_scope="per_layer"), "must be 'head' or 'layer'"),
            (dict(num_query_groups=2, tensor_model_parallel_size=4), "num_query_groups (2)"),
        ],
    )
    def test_invalid_combinations_are_refused(self, overrides, message):
        with pytest.raises(ValueError) as info:
            _config(**overrides)
        assert message in str(info.value)

    def test_argument_is_generated_from_the_field(self):
        # megatron-training's parser builds its transformer flags with ArgumentGroupFactory.
        parser = add_megatron_arguments(argparse.ArgumentParser())
        action = {a.dest: a for a in parser._actions}["qk_layernorm_scope"]
        assert action.option_strings == ["--qk-layernorm-scope"]
        assert tuple(action.choices) == ("head", "layer")
        assert action.default == "head"


class TestSelfAttentionQkLayernormScope:
    def setup_method(self, method):
        Utils.initialize_model_parallel(tensor_model_parallel_size=1)
        _set_random_seed(seed_=123, data_parallel_random_init=False)

    def teardown_method(self, method):
        Utils.destroy_model_parallel()

    def _layer(self, scope):
        # The stock local spec sets per-head q/k norms; the scope decides inside SelfAttention.
        spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
        return TransformerLayer(_config(qk_layernorm_scope=scope), spec.submodules)

    def test_layer_scope_builds_full_dimension_norms(self):
        attention = self._layer("layer").self_attention
        assert isinstance(attention.q_layernorm, FullDimQKRMSNorm)
        assert isinstance(attention.k_layernorm, FullDimQKRMSNorm)
        assert attention.q_layernorm.weight.shape == (HEADS * HEAD_DIM,)
        assert attention.k_layernorm.weight.shape == (GROUPS * HEAD_DIM,)

    def test_head_scope_keeps_the_spec_norms(self):
        attention = self._layer("head").self_attention
        assert not isinstance(attention.q_layernorm, FullDimQKRMSNorm)
        assert attention.q_layernorm.weight.shape == (HEAD_DIM,)

    def test_layer_scope_normalises_all_heads_together(self):
        layer = self._layer("layer").cuda()
        norm = layer.self_attention.q_layernorm
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
        x = torch.randn(3, 2, HEADS, HEAD_DIM, device="cuda")
        flat = x.flatten(-2)
        expected = norm.weight * flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + 1e-5)
        torch.testing.assert_close(norm(x), expected.view_as(x))
