# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""``moe_router_keep_in_fp32``: the router keeps its gate weight and routing buffers fp32 inside
a bf16 model.

On stock megatron-core the spec builds ``FP32TopKRouter``; on a megatron-core carrying the native
patch series, megatron-core's own ``TopKRouter`` does it. The same assertions hold on both paths
(``make test-native`` runs this module against the patched tree).

All cases need Megatron's parallel state, so they run in one single-process gloo launch shared by
the module; the tests assert on what it returns.
"""

import pytest
import torch
import torch.nn.functional as F

from megatron.minimax.testing.distributed import run_in_processes

HIDDEN, EXPERTS, VOCAB, SEQ, BATCH, LAYERS = 48, 8, 96, 8, 2, 2
SEED = 1234
ROUTER_TENSORS = ("weight", "expert_bias", "local_tokens_per_expert")
# Values a bf16 round trip changes: 1 + 2**-10 (bf16 keeps 8 significant bits), and 257.
NOT_BF16 = 1.0 + 2.0**-10
NOT_BF16_COUNT = 257.0


def _config(keep_in_fp32=True):
    from megatron.minimax.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        ffn_hidden_size=24,
        moe_ffn_hidden_size=24,
        num_moe_experts=EXPERTS,
        moe_router_topk=2,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0,
        moe_router_dtype="fp32" if keep_in_fp32 else None,
        moe_router_keep_in_fp32=keep_in_fp32,
        normalization="RMSNorm",
        layernorm_epsilon=1e-6,
        qk_layernorm=True,
        qk_layernorm_scope="layer",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_dropout_fusion=False,
        init_method_std=0.3,
        params_dtype=torch.bfloat16,
        pipeline_dtype=torch.bfloat16,
        bf16=True,
        use_cpu_initialization=True,
    )


def _fp32_router_class():
    """The router class that keeps fp32: ours on stock megatron-core, core's when native."""
    from megatron.core.transformer.moe.router import TopKRouter

    from megatron.minimax.native_core import megatron_core_is_native
    from megatron.minimax.transformer.moe.fp32_router import FP32TopKRouter

    return TopKRouter if megatron_core_is_native() else FP32TopKRouter


def _build(keep_in_fp32=True):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron.minimax.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    config = _config(keep_in_fp32)
    torch.manual_seed(SEED)
    model_parallel_cuda_manual_seed(SEED)
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_decoder_block_spec(config, False),
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        position_embedding_type="rope",
        rotary_percent=0.5,
    )
    return config, model


def _dtypes(module):
    out = {name: p.dtype for name, p in module.named_parameters()}
    out.update({name: b.dtype for name, b in module.named_buffers()})
    return out


def _router_state(router):
    return {name: getattr(router, name) for name in ROUTER_TENSORS}


def _float16_module_case(out):
    from megatron.core.transformer.module import Float16Module

    config, model = _build()
    router = model.decoder.layers[0].mlp.router
    with torch.no_grad():
        router.weight[0, 0] = NOT_BF16
        router.expert_bias.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(0))
        router.local_tokens_per_expert.fill_(NOT_BF16_COUNT)
    before_objects = _router_state(router)
    before_values = {k: v.detach().clone() for k, v in before_objects.items()}
    out["before_wrap"] = {
        "router_type": type(router).__name__,
        "dtypes": _dtypes(model),
        "unrepresentable_fraction": (
            (router.weight != router.weight.bfloat16().float()).float().mean().item()
        ),
    }

    wrapped = Float16Module(config, model)
    after = _router_state(wrapped.module.decoder.layers[0].mlp.router)
    out["after_wrap"] = {
        "dtypes": _dtypes(wrapped.module),
        "weight_is_same_parameter": after["weight"] is before_objects["weight"],
        "values_unchanged": {k: torch.equal(after[k], before_values[k]) for k in ROUTER_TENSORS},
        "weight_00": after["weight"][0, 0].item(),
    }

    casts = {
        "bfloat16": lambda m: m.bfloat16(),
        "half": lambda m: m.half(),
        "to_bfloat16": lambda m: m.to(torch.bfloat16),
    }
    out["casts"] = {}
    for name, cast in casts.items():
        result = cast(wrapped)
        router_now = wrapped.module.decoder.layers[0].mlp.router
        state = _router_state(router_now)
        out["casts"][name] = {
            "returns_module": result is wrapped,
            "dtypes": _dtypes(wrapped.module),
            "weight_is_same_parameter": state["weight"] is before_objects["weight"],
            "values_unchanged": {
                k: torch.equal(state[k], before_values[k]) for k in ROUTER_TENSORS
            },
        }


