# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""``megatron.minimax.transformer.TransformerConfig``: the ``qk_layernorm_scope`` and
``moe_router_keep_in_fp32`` options.

``make test-native`` runs this module against megatron-core patched by the native series, where
the class is megatron-core's own and the same checks must hold.
"""

import dataclasses

import pytest
from megatron.core.transformer.transformer_config import TransformerConfig as MCoreTransformerConfig

from megatron.minimax.native_core import NATIVE_CONFIG_FIELDS, megatron_core_is_native
from megatron.minimax.transformer.transformer_config import TransformerConfig

LAYER_SCOPE = dict(
    num_layers=2,
    hidden_size=64,
    num_attention_heads=8,
    num_query_groups=4,
    kv_channels=16,
    normalization="RMSNorm",
    qk_layernorm=True,
    qk_layernorm_scope="layer",
)


def _config(**changes) -> TransformerConfig:
    return TransformerConfig(**{**LAYER_SCOPE, **changes})


def _message(**changes) -> str:
    with pytest.raises(ValueError) as info:
        _config(**changes)
    return str(info.value)


class TestQkLayernormScopeDefault:
    def test_default_scope_is_head(self):
        config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=8)
        assert config.qk_layernorm_scope == "head"

    def test_is_a_megatron_core_config_with_the_native_fields(self):
        ours = {f.name for f in dataclasses.fields(TransformerConfig)}
        upstream = {f.name for f in dataclasses.fields(MCoreTransformerConfig)}
        assert set(NATIVE_CONFIG_FIELDS) == {"qk_layernorm_scope", "moe_router_keep_in_fp32"}
        assert set(NATIVE_CONFIG_FIELDS) <= ours
        if megatron_core_is_native():
            assert TransformerConfig is MCoreTransformerConfig
        else:
            assert issubclass(TransformerConfig, MCoreTransformerConfig)
            assert ours - upstream == set(NATIVE_CONFIG_FIELDS)

    def test_head_scope_skips_layer_scope_checks(self):
        # LayerNorm QK norm and per-head statistics are fine with the stock scope.
        config = _config(qk_layernorm_scope="head", normalization="LayerNorm")
        assert config.qk_layernorm_scope == "head"
        config = _config(qk_layernorm_scope="head", qk_layernorm=False)
        assert config.qk_layernorm is False

    def test_unknown_scope_is_refused(self):
        message = _message(qk_layernorm_scope="per_layer")
        assert "qk_layernorm_scope" in message and "'per_layer'" in message


class TestLayerScopeValidation:
    def test_valid_layer_scope_config(self):
        config = _config(tensor_model_parallel_size=4)
        assert config.qk_layernorm_scope == "layer"
        assert config.tensor_model_parallel_size == 4

    def test_layer_scope_requires_qk_layernorm(self):
        message = _message(qk_layernorm=False)
        assert "qk_layernorm=True" in message

    def test_layer_scope_requires_rmsnorm(self):
        message = _message(normalization="LayerNorm")
        assert "'RMSNorm'" in message and "'LayerNorm'" in message

    def test_layer_scope_refuses_qk_l2_norm(self):
        assert "qk_l2_norm" in _message(qk_l2_norm=True)

    def test_layer_scope_refuses_zero_centered_gamma(self):
        assert "layernorm_zero_centered_gamma" in _message(layernorm_zero_centered_gamma=True)

    def test_layer_scope_refuses_multi_latent_attention(self):
        assert "multi_latent_attention" in _message(multi_latent_attention=True)

    def test_query_groups_must_divide_by_tp(self):
        message = _message(num_query_groups=2, tensor_model_parallel_size=4)
        assert "num_query_groups (2)" in message and "tensor_model_parallel_size (4)" in message

    def test_single_kv_head_with_tp_is_refused(self):
        # Upstream replicates the one K head over TP ranks; the statistic would count it twice.
        message = _message(num_query_groups=1, tensor_model_parallel_size=2)
        assert "num_query_groups (1)" in message and "tensor_model_parallel_size (2)" in message

    def test_default_query_groups_are_the_heads(self):
        config = _config(num_query_groups=None, tensor_model_parallel_size=8)
        assert config.num_query_groups == 8

    def test_heads_must_divide_by_tp(self):
        # megatron-core refuses this first, with the values in its message too.
        message = _message(num_attention_heads=12, tensor_model_parallel_size=8)
        assert "(12)" in message and "(8)" in message

    def test_layer_scope_heads_check_quotes_values(self):
        # Reach our own check directly (megatron-core's __post_init__ rejects the case first).
        config = _config()
        config.num_attention_heads = 12
        config.num_query_groups = 8
        config.tensor_model_parallel_size = 8
        with pytest.raises(ValueError) as info:
            config._validate_layer_scope_qk_layernorm()
        message = str(info.value)
        assert "num_attention_heads (12)" in message
        assert "tensor_model_parallel_size (8)" in message


ROUTER = dict(
    num_layers=2,
    hidden_size=64,
    num_attention_heads=8,
    num_moe_experts=4,
    moe_router_topk=2,
    moe_ffn_hidden_size=32,
)


class TestMoeRouterKeepInFp32:
    def test_default_is_off(self):
        assert TransformerConfig(**ROUTER).moe_router_keep_in_fp32 is False

    def test_with_fp32_router_dtype(self):
        config = TransformerConfig(**ROUTER, moe_router_dtype="fp32", moe_router_keep_in_fp32=True)
        assert config.moe_router_keep_in_fp32 is True

    @pytest.mark.parametrize("router_dtype", [None, "fp64"])
    def test_refused_without_fp32_router_dtype(self, router_dtype):
        with pytest.raises(ValueError) as info:
            TransformerConfig(**ROUTER, moe_router_dtype=router_dtype, moe_router_keep_in_fp32=True)
        message = str(info.value)
        assert "moe_router_keep_in_fp32" in message and repr(router_dtype) in message
