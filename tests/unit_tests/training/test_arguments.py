# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Command line -> configs: ``--qk-layernorm-scope`` and ``--moe-router-keep-in-fp32`` reach our
``TransformerConfig`` (megatron-core's own on a native megatron-core)."""

import argparse
import dataclasses

import pytest

from megatron.minimax.native_core import NATIVE_CONFIG_FIELDS, megatron_core_is_native
from megatron.minimax.training.arguments import (
    ARGUMENT_GROUP_TITLE,
    add_minimax_args,
    gpt_model_config_from_args,
    parse_training_args,
    transformer_config_from_args,
)
from megatron.minimax.training.model_builder import HAVE_TE, GPTModelConfig
from megatron.minimax.transformer.transformer_config import TransformerConfig

from training_harness import CPU_RUN_ARGS, TINY_MODEL_ARGS


def _without(argv, *flags):
    """``argv`` minus each flag in ``flags`` and the value that follows it, if any."""
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token in flags:
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        out.append(token)
    return out


def _config(argv, world_size=1):
    return transformer_config_from_args(parse_training_args(argv, world_size=world_size))


class TestArgumentGroup:
    def test_flags_are_generated_from_the_config_fields(self):
        from megatron.training.arguments import add_megatron_arguments

        parser = add_minimax_args(add_megatron_arguments(argparse.ArgumentParser()))
        ours = [g for g in parser._action_groups if g.title == ARGUMENT_GROUP_TITLE]
        if megatron_core_is_native():
            # megatron-training's ArgumentGroupFactory generates them from core's own fields.
            assert ours == []
        else:
            (group,) = ours
            assert sorted(a.dest for a in group._group_actions) == sorted(NATIVE_CONFIG_FIELDS)
        actions = {a.dest: a for a in parser._actions}
        fields = {f.name: f for f in dataclasses.fields(TransformerConfig)}

        scope = actions["qk_layernorm_scope"]
        assert scope.option_strings == ["--qk-layernorm-scope"]
        assert tuple(scope.choices) == ("head", "layer")
        assert scope.default == fields["qk_layernorm_scope"].default == "head"
        assert scope.help.startswith("Which features one QK norm statistic covers")

        keep = actions["moe_router_keep_in_fp32"]
        assert keep.option_strings == ["--moe-router-keep-in-fp32"]
        assert keep.default is fields["moe_router_keep_in_fp32"].default is False
        assert keep.nargs == 0  # a store_true switch
        assert keep.help.startswith("Keep the MoE router's gate weight")

    def test_help_prints_with_megatron_flags(self):
        from megatron.training.arguments import add_megatron_arguments

        parser = argparse.ArgumentParser(allow_abbrev=False)
        add_minimax_args(add_megatron_arguments(parser))
        text = parser.format_help()  # megatron-core 0.19.2 alone raises on a stray '%'
        assert "--qk-layernorm-scope {head,layer}" in text
        assert "--moe-router-keep-in-fp32" in text
        assert "default 100%" in text

    def test_unknown_scope_is_rejected_by_the_parser(self):
        with pytest.raises(SystemExit) as exit_info:
            parse_training_args(
                _without(TINY_MODEL_ARGS, "--qk-layernorm-scope")
                + CPU_RUN_ARGS
                + ["--qk-layernorm-scope", "full"]
            )
        assert exit_info.value.code == 2


class TestConfigFromArgs:
    def test_layer_scope_reaches_our_transformer_config(self):
        config = _config(TINY_MODEL_ARGS + CPU_RUN_ARGS)
        assert type(config) is TransformerConfig
        assert config.qk_layernorm and config.qk_layernorm_scope == "layer"
        assert config.moe_router_keep_in_fp32 is True
        # Neighbouring MiniMax options come through the stock flags.
        assert config.moe_router_dtype == "fp32"
        assert config.moe_router_score_function == "sigmoid"
        assert config.moe_router_enable_expert_bias
        assert (config.num_query_groups, config.kv_channels) == (4, 16)

    def test_default_scope_is_head(self):
        config = _config(_without(TINY_MODEL_ARGS, "--qk-layernorm-scope") + CPU_RUN_ARGS)
        assert config.qk_layernorm_scope == "head"

    def test_keep_in_fp32_is_off_without_the_flag(self):
        config = _config(_without(TINY_MODEL_ARGS, "--moe-router-keep-in-fp32") + CPU_RUN_ARGS)
        assert config.moe_router_keep_in_fp32 is False
        assert config.moe_router_dtype == "fp32"

    def test_gpt_model_config_uses_our_builder(self):
        args = parse_training_args(TINY_MODEL_ARGS + CPU_RUN_ARGS)
        model_config = gpt_model_config_from_args(args)
        assert type(model_config) is GPTModelConfig
        assert model_config.builder == "megatron.minimax.training.model_builder.GPTModelBuilder"
        builder_cls = model_config.get_builder_cls()
        assert builder_cls.__module__ == "megatron.minimax.training.model_builder"
        assert model_config.transformer.qk_layernorm_scope == "layer"
        assert (model_config.rotary_percent, model_config.rotary_base) == (0.5, 5000000)
        assert not model_config.share_embeddings_and_output_weights

    def test_transformer_engine_default_resolves_to_what_is_importable(self):
        config = _config(_without(TINY_MODEL_ARGS + CPU_RUN_ARGS, "--transformer-impl"))
        assert config.transformer_impl == ("transformer_engine" if HAVE_TE else "local")


class TestValidation:
    def test_keep_in_fp32_requires_fp32_router_dtype(self):
        argv = _without(TINY_MODEL_ARGS, "--moe-router-dtype") + CPU_RUN_ARGS
        with pytest.raises(ValueError, match=r"moe_router_keep_in_fp32 needs moe_router_dtype"):
            _config(argv)

    def test_layer_scope_requires_qk_layernorm(self):
        with pytest.raises(ValueError, match=r"requires qk_layernorm=True"):
            _config(_without(TINY_MODEL_ARGS, "--qk-layernorm") + CPU_RUN_ARGS)

    def test_layer_scope_requires_rmsnorm(self):
        argv = _without(TINY_MODEL_ARGS, "--normalization") + CPU_RUN_ARGS
        with pytest.raises(ValueError, match=r"normalization must be 'RMSNorm', got 'LayerNorm'"):
            _config(argv + ["--normalization", "LayerNorm"])

    def test_layer_scope_requires_tp_to_divide_kv_heads(self):
        # 8 query heads and 4 KV heads at TP=8: megatron alone would replicate KV heads.
        argv = TINY_MODEL_ARGS + CPU_RUN_ARGS + ["--tensor-model-parallel-size", "8"]
        with pytest.raises(ValueError, match=r"num_query_groups \(4\) divisible by .* \(8\)"):
            _config(argv + ["--sequence-parallel"], world_size=8)
