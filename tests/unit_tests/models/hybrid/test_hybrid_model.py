# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""MiniMax-M2 as a ``HybridModel`` (pattern ``*E`` per layer) against transformers and GPTModel.

One 4-process gloo launch builds the hybrid model at every layout: logits and loss against
transformers' ``MiniMaxM2ForCausalLM`` (fp32, same weights), logits bit-identical to the GPTModel
at the same layout, gradients (after DDP and ``finalize_model_grads``) against HF's, and the
``hf-to-mcore`` checkpoint (GPT layout) loaded through megatron-core's load-time translation;
``export_hf_weights`` of the live hybrid model equals the GPTModel's, name for name, bit for bit.
"""

import pytest
import torch

from megatron.minimax.models.minimax_m2.hf_reference import (
    hf_gradients,
    hf_logits,
    load_hf_reference_model,
)
from megatron.minimax.models.minimax_m2.parity import (
    GRAD_RTOL,
    LOGITS_ATOL,
    LOSS_ATOL,
    ParallelLayout,
    compare_gradients,
    compare_logits,
)
from megatron.minimax.testing.distributed import run_in_processes

WORLD_SIZE = 4
LOGITS_LAYOUTS = [
    ParallelLayout(),
    ParallelLayout(tp=2),
    ParallelLayout(ep=2),
    ParallelLayout(pp=2),
    ParallelLayout(tp=2, ep=2, etp=1),
]
GPT_IDENTITY_LAYOUTS = [ParallelLayout(), ParallelLayout(tp=2, ep=2, etp=1)]
GRADIENT_LAYOUTS = [
    ParallelLayout(),  # DP4
    ParallelLayout(tp=2, sequence_parallel=True),  # DP2
    ParallelLayout(pp=2),  # DP2, 2 micro-batches per rank through 1F1B
]
CHECKPOINT_LAYOUTS = [ParallelLayout(tp=2, ep=2, etp=1), ParallelLayout(pp=2)]


BATCH, SEQ_LENGTH = 4, 13  # one sequence per data-parallel rank at DP4; 13 is prime (SP pads)


def _tokens(vocab_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, vocab_size, (BATCH, SEQ_LENGTH), generator=generator)


def _export(loaded):
    """export_hf_weights of a live model in both formats: {fmt: {name: tensor}}."""
    from megatron.minimax.models.minimax_m2.export import export_hf_weights

    return {
        fmt: {
            name: tensor.clone()
            for name, tensor in export_hf_weights(
                loaded.model, loaded.config, loaded.model_args, fmt=fmt
            )
        }
        for fmt in ("bf16", "fp8")
    }


def _worker(rank, world_size, hf_dir, converted_dir):
    from megatron.core import parallel_state

    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2 import parity

    ckpt = HFCheckpoint(hf_dir)
    hf_config = ckpt.config

    def read(name):
        return ckpt.get(name, torch.float32)

    tokens = _tokens(hf_config["vocab_size"])
    out = {
        "logits": {},
        "gpt_logits": {},
        "export": {},
        "grads": {},
        "checkpoint": {},
        "classes": None,
    }
    for layout in LOGITS_LAYOUTS:
        parity.initialize_layout(layout)
        loaded = parity.build_from_hf(hf_config, read, layout, model="hybrid")
        if out["classes"] is None:
            from megatron.minimax.native_core import megatron_core_is_native

            out["classes"] = sorted({type(m).__name__ for m in loaded.model.modules()})
            out["pattern"] = loaded.hybrid_layer_pattern
            out["stack_module"] = type(loaded.model.decoder).__module__
            out["native"] = megatron_core_is_native()
        logits = parity.megatron_logits(loaded, tokens)
        out["logits"][str(layout)] = logits if rank == 0 else None
        if layout in GPT_IDENTITY_LAYOUTS:
            hybrid_export = _export(loaded)
            parity.initialize_layout(layout)
            gpt_loaded = parity.build_from_hf(hf_config, read, layout)
            gpt = parity.megatron_logits(gpt_loaded, tokens)
            out["gpt_logits"][str(layout)] = gpt if rank == 0 else None
            gpt_export = _export(gpt_loaded)  # collective: every rank exports
            out["export"][str(layout)] = (hybrid_export, gpt_export) if rank == 0 else None
    for layout in GRADIENT_LAYOUTS:
        parity.initialize_layout(layout)
        loss, grads = parity.megatron_gradients(
            parity.build_from_hf(hf_config, read, layout, model="hybrid"), tokens
        )
        # One rank per pipeline stage reports its stage's gradients (the same on its TP/DP peers).
        reports = (
            parallel_state.get_data_parallel_rank() == 0
            and parallel_state.get_tensor_model_parallel_rank() == 0
        )
        out["grads"][str(layout)] = (loss, grads if reports else {})
    for layout in CHECKPOINT_LAYOUTS:
        loaded, rounding = parity.build_for_comparison(
            hf_config, read, layout, load_dir=converted_dir, model="hybrid"
        )
        logits = parity.megatron_logits(loaded, tokens)
        out["checkpoint"][str(layout)] = (logits, rounding) if rank == 0 else None
    return out


@pytest.fixture(scope="module")
def results(tiny_fp8_checkpoint, converted_fp8_checkpoint):
    ranks = run_in_processes(_worker, WORLD_SIZE, tiny_fp8_checkpoint, converted_fp8_checkpoint)
    out = ranks[0]
    for layout in GRADIENT_LAYOUTS:
        grads = {}
        for rank_out in ranks:
            stage = rank_out["grads"][str(layout)][1]
            overlap = set(grads) & set(stage)
            assert not overlap, f"{layout}: two stages report {sorted(overlap)[:3]}"
            grads.update(stage)
        losses = [rank_out["grads"][str(layout)][0] for rank_out in ranks]
        out["grads"][str(layout)] = (losses, grads)
    return out


@pytest.fixture(scope="module")
def hf_model(tiny_fp8_checkpoint):
    return load_hf_reference_model(tiny_fp8_checkpoint)


@pytest.fixture(scope="module")
def tokens(hf_model):
    return _tokens(hf_model.config.vocab_size)


def test_model_is_a_hybrid_stack_of_attention_and_moe_layers(results):
    assert results["pattern"] == "*E*E*E*E"  # 4 tiny decoder layers
    classes = set(results["classes"])
    assert {"HybridModel", "HybridStack", "MoETransformerLayer", "TransformerLayer"} <= classes
    assert {"FullDimQKRMSNorm", "RMSNorm"} <= classes
    assert "TENorm" not in classes and "TransformerBlock" not in classes
    # The final norm from the spec: megatron-core's own HybridStack where the native series
    # made it so, else this package's subclass.
    package = "megatron.core" if results["native"] else "megatron.minimax"
    assert results["stack_module"] == f"{package}.models.hybrid.hybrid_block"


@pytest.mark.parametrize("layout", LOGITS_LAYOUTS, ids=str)
def test_logits_and_loss_match_hf(results, hf_model, tokens, layout):
    result = compare_logits(results["logits"][str(layout)], hf_logits(hf_model, tokens), tokens)
    assert result.max_abs_diff <= LOGITS_ATOL, result
    assert result.loss_diff <= LOSS_ATOL, result


@pytest.mark.parametrize("layout", GPT_IDENTITY_LAYOUTS, ids=str)
def test_logits_are_bit_identical_to_gpt_model(results, layout):
    hybrid, gpt = results["logits"][str(layout)], results["gpt_logits"][str(layout)]
    assert gpt.abs().max() > 1.0
    assert torch.equal(hybrid, gpt)


@pytest.mark.parametrize("layout", GPT_IDENTITY_LAYOUTS, ids=str)
@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_export_hf_weights_equals_the_gpt_model_export(results, layout, fmt):
    hybrid, gpt = (export[fmt] for export in results["export"][str(layout)])
    assert len(gpt) > 100 and list(hybrid) == list(gpt)  # same names, same order
    assert all(torch.equal(hybrid[name], gpt[name]) for name in gpt)
    assert hybrid["model.layers.0.block_sparse_moe.gate.weight"].dtype == torch.float32


@pytest.mark.parametrize("layout", GRADIENT_LAYOUTS, ids=str)
def test_every_gradient_matches_hf(results, hf_model, tokens, layout):
    losses, grads = results["grads"][str(layout)]
    ref_loss, ref_grads = hf_gradients(hf_model, tokens)
    assert all(abs(loss - ref_loss) <= LOSS_ATOL for loss in losses)
    # Names must match exactly: every HF parameter, from every pipeline stage, exactly once.
    errors = compare_gradients(grads, ref_grads)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRAD_RTOL, (worst, errors[worst])
    assert any(".q_norm." in n for n in errors) and any(".gate.weight" in n for n in errors)


@pytest.mark.parametrize("layout", CHECKPOINT_LAYOUTS, ids=str)
def test_gpt_layout_checkpoint_loads_into_the_hybrid_model(
    results, tiny_fp8_checkpoint, tokens, layout
):
    logits, rounding = results["checkpoint"][str(layout)]
    assert rounding == torch.bfloat16  # hf-to-mcore stored bf16
    reference = hf_logits(load_hf_reference_model(tiny_fp8_checkpoint, round_to=rounding), tokens)
    result = compare_logits(logits, reference, tokens)
    assert result.max_abs_diff <= LOGITS_ATOL, result
    assert result.loss_diff <= LOSS_ATOL, result
