# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""How the releases store each tensor, as the MiniMax-M2 weight table records it."""

import json
from pathlib import Path

import pytest
import torch

from megatron.minimax.models.minimax_m2.weight_mapping import (
    MINIMAX_M2_WEIGHTS,
    RELEASE_QUANTIZATION_CONFIG,
    release_dtype,
    release_fp8_tensor,
)

REPO = Path(__file__).resolve().parents[4]
RELEASED_CONFIG = REPO / "examples" / "minimax_m2" / "configs" / "minimax_m2.5_config.json"

LAYERS, EXPERTS = 3, 4


def _hf_names():
    return [
        name
        for mapping, fields in MINIMAX_M2_WEIGHTS.expand(LAYERS, EXPERTS)
        for name in mapping.hf_names(**fields)
    ]


def _linear_weight(name: str) -> bool:
    """Weights of the modules that are ``nn.Linear`` in MiniMax's modeling code (q/k/v/o
    projections, expert w1/w2/w3, the router gate, lm_head), written out independently of the
    table."""
    leaf = name.rsplit(".", 2)[-2]
    return leaf in {"q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3", "gate", "lm_head"}


class TestReleaseFormat:
    def test_quantization_config_is_the_released_one(self):
        released = json.loads(RELEASED_CONFIG.read_text())["quantization_config"]
        assert RELEASE_QUANTIZATION_CONFIG == released

    def test_fp8_tensors_are_the_linear_weights_not_excluded_by_the_release(self):
        # The FP8 release quantises every linear layer except modules_to_not_convert.
        excluded = set(RELEASE_QUANTIZATION_CONFIG["modules_to_not_convert"])
        expected = {
            n for n in _hf_names() if _linear_weight(n) and n.rsplit(".", 2)[-2] not in excluded
        }
        got = {n for n in _hf_names() if release_fp8_tensor(n)}
        assert got == expected
        # q, k, v, o per layer + 3 matrices per expert.
        assert len(got) == LAYERS * (4 + 3 * EXPERTS)

    @pytest.mark.parametrize("fp8_release", [False, True])
    def test_stored_dtypes(self, fp8_release):
        for name in _hf_names():
            router = name.endswith(("block_sparse_moe.gate.weight", "e_score_correction_bias"))
            if router:
                expected = torch.float32
            elif fp8_release and release_fp8_tensor(name):
                expected = torch.float8_e4m3fn
            else:
                expected = torch.bfloat16
            assert release_dtype(name, fp8_release) == expected, name

    def test_names_outside_the_table(self):
        assert not release_fp8_tensor("model.layers.0.self_attn.q_proj.weight_scale_inv")
        with pytest.raises(KeyError):
            release_dtype("model.layers.0.mtp.weight", True)
