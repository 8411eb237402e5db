# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The quantized experts module: same function as megatron-core's SequentialMLP (routing weights
applied after w2 instead of before it), and its registration in modelopt.

That w2's input scale is the unweighted activation's, as serving quantises it, is checked against
modelopt's HF export in test_hf_export.py (the HF model weights w2's output).
"""

import torch

from megatron.minimax.testing.distributed import run_in_processes

LOGITS_ATOL = 1e-5  # fp32; only the place of one multiplication differs


def _worker(rank, world_size, hf_dir):
    import modelopt.torch.quantization as mtq
    from megatron.core.transformer.moe.experts import SequentialMLP
    from modelopt.torch.quantization.nn import QuantModuleRegistry

    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2 import parity
    from megatron.minimax.quantization.calibration import insert_quantizers
    from megatron.minimax.quantization.quant_experts import (
        QuantSequentialExperts,
        register_quant_experts,
    )
    from megatron.minimax.quantization.recipes import get_recipe

    checkpoint = HFCheckpoint(hf_dir)
    layout = parity.ParallelLayout(ep=2)
    parity.initialize_layout(layout)
    loaded = parity.build_from_hf(
        checkpoint.config, lambda n: checkpoint.get(n, torch.float32), layout
    )
    tokens = torch.randint(0, 1001, (2, 16), generator=torch.Generator().manual_seed(3))
    stock = parity.megatron_logits(loaded, tokens)
    insert_quantizers(loaded.model, get_recipe("nvfp4-experts"))
    mtq.disable_quantizer(loaded.model, "*")
    experts = loaded.model.decoder.layers[0].mlp.experts
    experts.reset_calibration_tokens()
    converted = parity.megatron_logits(loaded, tokens)
    register_quant_experts()  # idempotent
    return {
        "max_diff": (converted - stock).abs().max().item(),
        "is_quant_experts": isinstance(experts, QuantSequentialExperts),
        "registered": issubclass(QuantModuleRegistry.get(SequentialMLP), QuantSequentialExperts),
        "tokens": experts.calibration_tokens.sum().item(),
    }


def test_experts_compute_the_same_function_and_count_tokens(tiny_bf16_checkpoint):
    results = run_in_processes(_worker, 2, str(tiny_bf16_checkpoint))
    for result in results:
        assert result["is_quant_experts"] and result["registered"]
        assert result["max_diff"] <= LOGITS_ATOL
    # 2 x 16 tokens on each of 2 data-parallel ranks, top-2: 128 expert assignments in layer 0.
    assert sum(r["tokens"] for r in results) == 2 * 2 * 16 * 2
