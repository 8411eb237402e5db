# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""``minimax_m2_config_from_hf`` on the released MiniMax-M2.5 ``config.json`` and its refusals."""

import json
from pathlib import Path

import pytest
import torch.nn.functional as F

from megatron.minimax.models.minimax_m2.hf_config import (
    GPTModelArgs,
    minimax_m2_config_from_hf,
    make_vocab_size_divisible_by,
    padded_vocab_size,
)
from megatron.minimax.transformer.transformer_config import TransformerConfig

# MiniMaxAI/MiniMax-M2.5 config.json, verbatim (key order, values, quantization_config), so that
# the test does not depend on a file outside the repository.
RELEASED_M2_5_CONFIG_JSON = """{
 "architectures": ["MiniMaxM2ForCausalLM"],
 "attn_type_list": %s,
 "auto_map": {
  "AutoConfig": "configuration_minimax_m2.MiniMaxM2Config",
  "AutoModelForCausalLM": "modeling_minimax_m2.MiniMaxM2ForCausalLM"
 },
 "head_dim": 128,
 "hidden_act": "silu",
 "hidden_size": 3072,
 "intermediate_size": 1536,
 "max_position_embeddings": 196608,
 "model_type": "minimax_m2",
 "mtp_transformer_layers": 1,
 "num_attention_heads": 48,
 "num_experts_per_tok": 8,
 "num_hidden_layers": 62,
 "num_key_value_heads": 8,
 "num_local_experts": 256,
 "num_mtp_modules": 3,
 "qk_norm_type": "per_layer",
 "quantization_config": {
  "activation_scheme": "dynamic",
  "fmt": "float8_e4m3fn",
  "quant_method": "fp8",
  "weight_block_size": [128, 128],
  "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"]
 },
 "rms_norm_eps": 1e-06,
 "rope_theta": 5000000,
 "rotary_dim": 64,
 "scoring_func": "sigmoid",
 "shared_intermediate_size": 0,
 "tie_word_embeddings": false,
 "torch_dtype": "bfloat16",
 "transformers_version": "4.46.1",
 "use_cache": true,
 "use_mtp": true,
 "use_qk_norm": true,
 "use_routing_bias": true,
 "vocab_size": 200064
}
""" % json.dumps([1] * 62)


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("minimax_m2.5")
    (directory / "config.json").write_text(RELEASED_M2_5_CONFIG_JSON)
    return directory


@pytest.fixture(scope="module")
def released() -> dict:
    return json.loads(RELEASED_M2_5_CONFIG_JSON)


@pytest.fixture(scope="module")
def converted(released_dir):
    return minimax_m2_config_from_hf(released_dir / "config.json")


def _refused(hf: dict, *, mtp_num_layers=None, **overrides) -> str:
    with pytest.raises(ValueError) as info:
        minimax_m2_config_from_hf(hf, mtp_num_layers=mtp_num_layers, **overrides)
    return str(info.value)


