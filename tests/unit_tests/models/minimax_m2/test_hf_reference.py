# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The layer-by-layer HF reference: the whole model's logits bit for bit, in memory that does not
grow with the depth."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron.minimax.models.minimax_m2.hf_reference import (
    hf_logits,
    load_hf_reference_model,
    streamed_hf_logits,
)
from megatron.minimax.testing.release_shaped_checkpoint import write_release_shaped_checkpoint
from megatron.minimax.testing.tiny_checkpoint import build_tiny_checkpoint

REPO = Path(__file__).resolve().parents[4]
BENCH = REPO / "tools" / "bench" / "bench_reference.py"
INDEX = "model.safetensors.index.json"

# Layer shapes of the memory check: one decoder layer is 61 MiB in fp32, far above the noise of
# a process's peak resident set (a few MiB between runs), and quick to write and read.
SHAPES = dict(
    hidden_size=1024, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=2,
    head_dim=128, rotary_dim=64, num_experts_per_tok=2, vocab_size=1024,
)  # fmt: skip
EXPERTS = 4
LAYER_FP32_BYTES = 4 * (1024 * (1024 + 2 * 256) + 1024 * 1024 + EXPERTS * 3 * 1024 * 1024)


def _tokens(vocab_size, seq_length=13):
    return torch.randint(0, vocab_size, (2, seq_length), generator=torch.Generator().manual_seed(4))


class TestStreamedLogits:
    @pytest.mark.parametrize(
        "checkpoint, round_to",
        [("tiny_bf16_checkpoint", None), ("tiny_fp8_checkpoint", None),
         ("tiny_fp8_checkpoint", torch.bfloat16)],
    )  # fmt: skip
    def test_bit_identical_to_the_whole_model(self, request, checkpoint, round_to):
        hf_dir = request.getfixturevalue(checkpoint)
        model = load_hf_reference_model(hf_dir, round_to=round_to)
        tokens = _tokens(model.config.vocab_size)
        expected = hf_logits(model, tokens)
        got = streamed_hf_logits(hf_dir, tokens, round_to=round_to)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.equal(got, expected)
        if round_to is not None:
            # The rounding is really applied (a reference on unrounded weights differs).
            assert not torch.equal(got, streamed_hf_logits(hf_dir, tokens))


def _whole_model(hf_dir):
    return hf_logits(load_hf_reference_model(hf_dir), _tokens(1001))


def _streamed(hf_dir):
    return streamed_hf_logits(hf_dir, _tokens(1001))


@pytest.mark.parametrize("reference", [_whole_model, _streamed], ids=["whole", "streamed"])
class TestCheckpointMismatch:
    def test_missing_expert_is_an_error(self, tmp_path, reference):
        d = build_tiny_checkpoint(tmp_path / "d")
        index = json.loads((d / INDEX).read_text())
        del index["weight_map"]["model.layers.2.block_sparse_moe.experts.5.w3.weight"]
        (d / INDEX).write_text(json.dumps(index))
        with pytest.raises(RuntimeError, match=r"layer 2 w3: experts \[5\] missing, \[\] unex"):
            reference(d)

    def test_unused_tensor_is_an_error(self, tmp_path, reference):
        # An MTP-like tensor the model has no slot for (the release never ships one).
        d = build_tiny_checkpoint(tmp_path / "d")
        index = json.loads((d / INDEX).read_text())
        shard = d / index["weight_map"]["lm_head.weight"]
        tensors = load_file(shard)
        tensors["model.layers.4.eh_proj.weight"] = torch.zeros(64, 128, dtype=torch.bfloat16)
        save_file(tensors, shard, metadata={"format": "pt"})
        index["weight_map"]["model.layers.4.eh_proj.weight"] = shard.name
        (d / INDEX).write_text(json.dumps(index))
        with pytest.raises(RuntimeError, match=r"unused \['model.layers.4.eh_proj.weight'\]"):
            reference(d)

    def test_missing_tensor_is_an_error(self, tmp_path, reference):
        d = build_tiny_checkpoint(tmp_path / "d")
        index = json.loads((d / INDEX).read_text())
        del index["weight_map"]["model.layers.1.self_attn.k_norm.weight"]
        (d / INDEX).write_text(json.dumps(index))
        # The whole model names the state-dict key, the streamed reference the layer and key.
        expected = {
            "_whole_model": r"missing \['model\.layers\.1\.self_attn\.k_norm",
            "_streamed": r"layer 1 does not match .*Missing key.*\"self_attn\.k_norm\.weight\"",
        }[reference.__name__]
        with pytest.raises(RuntimeError, match=expected):
            reference(d)


def _peak_rss(hf_dir: Path) -> dict:
    """tools/bench/bench_reference.py's measurement, in a fresh process."""
    proc = subprocess.run(
        [sys.executable, str(BENCH), "_reference", str(hf_dir), "streamed", "16"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_depth(tmp_path):
    shallow, deep = 2, 8
    for layers in (shallow, deep):
        write_release_shaped_checkpoint(tmp_path / f"hf_{layers}", layers, EXPERTS, **SHAPES)
    small, large = (_peak_rss(tmp_path / f"hf_{layers}") for layers in (shallow, deep))
    growth = large["peak_rss"] - small["peak_rss"]
    # Holding the 6 extra layers would add 6 x 61 MiB; the bound is half of one layer.
    assert growth < LAYER_FP32_BYTES / 2, (small, large)
    # The reference did hold one layer at a time: its peak is above the imports by at least that.
    assert small["peak_rss"] - small["rss_after_imports"] > LAYER_FP32_BYTES
