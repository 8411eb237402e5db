# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""export_hf_weights on a live, sharded model reproduces the HF checkpoint it was loaded from.

One 4-process gloo launch builds the tiny model at TP2xEP2, PP2 (bf16 parameters) and PP2 with
two virtual stages, loads the tiny BF16 and FP8 checkpoints, and returns what every rank yields.
"""

import re

import pytest
import torch

from megatron.minimax.checkpoint.fp8_blockwise import dequantize_blockwise
from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
from megatron.minimax.models.minimax_m2.parity import ParallelLayout
from megatron.minimax.testing.distributed import run_in_processes

WORLD_SIZE = 4
TP2_EP2 = "TP2xEP2"
PP2_BF16 = "PP2-bf16"
PP2_VPP2 = "PP2xVPP2"
_ROUTER = re.compile(r".*\.block_sparse_moe\.(gate\.weight|e_score_correction_bias)\Z")


def _within_fp8_rounding(value: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> bool:
    """|value - target| is at most one e4m3 rounding of target (3 mantissa bits: half an ulp is
    2**-4 relative; the subnormal step is scale * 2**-9) plus a bf16 rounding (2**-9 relative)."""
    rows, cols = target.shape
    per_element = scale.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
    bound = target.abs() * (2.0**-4 + 2.0**-8) + per_element * 2.0**-9
    return bool(((value - target).abs() <= bound).all())


def _build(hf_config, read, layout, vpp, params_dtype):
    """This rank's model chunks at ``layout`` (``vpp`` virtual stages), filled from HF."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron.minimax.models.conversion.model_weights import load_hf_weights
    from megatron.minimax.models.minimax_m2.hf_config import (
        minimax_m2_config_from_hf,
        padded_vocab_size,
    )
    from megatron.minimax.models.minimax_m2.model import build_minimax_m2_model
    from megatron.minimax.models.minimax_m2.parity import build_from_hf, initialize_layout
    from megatron.minimax.models.minimax_m2.weight_mapping import (
        MINIMAX_M2_WEIGHTS,
        mapping_context,
    )

    if vpp is None:
        initialize_layout(layout)
        loaded = build_from_hf(hf_config, read, layout, params_dtype=params_dtype)
        return [loaded.model], loaded.config, loaded.model_args
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        pipeline_model_parallel_size=layout.pp, virtual_pipeline_model_parallel_size=vpp
    )
    model_parallel_cuda_manual_seed(1234)
    config, model_args = minimax_m2_config_from_hf(
        hf_config,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=vpp,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        use_cpu_initialization=True,
        transformer_impl="local",
    )
    ctx = mapping_context(config, model_args, padded_vocab_size(model_args.vocab_size))
    chunks = []
    for stage in range(vpp):
        chunk = build_minimax_m2_model(
            config, model_args, use_transformer_engine=False, vp_stage=stage
        )
        load_hf_weights(chunk, read, ctx, MINIMAX_M2_WEIGHTS)
        chunks.append(chunk)
    return chunks, config, model_args


def _export_worker(rank, world_size, bf16_dir, fp8_dir):
    from megatron.core import parallel_state

    from megatron.minimax.models.minimax_m2.export import export_hf_weights

    results = {}
    cases = [
        (TP2_EP2, ParallelLayout(tp=2, ep=2), None, torch.float32),
        (PP2_BF16, ParallelLayout(pp=2), None, torch.bfloat16),
        (PP2_VPP2, ParallelLayout(pp=2), 2, torch.float32),
    ]
    for label, layout, vpp, params_dtype in cases:
        out = {}
        for source, fmts in ((bf16_dir, ("bf16",)), (fp8_dir, ("bf16", "fp8"))):
            hf = HFCheckpoint(source)
            chunks, config, model_args = _build(
                hf.config, lambda n: hf.get(n, torch.float32), layout, vpp, params_dtype
            )
            for fmt in fmts:
                key = f"{'fp8' if source == fp8_dir else 'bf16'}-source/{fmt}"
                out[key] = list(export_hf_weights(chunks, config, model_args, fmt=fmt))
        out["pp_rank"] = parallel_state.get_pipeline_model_parallel_rank()
        results[label] = out
    return results


@pytest.fixture(scope="module")
def exported(tiny_bf16_checkpoint, tiny_fp8_checkpoint):
    return run_in_processes(
        _export_worker, WORLD_SIZE, str(tiny_bf16_checkpoint), str(tiny_fp8_checkpoint)
    )


def _by_stage(exported, label, key):
    """{pp_rank: [(name, tensor), ...]} checking that all ranks of a stage agree."""
    stages = {}
    for rank_result in exported:
        result = rank_result[label]
        items = result[key]
        stage = result["pp_rank"]
        if stage in stages:
            first = stages[stage]
            assert [n for n, _ in first] == [n for n, _ in items]
            for (name, a), (_, b) in zip(first, items):
                assert a.dtype == b.dtype and torch.equal(a, b), (label, key, name)
        else:
            stages[stage] = items
    return stages