class TestReleasedConfig:
    def test_released_config_has_no_attention_dropout_key(self, released):
        # The reason attention_dropout needs its HF default: Megatron's own default is 0.1.
        assert "attention_dropout" not in released
        megatron_default = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1)
        assert megatron_default.attention_dropout == 0.1

    def test_returns_our_transformer_config_and_model_args(self, converted):
        config, model_args = converted
        assert type(config) is TransformerConfig
        assert type(model_args) is GPTModelArgs

    def test_dimensions_match_release(self, converted):
        config, _ = converted
        assert config.num_layers == 62
        assert config.hidden_size == 3072
        assert config.num_attention_heads == 48
        assert config.num_query_groups == 8
        # Explicit: hidden / heads would give 64.
        assert config.kv_channels == 128
        assert config.hidden_size // config.num_attention_heads == 64
        assert config.moe_ffn_hidden_size == 1536
        assert config.ffn_hidden_size == 1536
        assert config.num_moe_experts == 256
        assert config.moe_router_topk == 8
        assert config.moe_layer_freq == 1

    def test_norms_are_rmsnorm_with_layer_scope_qk_norm(self, converted):
        config, _ = converted
        assert config.layernorm_epsilon == 1e-6
        assert config.normalization == "RMSNorm"
        assert config.qk_layernorm is True
        assert config.qk_layernorm_scope == "layer"
        assert config.qk_l2_norm is False
        assert config.layernorm_zero_centered_gamma is False

    def test_mlp_is_swiglu_without_bias(self, converted):
        config, _ = converted
        assert config.gated_linear_unit is True
        assert config.activation_func is F.silu
        assert config.add_bias_linear is False
        assert config.add_qkv_bias is False

    def test_router_is_sigmoid_with_fp32_expert_bias_and_no_shared_expert(self, converted):
        config, _ = converted
        assert config.moe_router_score_function == "sigmoid"
        assert config.moe_router_enable_expert_bias is True
        assert config.moe_router_dtype == "fp32"
        assert config.moe_router_topk_scaling_factor is None
        assert config.moe_router_pre_softmax is False
        assert config.moe_router_num_groups is None
        assert config.moe_shared_expert_intermediate_size is None

    def test_dropout_is_zero(self, converted):
        config, _ = converted
        assert config.attention_dropout == 0.0
        assert config.hidden_dropout == 0.0

    def test_mtp_is_off_by_default(self, converted):
        config, _ = converted
        assert not config.mtp_num_layers

    def test_model_args_match_release(self, converted):
        _, model_args = converted
        assert model_args.vocab_size == 200064
        assert model_args.rotary_percent == 0.5
        assert model_args.rotary_base == 5000000
        assert isinstance(model_args.rotary_base, int)
        assert model_args.share_embeddings_and_output_weights is False
        assert model_args.max_sequence_length == 196608
        assert model_args.position_embedding_type == "rope"

    def test_directory_path_and_dict_give_the_same_result(self, released, released_dir, converted):
        config, model_args = converted
        from_dir_config, from_dir_args = minimax_m2_config_from_hf(released_dir)
        from_dict_config, from_dict_args = minimax_m2_config_from_hf(released)
        assert from_dir_args == model_args == from_dict_args
        assert from_dir_config.num_layers == from_dict_config.num_layers == config.num_layers

    def test_m27_max_position_embeddings(self, released):
        _, model_args = minimax_m2_config_from_hf({**released, "max_position_embeddings": 204800})
        assert model_args.max_sequence_length == 204800


