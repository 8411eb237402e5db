# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Input checks of the quantization pipeline (the pipeline itself: test_hf_export.py)."""

import pytest
import torch

from megatron.minimax.models.minimax_m2.parity import ParallelLayout
from megatron.minimax.quantization.ptq import (
    _data_parallel_share,
    check_calibration_tokens,
    check_quantizable,
    checkpoint_directory,
)
from megatron.minimax.quantization.recipes import get_recipe


def _check(recipe, hidden=64, ffn=48, width=128, tp=1, etp=1):
    check_quantizable(
        get_recipe(recipe),
        hidden_size=hidden,
        expert_ffn_hidden_size=ffn,
        attention_width=width,
        tp=tp,
        etp=etp,
    )


def test_nvfp4_needs_whole_groups_of_16_per_rank():
    _check("nvfp4-experts")
    _check("fp8", hidden=60, ffn=40)  # per-tensor FP8 has no groups
    with pytest.raises(
        ValueError, match="^hidden size .* 72 is not a multiple of the NVFP4 group size 16$"
    ):
        _check("nvfp4-experts", hidden=72)
    with pytest.raises(
        ValueError, match="expert FFN size .* 48 / 2 tensor-parallel ranks = 24 is not"
    ):
        _check("nvfp4-experts", etp=2)
    with pytest.raises(ValueError, match="o_proj"):
        _check("nvfp4", width=48, tp=2)
    _check("nvfp4-experts", width=48, tp=2)  # attention stays BF16 in nvfp4-experts


def test_calibration_tokens_are_required_and_fit_sequence_parallelism():
    with pytest.raises(ValueError, match="holds no trained quantizers: calibration data is needed"):
        check_calibration_tokens(None, ParallelLayout(), "ckpt")
    with pytest.raises(ValueError, match=r"sequence length \(31\) divisible by TP \(2\)"):
        check_calibration_tokens(torch.zeros(2, 31, dtype=torch.long), ParallelLayout(tp=2), "x")
    check_calibration_tokens(
        torch.zeros(2, 31, dtype=torch.long), ParallelLayout(tp=2, sequence_parallel=False), "x"
    )


def test_data_parallel_ranks_share_the_sequences():
    tokens = torch.arange(5).unsqueeze(1)
    shares = [_data_parallel_share(tokens, r, 2).flatten().tolist() for r in range(2)]
    assert shares == [[0, 1, 2], [3, 4, 0]]  # every sequence once; a repeat changes no maximum


def test_checkpoint_directory_refuses_what_is_not_torch_dist(tmp_path):
    with pytest.raises(ValueError, match="not a Megatron torch_dist checkpoint"):
        checkpoint_directory(tmp_path)