def _merged(exported, label, key):
    """Every stage's tensors, asserting that no name is yielded twice across (or within) stages."""
    merged = {}
    for stage, items in sorted(_by_stage(exported, label, key).items()):
        for name, tensor in items:
            assert name not in merged, f"{label} {key}: {name} yielded twice (stage {stage})"
            merged[name] = tensor
    return merged


LABELS = [TP2_EP2, PP2_BF16, PP2_VPP2]


class TestExportHFWeights:
    @pytest.mark.parametrize("label", LABELS)
    def test_bf16_export_equals_bf16_checkpoint_bit_for_bit(
        self, exported, tiny_bf16_checkpoint, label
    ):
        merged = _merged(exported, label, "bf16-source/bf16")
        with HFCheckpoint(tiny_bf16_checkpoint) as hf:
            assert sorted(merged) == hf.tensor_names()
            for name in hf.tensor_names():
                expected = hf.get(name, None)
                got = merged[name]
                expected_dtype = torch.float32 if _ROUTER.match(name) else torch.bfloat16
                assert expected.dtype == got.dtype == expected_dtype, name
                assert torch.equal(got, expected), name

    @pytest.mark.parametrize("label", LABELS)
    def test_bf16_export_of_fp8_checkpoint_is_dequantised_once_to_bf16(
        self, exported, tiny_fp8_checkpoint, label
    ):
        merged = _merged(exported, label, "fp8-source/bf16")
        with HFCheckpoint(tiny_fp8_checkpoint) as hf:
            assert sorted(merged) == hf.tensor_names()
            for name in hf.tensor_names():
                raw, scale = hf.get_raw(name)
                if scale is not None:
                    expected = dequantize_blockwise(raw, scale).to(torch.bfloat16)
                elif _ROUTER.match(name):
                    expected = raw
                else:
                    expected = raw.to(torch.bfloat16)
                assert torch.equal(merged[name], expected), name
                assert merged[name].dtype == expected.dtype, name

    @pytest.mark.parametrize("label", LABELS)
    def test_fp8_export_reproduces_release_quantisation(self, exported, tiny_fp8_checkpoint, label):
        merged = _merged(exported, label, "fp8-source/fp8")
        with HFCheckpoint(tiny_fp8_checkpoint) as hf:
            names = set(hf.tensor_names())
            scales = {n + "_scale_inv" for n in names if hf.is_quantized(n)}
            assert set(merged) == names | scales
            quantized = 0
            for name in sorted(names):
                raw, scale = hf.get_raw(name)
                got = merged[name]
                assert got.dtype == raw.dtype, name
                if scale is None:
                    assert torch.equal(got, raw.to(got.dtype)), name
                    continue
                quantized += 1
                got_scale = merged[name + "_scale_inv"]
                assert got_scale.shape == scale.shape and got_scale.dtype == torch.float32
                if label == PP2_BF16:
                    # The bf16 model holds bf16(dequantised); re-quantising it stays within one
                    # FP8 rounding (plus the bf16 one) of the release's values.
                    ref = dequantize_blockwise(raw, scale)
                    new = dequantize_blockwise(got, got_scale)
                    assert _within_fp8_rounding(new, ref, got_scale), name
                else:
                    # An fp32 model holds the exact dequantised value, and block quantisation
                    # inverts dequantisation: the release's bytes and scales come back.
                    assert torch.equal(got.view(torch.uint8), raw.view(torch.uint8)), name
                    assert torch.equal(got_scale, scale), name
            assert quantized == 4 * (4 + 8 * 3)

    def test_stages_split_the_model(self, exported):
        for label in (PP2_BF16, PP2_VPP2):
            stages = _by_stage(exported, label, "bf16-source/bf16")
            assert sorted(stages) == [0, 1]
            first = {n for n, _ in stages[0]}
            last = {n for n, _ in stages[1]}
            assert "model.embed_tokens.weight" in first and "lm_head.weight" in last
            assert "model.norm.weight" in last
            layers = lambda names: {
                int(n.split(".")[2]) for n in names if n.startswith("model.layers.")
            }
            if label == PP2_VPP2:
                # Interleaved: stage 0 holds virtual chunks with layers 0 and 2.
                assert layers(first) == {0, 2} and layers(last) == {1, 3}
            else:
                assert layers(first) == {0, 1} and layers(last) == {2, 3}

    def test_unknown_format_is_refused(self):
        from megatron.minimax.models.minimax_m2.export import export_hf_weights

        with pytest.raises(ValueError, match="fmt"):
            next(export_hf_weights([], None, None, fmt="int4"))