class TestRotaryVariants:
    @staticmethod
    def _without_rotary_dim(hf: dict) -> dict:
        return {k: v for k, v in hf.items() if k != "rotary_dim"}

    def test_partial_rotary_factor_key(self, released):
        hf = {**self._without_rotary_dim(released), "partial_rotary_factor": 0.25}
        _, model_args = minimax_m2_config_from_hf(hf)
        assert model_args.rotary_percent == 0.25

    def test_rope_parameters_partial_rotary_factor(self, released):
        hf = {
            **self._without_rotary_dim(released),
            "rope_parameters": {"partial_rotary_factor": 0.5, "rope_type": "default"},
        }
        _, model_args = minimax_m2_config_from_hf(hf)
        assert model_args.rotary_percent == 0.5
        assert model_args.rotary_base == 5000000

    def test_no_rotary_key_means_full_rotary(self, released):
        _, model_args = minimax_m2_config_from_hf(self._without_rotary_dim(released))
        assert model_args.rotary_percent == 1.0

    def test_transformers_v5_saved_config_reads_rope_theta_from_rope_parameters(self, released):
        # transformers 5 writes rope_theta only inside rope_parameters.
        hf = {k: v for k, v in released.items() if k not in ("rope_theta", "rotary_dim")}
        hf["rope_parameters"] = {
            "rope_theta": 5000000,
            "partial_rotary_factor": 0.5,
            "rope_type": "default",
        }
        _, model_args = minimax_m2_config_from_hf(hf)
        assert model_args.rotary_base == 5000000
        assert model_args.rotary_percent == 0.5

    def test_rope_parameters_with_scaling_is_refused(self, released):
        message = _refused({**released, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
        assert "rope_parameters" in message and "yarn" in message

    def test_conflicting_rope_theta_is_refused(self, released):
        message = _refused({**released, "rope_parameters": {"rope_theta": 10000}})
        assert "rope_theta" in message and "10000" in message

    def test_odd_rotary_dim_is_refused(self, released):
        assert "rotary_dim" in _refused({**released, "rotary_dim": 63})


class TestPaddedVocabSize:
    def test_release_vocab_stays_at_tp1(self):
        assert padded_vocab_size(200064, 1) == 200064

    def test_release_vocab_stays_unpadded_at_every_tp_dividing_128(self):
        for tp in (1, 2, 4, 8, 16, 128):
            assert padded_vocab_size(200064, tp) == 200064
            assert make_vocab_size_divisible_by(tp) * tp == 128

    def test_odd_vocab_pads_to_next_multiple_of_128_at_every_tp(self):
        assert [padded_vocab_size(1001, tp) for tp in (1, 2, 4, 8)] == [1024] * 4

    def test_tp_that_does_not_divide_128_is_refused(self):
        with pytest.raises(ValueError, match=r"tensor_model_parallel_size \(3\) must divide 128"):
            padded_vocab_size(1001, 3)


class TestRefusals:
    def test_lightning_attention_layer_is_refused(self, released):
        attn_types = [1] * 62
        attn_types[5] = 0
        message = _refused({**released, "attn_type_list": attn_types})
        assert "attn_type_list" in message and "[5]" in message

    def test_wrong_length_attn_type_list_is_refused(self, released):
        message = _refused({**released, "attn_type_list": [1] * 61})
        assert "attn_type_list" in message and "61" in message

    def test_shared_expert_is_refused(self, released):
        message = _refused({**released, "shared_intermediate_size": 1536})
        assert "shared_intermediate_size" in message and "1536" in message

    def test_softmax_scoring_is_refused(self, released):
        message = _refused({**released, "scoring_func": "softmax"})
        assert "scoring_func" in message and "softmax" in message

    def test_disabled_qk_norm_is_refused(self, released):
        assert "use_qk_norm" in _refused({**released, "use_qk_norm": False})

    def test_per_head_qk_norm_is_refused(self, released):
        message = _refused({**released, "qk_norm_type": "per_head"})
        assert "qk_norm_type" in message and "per_head" in message

    def test_rope_scaling_is_refused(self, released):
        rope_scaling = {"type": "yarn", "factor": 4.0}
        assert "rope_scaling" in _refused({**released, "rope_scaling": rope_scaling})

    def test_unknown_key_is_refused(self, released):
        assert "lightning_block_size" in _refused({**released, "lightning_block_size": 256})

    def test_wrong_model_type_is_refused(self, released):
        message = _refused({**released, "model_type": "mixtral"})
        assert "model_type" in message and "mixtral" in message

    def test_wrong_architectures_is_refused(self, released):
        message = _refused({**released, "architectures": ["MixtralForCausalLM"]})
        assert "architectures" in message and "MixtralForCausalLM" in message

    @pytest.mark.parametrize("key", ["head_dim", "num_local_experts", "vocab_size", "rope_theta"])
    def test_missing_required_key_is_refused(self, released, key):
        hf = {k: v for k, v in released.items() if k != key}
        message = _refused(hf)
        assert key in message and "lacks" in message

    @pytest.mark.parametrize(
        "override",
        [
            {"num_layers": 4},
            {"kv_channels": 64},
            {"moe_router_dtype": "fp64"},
            {"qk_layernorm_scope": "head"},
            {"attention_dropout": 0.1},
        ],
    )
    def test_overriding_a_field_from_the_hf_config_is_refused(self, released, override):
        (field,) = override
        message = _refused(released, **override)
        assert field in message and "HF config" in message

    def test_unknown_override_field_is_refused(self, released):
        message = _refused(released, tensor_parallel_size=2)
        assert "tensor_parallel_size" in message and "unknown" in message

    def test_multi_layer_mtp_module_is_refused_with_mtp(self, released):
        message = _refused({**released, "mtp_transformer_layers": 2}, mtp_num_layers=1)
        assert "mtp_transformer_layers" in message


class TestOverrides:
    def test_parallel_overrides_reach_the_config(self, released):
        config, _ = minimax_m2_config_from_hf(
            released,
            tensor_model_parallel_size=2,
            expert_model_parallel_size=4,
            expert_tensor_parallel_size=1,
            sequence_parallel=True,
        )
        assert config.tensor_model_parallel_size == 2
        assert config.expert_model_parallel_size == 4
        assert config.expert_tensor_parallel_size == 1
        assert config.sequence_parallel is True

    def test_overrides_replace_non_architecture_defaults(self, released):
        config, _ = minimax_m2_config_from_hf(
            released, hidden_dropout=0.1, moe_token_dispatcher_type="allgather"
        )
        assert config.hidden_dropout == 0.1
        assert config.moe_token_dispatcher_type == "allgather"

    def test_mtp_num_layers_reaches_the_config(self, released):
        config, _ = minimax_m2_config_from_hf(released, mtp_num_layers=3)
        assert config.mtp_num_layers == 3

    def test_layer_scope_validation_applies_to_overrides(self, released):
        # 8 KV heads cannot be split over 16 TP ranks without replication.
        with pytest.raises(ValueError, match="num_query_groups"):
            minimax_m2_config_from_hf(released, tensor_model_parallel_size=16)
