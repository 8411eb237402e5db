# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""GPT decoder / MTP block specs with ``qk_layernorm_scope``, the fp32 router and local RMSNorm.

Spec structure is checked in this process. Everything that needs Megatron's parallel state (the
MTP spec and built models) runs in one single-process gloo launch shared by the module.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from megatron.core.models.gpt import gpt_layer_specs as mcore_specs
from megatron.core.transformer.moe.router import TopKRouter

from megatron.minimax.models.gpt import gpt_layer_specs as specs
from megatron.minimax.testing.distributed import run_in_processes
from megatron.minimax.transformer.full_dim_qk_norm import (
    FullDimKRMSNorm,
    FullDimQKRMSNorm,
    FullDimQRMSNorm,
)
from megatron.minimax.transformer.moe.fp32_router import FP32TopKRouter
from megatron.minimax.transformer.rms_norm import RMSNorm
from megatron.minimax.transformer.transformer_config import TransformerConfig

HEADS, GROUPS, HEAD_DIM, HIDDEN, VOCAB, SEQ, BATCH = 4, 2, 16, 48, 96, 8, 2


def _config(**changes) -> TransformerConfig:
    """A tiny MiniMax-M2-shaped MoE config (query width 64 != hidden 48, GQA 4/2)."""
    base = dict(
        num_layers=2,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_query_groups=GROUPS,
        kv_channels=HEAD_DIM,
        ffn_hidden_size=24,
        moe_ffn_hidden_size=24,
        num_moe_experts=4,
        moe_router_topk=2,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0,
        normalization="RMSNorm",
        layernorm_epsilon=1e-6,
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_dropout_fusion=False,
        init_method_std=0.3,
        use_cpu_initialization=True,
    )
    return TransformerConfig(**{**base, **changes})


LAYER_SCOPE = dict(
    qk_layernorm_scope="layer", moe_router_dtype="fp32", moe_router_keep_in_fp32=True
)


def _router_of(layer_spec):
    mlp = layer_spec.submodules.mlp
    assert isinstance(mlp, functools.partial)
    return mlp.keywords["submodules"].router


def _attention(layer_spec):
    return layer_spec.submodules.self_attention.submodules


def _same_partial(a, b) -> bool:
    """Specs built separately hold distinct (but equivalent) ``functools.partial`` builders."""
    return (
        isinstance(a, functools.partial)
        and isinstance(b, functools.partial)
        and a.func == b.func
        and a.args == b.args
        and a.keywords == b.keywords
    )


def _name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


class TestDecoderBlockSpec:
    def test_layer_scope_uses_full_dim_qk_norms(self):
        block = specs.get_gpt_decoder_block_spec(_config(**LAYER_SCOPE), False, pp_rank=0)
        assert len(block.layer_specs) == 2
        for layer_spec in block.layer_specs:
            assert _attention(layer_spec).q_layernorm is FullDimQRMSNorm
            assert _attention(layer_spec).k_layernorm is FullDimKRMSNorm

    def test_keep_in_fp32_uses_fp32_router(self):
        block = specs.get_gpt_decoder_block_spec(_config(**LAYER_SCOPE), False, pp_rank=0)
        for layer_spec in block.layer_specs:
            assert _router_of(layer_spec) is FP32TopKRouter

    @pytest.mark.parametrize("router_dtype", [None, "fp32", "fp64"])
    def test_without_keep_in_fp32_the_router_is_stock(self, router_dtype):
        # moe_router_dtype alone only sets the gating GEMM's output dtype, as upstream.
        config = _config(qk_layernorm_scope="layer", moe_router_dtype=router_dtype)
        block = specs.get_gpt_decoder_block_spec(config, False, pp_rank=0)
        for layer_spec in block.layer_specs:
            assert _router_of(layer_spec) is TopKRouter
            assert _attention(layer_spec).q_layernorm is FullDimQRMSNorm

    def test_local_norms_are_our_rmsnorm(self):
        block = specs.get_gpt_decoder_block_spec(_config(**LAYER_SCOPE), False, pp_rank=0)
        assert block.layer_norm is RMSNorm
        for layer_spec in block.layer_specs:
            assert layer_spec.submodules.input_layernorm is RMSNorm
            assert layer_spec.submodules.pre_mlp_layernorm is RMSNorm

    def test_untouched_submodules_equal_upstream(self):
        config = _config(**LAYER_SCOPE)
        ours = specs.get_gpt_decoder_block_spec(config, False, pp_rank=0).layer_specs[0]
        upstream = mcore_specs.get_gpt_decoder_block_spec(
            config, use_transformer_engine=False, normalization="RMSNorm", pp_rank=0
        ).layer_specs[0]
        assert ours.module is upstream.module
        for field in ("linear_qkv", "core_attention", "linear_proj"):
            assert getattr(_attention(ours), field) is getattr(_attention(upstream), field)
        ours_moe = ours.submodules.mlp.keywords["submodules"]
        upstream_moe = upstream.submodules.mlp.keywords["submodules"]
        assert ours.submodules.mlp.func is upstream.submodules.mlp.func
        assert _same_partial(ours_moe.experts, upstream_moe.experts)
        assert _same_partial(ours_moe.shared_experts, upstream_moe.shared_experts)
        assert not _same_partial(ours.submodules.mlp, upstream.submodules.mlp)  # the router
        # ... and upstream's own spec was not mutated by the customisation.
        assert upstream_moe.router is TopKRouter
        assert _attention(upstream).q_layernorm is not FullDimQRMSNorm

    def test_head_scope_without_fp32_router_keeps_upstream_qk_norms(self):
        config = _config()
        ours = specs.get_gpt_decoder_block_spec(config, False, pp_rank=0)
        upstream = mcore_specs.get_gpt_decoder_block_spec(
            config, use_transformer_engine=False, normalization="RMSNorm", pp_rank=0
        )
        for mine, theirs in zip(ours.layer_specs, upstream.layer_specs):
            assert _attention(mine).q_layernorm is _attention(theirs).q_layernorm
            assert _attention(mine).k_layernorm is _attention(theirs).k_layernorm
            assert _attention(mine).q_layernorm is not FullDimQRMSNorm
            assert _router_of(mine) is _router_of(theirs) is TopKRouter

    def test_dense_layers_get_layer_scope_norms_and_keep_dense_mlp(self):
        config = _config(num_layers=2, moe_layer_freq=[1, 0], **LAYER_SCOPE)
        block = specs.get_gpt_decoder_block_spec(config, False, pp_rank=0)
        upstream = mcore_specs.get_gpt_decoder_block_spec(
            config, use_transformer_engine=False, normalization="RMSNorm", pp_rank=0
        )
        moe_layer, dense_layer = block.layer_specs
        assert _router_of(moe_layer) is FP32TopKRouter
        assert _same_partial(dense_layer.submodules.mlp, upstream.layer_specs[1].submodules.mlp)
        assert _attention(dense_layer).q_layernorm is FullDimQRMSNorm
        assert _attention(dense_layer).k_layernorm is FullDimKRMSNorm


