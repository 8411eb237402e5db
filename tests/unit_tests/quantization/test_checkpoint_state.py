# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Quantizer state through a torch_dist checkpoint: saved at TP2xEP2 (ETP1; modelopt itself
refuses that layout), loaded at EP2, TP2xETP1 and TP1 (four gloo processes), bit-exact; detection
of quantized and plain checkpoints."""

import os

import pytest
import torch

from megatron.minimax.testing.distributed import run_in_processes


def _amax_by_expert(model):
    """{(layer, global expert, linear, quantizer): amax} of this rank's experts."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    out = {}
    for layer in model.decoder.layers:
        for local, expert in enumerate(layer.mlp.experts.local_experts):
            for linear in ("linear_fc1", "linear_fc2"):
                for kind in ("weight_quantizer", "input_quantizer"):
                    q = getattr(getattr(expert, linear), kind)
                    assert isinstance(q, TensorQuantizer)
                    key = (
                        layer.layer_number - 1,
                        layer.mlp.local_expert_indices[local],
                        linear,
                        kind,
                    )
                    out[key] = q.amax.detach().clone()
    return out


def _worker(rank, world_size, hf_dir, directory):
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2 import parity
    from megatron.minimax.quantization.calibration import forward_only, quantize_and_calibrate
    from megatron.minimax.quantization.checkpoint_state import (
        MODELOPT_STATE_DIR,
        has_quantizer_state,
        load_quantized_model,
        save_quantized_model,
    )
    from megatron.minimax.quantization.recipes import get_recipe

    checkpoint = HFCheckpoint(hf_dir)
    recipe = get_recipe("nvfp4-experts")
    tokens = torch.randint(0, 1001, (2, 16), generator=torch.Generator().manual_seed(rank))
    layout = parity.ParallelLayout(tp=2, ep=2, etp=1)
    parity.initialize_layout(layout)
    saved = parity.build_from_hf(
        checkpoint.config, lambda n: checkpoint.get(n, torch.float32), layout
    )
    quantize_and_calibrate(saved.model, recipe, lambda: forward_only([saved.model], [tokens]))
    torch.distributed.barrier()
    save_quantized_model(saved.model, directory)
    out = {"saved": _amax_by_expert(saved.model)}
    out["detected"] = has_quantizer_state(directory)
    out["modelopt_state"] = os.path.isdir(os.path.join(directory, MODELOPT_STATE_DIR))
    for name, target in (
        ("EP2", parity.ParallelLayout(ep=2)),
        ("TP2xETP1", parity.ParallelLayout(tp=2, etp=1)),
        ("TP1", parity.ParallelLayout()),
    ):
        parity.initialize_layout(target)
        loaded = parity.build_from_hf(checkpoint.config, None, target)
        load_quantized_model(loaded.model, recipe, directory)
        out[name] = _amax_by_expert(loaded.model)
        moe = loaded.model.decoder.layers[1].mlp
        out[name + "_weight"] = moe.experts.local_experts[3].linear_fc2.weight.detach().clone()
        expert = moe.local_expert_indices[3]
        out[name + "_reference_weight"] = checkpoint.get(
            f"model.layers.1.block_sparse_moe.experts.{expert}.w2.weight"
        )
    return out


@pytest.fixture(scope="module")
def restored(tiny_bf16_checkpoint, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("quantized_ckpt") / "torch_dist")
    return run_in_processes(_worker, 4, str(tiny_bf16_checkpoint), directory)


def test_checkpoint_is_detected_as_quantized_with_modelopts_record(restored):
    assert all(rank["detected"] and rank["modelopt_state"] for rank in restored)


def test_plain_checkpoint_is_not_detected_as_quantized(converted_fp8_checkpoint):
    from megatron.minimax.models.minimax_m2.parity import resolve_dist_checkpoint_dir
    from megatron.minimax.quantization.checkpoint_state import has_quantizer_state

    assert not has_quantizer_state(resolve_dist_checkpoint_dir(converted_fp8_checkpoint))


@pytest.mark.parametrize("layout", ["EP2", "TP2xETP1", "TP1"])
def test_amax_reshards_bit_exact(restored, layout):
    saved = {k: v for rank in restored for k, v in rank["saved"].items()}
    assert len(saved) == 4 * 8 * 2 * 2  # layers x experts x linears x quantizers
    # Experts 4..7 live at EP rank 1, whose dense TP rank is 1 on both of their holders: the
    # case with no main replica under modelopt's replica ids.
    experts_at_tp_rank_1 = {key[1] for key in restored[1]["saved"]}
    assert experts_at_tp_rank_1 == {4, 5, 6, 7}
    for rank in restored:
        loaded = rank[layout]
        # EP1 layouts hold all 8 experts on every rank, EP2 half of them
        assert len(loaded) == len(saved) // (2 if layout == "EP2" else 1)
        for key, amax in loaded.items():
            assert amax.dtype == saved[key].dtype and torch.equal(amax, saved[key]), key
        assert torch.equal(rank[layout + "_weight"], rank[layout + "_reference_weight"])
