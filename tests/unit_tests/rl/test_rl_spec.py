# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The ``--spec`` entry points, called the way slime/miles and megatron-training call them.

The slime path is reproduced end to end in one gloo process: the MiniMax-M2 flags from
``minimax_m2_training_flags`` without ``--qk-layernorm-scope`` and ``--moe-router-keep-in-fp32``
(slime's parser, on stock megatron-core, knows neither),
megatron-training's parser, the stock ``core_transformer_config_from_args``, then
``fn(args, config, vp_stage)``, ``GPTModel`` and megatron-core's MTP spec derivation, as in slime's
``model_provider``. The model, filled with the HF weights, must give transformers' logits.
"""

import dataclasses
import inspect
from types import SimpleNamespace

import pytest
import torch

from megatron.core.transformer.transformer_config import TransformerConfig as MCoreTransformerConfig

from megatron.minimax.models.minimax_m2.hf_config import minimax_m2_config_from_hf
from megatron.minimax.models.minimax_m2.hf_reference import hf_logits, load_hf_reference_model
from megatron.minimax.models.minimax_m2.parity import LOGITS_ATOL
from megatron.minimax.rl import get_minimax_m2_spec, minimax_m2_block_spec
from megatron.minimax.testing.distributed import run_in_processes
from megatron.minimax.testing.tiny_checkpoint import tiny_hf_config


def _tokens(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 8), generator=torch.Generator().manual_seed(4))


def _slime_args_and_config(hf_config, mtp_num_layers=None):
    """What slime's model provider has: parsed args and the stock megatron-core config."""
    from megatron.training.arguments import core_transformer_config_from_args

    from megatron.minimax.training.arguments import parse_training_args
    from megatron.minimax.training.minimax_m2_flags import (
        minimax_m2_training_flags,
        required_run_flags,
    )

    flags, _, model_args = minimax_m2_training_flags(hf_config, mtp_num_layers=mtp_num_layers)
    argv = [token for flag in flags for token in flag.split()]
    scope = argv.index("--qk-layernorm-scope")
    assert argv[scope + 1] == "layer"
    del argv[scope : scope + 2]
    argv.remove("--moe-router-keep-in-fp32")
    # CPU-only: no Apex fused weight-gradient kernel, CPU parameter init.
    cpu = ["--use-cpu-initialization", "--no-gradient-accumulation-fusion"]
    args = parse_training_args(required_run_flags(model_args) + argv + cpu)
    config = core_transformer_config_from_args(args)
    assert type(config) is MCoreTransformerConfig  # no qk_layernorm_scope field, as in slime
    return args, config, model_args


def _spec_summary(block_spec):
    from megatron.minimax.transformer.full_dim_qk_norm import FullDimKRMSNorm, FullDimQRMSNorm
    from megatron.minimax.transformer.moe.fp32_router import FP32TopKRouter

    def layer_summary(layer_spec):
        attention = layer_spec.submodules.self_attention.submodules
        router = layer_spec.submodules.mlp.keywords["submodules"].router
        return (
            attention.q_layernorm is FullDimQRMSNorm,
            attention.k_layernorm is FullDimKRMSNorm,
            router is FP32TopKRouter,
        )

    return [layer_summary(layer_spec) for layer_spec in block_spec.layer_specs]


def _worker(rank, world_size, hf_dir):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec
    from megatron.training.vocab_utils import calculate_padded_vocab_size

    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.conversion.model_weights import load_hf_weights
    from megatron.minimax.models.minimax_m2.parity import (
        LoadedModel,
        ParallelLayout,
        initialize_layout,
        megatron_logits,
    )
    from megatron.minimax.models.minimax_m2.weight_mapping import (
        MINIMAX_M2_WEIGHTS,
        mapping_context,
    )

    ckpt = HFCheckpoint(hf_dir)
    layout = ParallelLayout()
    initialize_layout(layout)
    args, config, model_args = _slime_args_and_config(ckpt.config)
    spec = get_minimax_m2_spec(args, config, None)
    assert not hasattr(config, "qk_layernorm_scope")  # the caller's config is left alone

    # slime's model_provider: GPTModel(config, spec, ...) with the args' model arguments.
    vocab_size = calculate_padded_vocab_size(
        args.vocab_size, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=vocab_size,
        max_sequence_length=args.max_position_embeddings,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
    )  # fmt: skip
    ctx = mapping_context(config, model_args, vocab_size)
    load_hf_weights(model, lambda name: ckpt.get(name, torch.float32), ctx, MINIMAX_M2_WEIGHTS)
    logits = megatron_logits(
        LoadedModel(model, config, model_args, ctx, layout), _tokens(model_args.vocab_size)
    )

    mtp_args, mtp_config, _ = _slime_args_and_config(ckpt.config, mtp_num_layers=1)
    mtp_decoder_spec = get_minimax_m2_spec(mtp_args, mtp_config, None)
    mtp_spec = get_gpt_mtp_block_spec(mtp_config, mtp_decoder_spec, use_transformer_engine=False)
    mtp_layers = [layer.submodules.mtp_model_layer for layer in mtp_spec.layer_specs]

    our_config, _ = minimax_m2_config_from_hf(ckpt.config, transformer_impl="local")
    return dict(
        logits=logits,
        decoder=_spec_summary(spec),
        mtp=_spec_summary(SimpleNamespace(layer_specs=mtp_layers)),
        builder_convention=_spec_summary(
            minimax_m2_block_spec(SimpleNamespace(transformer=our_config), vp_stage=None)
        ),
    )


@pytest.fixture(scope="module")
def slime_path(tiny_bf16_checkpoint):
    return run_in_processes(_worker, 1, tiny_bf16_checkpoint)[0]


class TestSlimeSpecFunction:
    def test_signature_is_args_config_vp_stage(self):
        # slime/miles call it positionally: fn(args, config, vp_stage).
        assert list(inspect.signature(get_minimax_m2_spec).parameters) == [
            "args", "config", "vp_stage"
        ]  # fmt: skip

    def test_every_layer_has_full_dim_qk_norm_and_fp32_router(self, slime_path):
        assert slime_path["decoder"] == [(True, True, True)] * 4

    def test_mtp_layers_derived_by_megatron_core_keep_both(self, slime_path):
        assert slime_path["mtp"] == [(True, True, True)]

    def test_model_built_the_slime_way_matches_hf(self, slime_path, tiny_bf16_checkpoint):
        tokens = _tokens(1001)
        reference = hf_logits(load_hf_reference_model(tiny_bf16_checkpoint), tokens)
        assert (slime_path["logits"] - reference).abs().max() <= LOGITS_ATOL


class TestMegatronTrainingSpecFunction:
    def test_signature_takes_vp_stage_keyword(self):
        assert "vp_stage" in inspect.signature(minimax_m2_block_spec).parameters

    def test_builds_from_model_config(self, slime_path):
        assert slime_path["builder_convention"] == [(True, True, True)] * 4

    def test_refuses_mtp_with_the_stock_builder(self):
        config, _ = minimax_m2_config_from_hf(tiny_hf_config(), mtp_num_layers=1)

        class StockGPTModelConfig(SimpleNamespace):
            builder = "megatron.training.models.gpt.GPTModelBuilder"

        with pytest.raises(ValueError, match="rebuilds stock MTP layer specs"):
            minimax_m2_block_spec(StockGPTModelConfig(transformer=config))


class TestConfigChecks:
    """Refused before any spec is built (no process group needed)."""

    @staticmethod
    def _stock_config(**changes):
        config, _ = minimax_m2_config_from_hf(tiny_hf_config())
        fields = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(MCoreTransformerConfig)
            if f.init
        }
        fields.update(changes)
        return MCoreTransformerConfig(**fields)

    def test_head_scope_of_our_config_is_refused(self):
        config, _ = minimax_m2_config_from_hf(tiny_hf_config())
        head = dataclasses.replace(config, qk_layernorm_scope="head")
        with pytest.raises(ValueError, match="--qk-layernorm-scope layer"):
            get_minimax_m2_spec(SimpleNamespace(transformer_impl="local"), head)

    @pytest.mark.parametrize(
        "changes, message",
        [
            (dict(qk_layernorm=False), "requires qk_layernorm=True"),
            (dict(moe_router_score_function="sqrtsoftplus"), "sigmoid"),
            (dict(moe_router_enable_expert_bias=False), "expert bias"),
        ],
    )
    def test_non_minimax_stock_configs_are_refused(self, changes, message):
        config = self._stock_config(**changes)
        with pytest.raises(ValueError, match=message):
            get_minimax_m2_spec(SimpleNamespace(transformer_impl="local"), config)