def _tokens():
    gen = torch.Generator().manual_seed(11)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    positions = torch.arange(SEQ).unsqueeze(0).expand(BATCH, SEQ)
    return tokens, positions


def _build(config, block_spec, mtp_block_spec=None):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    torch.manual_seed(1234)
    model_parallel_cuda_manual_seed(1234)
    return GPTModel(
        config=config,
        transformer_layer_spec=block_spec,
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        position_embedding_type="rope",
        rotary_percent=0.5,
        mtp_block_spec=mtp_block_spec,
    )


def _mtp_spec_results(out):
    config = _config(mtp_num_layers=1, **LAYER_SCOPE)
    block = specs.get_gpt_decoder_block_spec(config, False)
    mtp = specs.get_gpt_mtp_block_spec(config, block, False)
    (mtp_layer,) = mtp.layer_specs
    transformer_layer = mtp_layer.submodules.mtp_model_layer
    out["mtp_spec"] = {
        "num_layers": len(mtp.layer_specs),
        "q_layernorm": _name(_attention(transformer_layer).q_layernorm),
        "k_layernorm": _name(_attention(transformer_layer).k_layernorm),
        "router": _name(_router_of(transformer_layer)),
        "input_layernorm": _name(transformer_layer.submodules.input_layernorm),
        "enorm": _name(mtp_layer.submodules.enorm),
        "hnorm": _name(mtp_layer.submodules.hnorm),
        "layer_norm": _name(mtp_layer.submodules.layer_norm),
    }
    no_mtp = _config(**LAYER_SCOPE)
    out["mtp_spec_without_mtp_layers"] = specs.get_gpt_mtp_block_spec(
        no_mtp, specs.get_gpt_decoder_block_spec(no_mtp, False), False
    )

    head = _config(mtp_num_layers=1)
    head_block = specs.get_gpt_decoder_block_spec(head, False)
    (head_mtp_layer,) = specs.get_gpt_mtp_block_spec(head, head_block, False).layer_specs
    upstream_block = mcore_specs.get_gpt_decoder_block_spec(
        head, use_transformer_engine=False, normalization="RMSNorm"
    )
    upstream_mtp = mcore_specs.get_gpt_mtp_block_spec(head, upstream_block, False)
    (upstream_mtp_layer,) = upstream_mtp.layer_specs
    ours_attn = _attention(head_mtp_layer.submodules.mtp_model_layer)
    theirs_attn = _attention(upstream_mtp_layer.submodules.mtp_model_layer)
    out["head_mtp_qk_equal_upstream"] = (
        ours_attn.q_layernorm is theirs_attn.q_layernorm
        and ours_attn.k_layernorm is theirs_attn.k_layernorm
    )