def _gradient_case(out):
    from megatron.core.transformer.module import Float16Module

    config, model = _build()
    wrapped = Float16Module(config, model)
    captured = {}

    def capture(layer, router):
        gating = router.gating

        def gating_and_capture(inp):
            logits = gating(inp)
            logits.retain_grad()
            captured[layer] = (inp.detach().clone(), logits)
            return logits

        router.gating = gating_and_capture

    for i, layer in enumerate(wrapped.module.decoder.layers):
        capture(i, layer.mlp.router)

    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    positions = torch.arange(SEQ).unsqueeze(0).expand(BATCH, SEQ)
    logits = wrapped(tokens, positions, None)
    F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).float(), tokens[:, 1:].reshape(-1)).backward()

    out["gradients"] = {}
    for i, layer in enumerate(wrapped.module.decoder.layers):
        inp, router_logits = captured[i]
        grad = layer.mlp.router.weight.grad
        reference = router_logits.grad.double().reshape(-1, EXPERTS).t() @ inp.double().reshape(
            -1, HIDDEN
        )
        out["gradients"][i] = {
            "input_dtype": inp.dtype,
            "logits_dtype": router_logits.dtype,
            "grad_dtype": grad.dtype,
            "reference_max": reference.abs().max().item(),
            "rel_error": ((grad.double() - reference).abs().max() / reference.abs().max()).item(),
        }

    # A later cast (e.g. re-wrapping) keeps the fp32 gradient too.
    router = wrapped.module.decoder.layers[0].mlp.router
    grad_before = router.weight.grad.clone()
    wrapped.bfloat16()
    out["grad_after_cast"] = {
        "dtype": router.weight.grad.dtype,
        "unchanged": torch.equal(router.weight.grad, grad_before),
    }


def _stock_router_case(out):
    from megatron.core.transformer.module import Float16Module
    from megatron.core.transformer.moe.moe_utils import get_default_pg_collection
    from megatron.core.transformer.moe.router import TopKRouter

    # Whole models: the fp32 router draws exactly what the stock router draws.
    _, fp32_model = _build(True)
    stock_config, stock_model = _build(False)
    fp32_state = dict(fp32_model.named_parameters())
    out["stock_model"] = {
        "router_type": type(stock_model.decoder.layers[0].mlp.router).__name__,
        "same_names": sorted(fp32_state) == sorted(dict(stock_model.named_parameters())),
        "router_weights_equal_after_bf16": all(
            torch.equal(p, fp32_state[n].to(torch.bfloat16))
            for n, p in stock_model.named_parameters()
            if n.endswith("router.weight")
        ),
        "router_dtypes": sorted(
            {str(p.dtype) for n, p in stock_model.named_parameters() if "router" in n}
        ),
        "other_params_equal": all(
            torch.equal(p, fp32_state[n])
            for n, p in stock_model.named_parameters()
            if "router" not in n
        ),
    }
    stock_wrapped = Float16Module(stock_config, stock_model)
    out["stock_model"]["wrapped_expert_bias_dtype"] = stock_wrapped.module.decoder.layers[
        0
    ].mlp.router.expert_bias.dtype

    # Bare routers under the same seed.
    torch.manual_seed(SEED)
    stock = TopKRouter(config=_config(False), pg_collection=get_default_pg_collection())
    torch.manual_seed(SEED)
    fp32 = _fp32_router_class()(config=_config(True), pg_collection=get_default_pg_collection())
    out["bare_routers"] = {
        "stock_dtype": stock.weight.dtype,
        "fp32_dtype": fp32.weight.dtype,
        "stock_equals_bf16_of_fp32": torch.equal(stock.weight, fp32.weight.to(torch.bfloat16)),
        "fp32_differs_from_its_bf16": not torch.equal(
            fp32.weight, fp32.weight.to(torch.bfloat16).float()
        ),
        "weight_std": fp32.weight.float().std().item(),
    }


def _worker(rank, world_size):
    from megatron.core import parallel_state

    from megatron.minimax.native_core import megatron_core_is_native

    parallel_state.initialize_model_parallel()
    out = {"native": megatron_core_is_native(), "fp32_router_type": _fp32_router_class().__name__}
    _float16_module_case(out)
    _gradient_case(out)
    _stock_router_case(out)
    parallel_state.destroy_model_parallel()
    return out


@pytest.fixture(scope="module")
def results():
    (out,) = run_in_processes(_worker, 1)
    return out


def _split(dtypes):
    """(router fp32 tensors, everything else) of a ``name -> dtype`` map."""
    router = {n: d for n, d in dtypes.items() if n.rsplit(".", 1)[0].endswith("mlp.router")}
    other = {n: d for n, d in dtypes.items() if n not in router}
    return router, other


def _expected_router_names():
    return {f"decoder.layers.{i}.mlp.router.{t}" for i in range(LAYERS) for t in ROUTER_TENSORS}


class TestFP32TopKRouterInBf16Model:
    def test_router_is_fp32_router_and_fp32_at_construction(self, results):
        before = results["before_wrap"]
        assert before["router_type"] == results["fp32_router_type"]
        assert before["router_type"] == ("TopKRouter" if results["native"] else "FP32TopKRouter")
        router, other = _split(before["dtypes"])
        assert set(router) == _expected_router_names()
        assert set(router.values()) == {torch.float32}
        assert other and set(other.values()) == {torch.bfloat16}

    def test_float16_module_keeps_router_fp32_and_casts_the_rest(self, results):
        router, other = _split(results["after_wrap"]["dtypes"])
        assert set(router) == _expected_router_names()
        assert set(router.values()) == {torch.float32}
        assert len(other) > 20 and set(other.values()) == {torch.bfloat16}

    def test_float16_module_keeps_router_parameter_and_values(self, results):
        after = results["after_wrap"]
        assert after["weight_is_same_parameter"] is True
        assert after["values_unchanged"] == {k: True for k in ROUTER_TENSORS}

    def test_gate_weight_is_not_rounded(self, results):
        # Almost every initial value is off the bf16 grid; all survive wrapping bit for bit.
        assert results["before_wrap"]["unrepresentable_fraction"] > 0.9
        assert results["after_wrap"]["weight_00"] == NOT_BF16
        assert torch.tensor(NOT_BF16).bfloat16().item() != NOT_BF16

    @pytest.mark.parametrize("cast", ["bfloat16", "half", "to_bfloat16"])
    def test_explicit_casts_leave_router_fp32(self, results, cast):
        case = results["casts"][cast]
        assert case["returns_module"] is True
        router, other = _split(case["dtypes"])
        assert set(router.values()) == {torch.float32}
        expected_other = torch.float16 if cast == "half" else torch.bfloat16
        assert set(other.values()) == {expected_other}
        assert case["weight_is_same_parameter"] is True
        assert case["values_unchanged"] == {k: True for k in ROUTER_TENSORS}


class TestFP32TopKRouterGradient:
    @pytest.mark.parametrize("layer", range(LAYERS))
    def test_gating_runs_in_fp32_on_bf16_input(self, results, layer):
        grads = results["gradients"][layer]
        assert grads["input_dtype"] == torch.bfloat16
        assert grads["logits_dtype"] == torch.float32

    @pytest.mark.parametrize("layer", range(LAYERS))
    def test_weight_gradient_is_fp32_and_matches_fp64_gemm(self, results, layer):
        grads = results["gradients"][layer]
        assert grads["grad_dtype"] == torch.float32
        assert grads["reference_max"] > 0.0
        assert grads["rel_error"] < 1e-6

    def test_cast_after_backward_keeps_fp32_gradient(self, results):
        assert results["grad_after_cast"] == {"dtype": torch.float32, "unchanged": True}


class TestFP32TopKRouterMatchesStockRouter:
    def test_stock_router_weight_is_bf16_of_fp32_router_weight(self, results):
        bare = results["bare_routers"]
        assert bare["stock_dtype"] == torch.bfloat16
        assert bare["fp32_dtype"] == torch.float32
        assert bare["weight_std"] > 0.1  # initialised (init_method_std=0.3), not zeros
        assert bare["stock_equals_bf16_of_fp32"] is True
        assert bare["fp32_differs_from_its_bf16"] is True

    def test_same_seed_models_differ_only_in_router_precision(self, results):
        stock = results["stock_model"]
        assert stock["router_type"] == "TopKRouter"
        assert stock["same_names"] is True
        assert stock["router_dtypes"] == ["torch.bfloat16"]
        assert stock["router_weights_equal_after_bf16"] is True
        # Same RNG draws: every later parameter is initialised identically.
        assert stock["other_params_equal"] is True

    def test_router_buffers_without_keep_in_fp32(self, results):
        # Stock megatron-core 0.19 casts the router's fp32 buffers with the model (the expert bias
        # is re-forced to fp32 only in forward); the native series keeps a router's fp32 buffers
        # fp32 whatever moe_router_keep_in_fp32 says.
        expected = torch.float32 if results["native"] else torch.bfloat16
        assert results["stock_model"]["wrapped_expert_bias_dtype"] == expected