def _head_scope_logits(out):
    config = _config()
    ours = _build(config, specs.get_gpt_decoder_block_spec(config, False))
    upstream = _build(
        config,
        mcore_specs.get_gpt_decoder_block_spec(
            config, use_transformer_engine=False, normalization="RMSNorm"
        ),
    )
    ours_state = {k: v for k, v in ours.state_dict().items() if not k.endswith("_extra_state")}
    upstream_state = {
        k: v for k, v in upstream.state_dict().items() if not k.endswith("_extra_state")
    }
    out["same_state_names"] = sorted(ours_state) == sorted(upstream_state)
    out["same_initial_values"] = all(
        torch.equal(v, upstream_state[k]) for k, v in ours_state.items()
    )
    out["norm_types"] = {
        "ours": _name(type(ours.decoder.layers[0].input_layernorm)),
        "upstream": _name(type(upstream.decoder.layers[0].input_layernorm)),
    }
    # Non-trivial norm weights (init is all ones), identical in both models.
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if "layernorm" in name:
                param.copy_(torch.rand(param.shape, generator=gen) + 0.5)
    upstream.load_state_dict(ours.state_dict())

    tokens, positions = _tokens()
    ours.eval()
    upstream.eval()
    with torch.no_grad():
        out["head_logits"] = (ours(tokens, positions, None), upstream(tokens, positions, None))


def _layer_scope_model(out):
    config = _config(mtp_num_layers=1, **LAYER_SCOPE)
    block = specs.get_gpt_decoder_block_spec(config, False)
    model = _build(config, block, specs.get_gpt_mtp_block_spec(config, block, False))
    out["qk_norm_modules"] = {
        name: (_name(type(module)), tuple(module.weight.shape), module.projection)
        for name, module in model.named_modules()
        if name.endswith(("q_layernorm", "k_layernorm"))
    }
    out["router_modules"] = {
        name: _name(type(module))
        for name, module in model.named_modules()
        if name.endswith("mlp.router")
    }
    out["mtp_norm_modules"] = {
        name: _name(type(module))
        for name, module in model.named_modules()
        if name.startswith("mtp.layers.0.")
        and name.endswith(("enorm", "hnorm", "final_layernorm", "input_layernorm"))
    }


def _worker(rank, world_size):
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel()
    out = {}
    _mtp_spec_results(out)
    _head_scope_logits(out)
    _layer_scope_model(out)
    parallel_state.destroy_model_parallel()
    return out


@pytest.fixture(scope="module")
def results():
    (out,) = run_in_processes(_worker, 1)
    return out


class TestMtpBlockSpec:
    def test_mtp_transformer_layer_uses_decoder_qk_norms_and_router(self, results):
        spec = results["mtp_spec"]
        assert spec["num_layers"] == 1
        assert spec["q_layernorm"] == _name(FullDimQRMSNorm)
        assert spec["k_layernorm"] == _name(FullDimKRMSNorm)
        assert spec["router"] == _name(FP32TopKRouter)
        assert spec["input_layernorm"] == _name(RMSNorm)

    def test_mtp_norms_are_our_rmsnorm(self, results):
        spec = results["mtp_spec"]
        assert spec["enorm"] == spec["hnorm"] == spec["layer_norm"] == _name(RMSNorm)

    def test_no_mtp_layers_gives_no_spec(self, results):
        assert results["mtp_spec_without_mtp_layers"] is None

    def test_head_scope_mtp_qk_norms_equal_upstream(self, results):
        assert results["head_mtp_qk_equal_upstream"] is True


class TestBuiltModel:
    def test_head_scope_model_has_the_same_parameters_as_stock(self, results):
        assert results["same_state_names"] is True
        assert results["same_initial_values"] is True
        assert results["norm_types"] == {
            "ours": _name(RMSNorm),
            "upstream": _name(torch.nn.RMSNorm),
        }

    def test_head_scope_logits_are_bit_identical_to_stock_spec(self, results):
        ours, upstream = results["head_logits"]
        assert ours.shape == (BATCH, SEQ, VOCAB)
        assert ours.abs().max() > 1.0  # a real signal, not all zeros
        assert torch.equal(ours, upstream)

    def test_qk_norm_modules_are_full_dim_in_decoder_and_mtp(self, results):
        modules = results["qk_norm_modules"]
        norm = _name(FullDimQKRMSNorm)
        expected = {}
        for prefix in (
            "decoder.layers.0.self_attention",
            "decoder.layers.1.self_attention",
            "mtp.layers.0.mtp_model_layer.self_attention",
        ):
            expected[f"{prefix}.q_layernorm"] = (norm, (HEADS * HEAD_DIM,), "query")
            expected[f"{prefix}.k_layernorm"] = (norm, (GROUPS * HEAD_DIM,), "key")
        assert modules == expected

    def test_routers_are_fp32_in_decoder_and_mtp(self, results):
        assert results["router_modules"] == {
            "decoder.layers.0.mlp.router": _name(FP32TopKRouter),
            "decoder.layers.1.mlp.router": _name(FP32TopKRouter),
            "mtp.layers.0.mtp_model_layer.mlp.router": _name(FP32TopKRouter),
        }

    def test_mtp_norm_modules_are_our_rmsnorm(self, results):
        assert results["mtp_norm_modules"] == {
            "mtp.layers.0.enorm": _name(RMSNorm),
            "mtp.layers.0.hnorm": _name(RMSNorm),
            "mtp.layers.0.final_layernorm": _name(RMSNorm),
            "mtp.layers.0.mtp_model_layer.input_layernorm": _name(RMSNorm),
        }
