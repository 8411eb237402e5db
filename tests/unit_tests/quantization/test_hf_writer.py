# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The quantized HF directory writer: files, configs, atomicity (one process)."""

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError
from megatron.minimax.quantization.hf_export import quantized_module_names
from megatron.minimax.quantization.hf_writer import write_quantized_checkpoint
from megatron.minimax.quantization.recipes import get_recipe

REFERENCE_CONFIG = {"architectures": ["MiniMaxM2ForCausalLM"], "torch_dtype": "float32",
                    "quantization_config": {"quant_method": "fp8"}}  # fmt: skip


def _stream():
    expert = "model.layers.0.block_sparse_moe.experts.0.w1"
    yield "model.embed_tokens.weight", torch.zeros(8, 32, dtype=torch.bfloat16)
    yield "model.layers.0.input_layernorm.weight", torch.ones(32, dtype=torch.bfloat16)
    yield "model.layers.0.block_sparse_moe.gate.weight", torch.zeros(2, 32)
    yield expert + ".weight", torch.zeros(16, 16, dtype=torch.uint8)
    yield expert + ".weight_scale", torch.ones(16, 2).to(torch.float8_e4m3fn)
    yield expert + ".weight_scale_2", torch.tensor(1.0)
    yield expert + ".input_scale", torch.tensor(2.0)


def _write(save_dir, stream, reference_dir=None, **kwargs):
    return write_quantized_checkpoint(
        stream, save_dir, REFERENCE_CONFIG, reference_dir, get_recipe("nvfp4-experts"),
        is_stage_writer=True, stage=0, **kwargs,
    )  # fmt: skip


def test_directory_holds_shards_index_and_modelopt_configs(tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "tokenizer.json").write_text("{}")
    (reference / "hf_quant_config.json").write_text("{}")  # a quantized reference's: replaced
    stats = _write(tmp_path / "out", _stream(), reference, max_shard_bytes=600)
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))]
    assert len(files) == stats.shards > 1
    tensors = {}
    for name in files:
        tensors.update(load_file(str(out / name)))
        mode = stat.S_IMODE(os.stat(out / name).st_mode)
        assert mode == 0o666 & ~_umask()
    assert sorted(tensors) == sorted(index["weight_map"]) and len(tensors) == stats.tensors == 7
    quant = json.loads((out / "hf_quant_config.json").read_text())
    assert quant["quantization"] == {
        "quant_algo": "NVFP4",
        "kv_cache_quant_algo": None,
        "group_size": 16,
        "exclude_modules": ["model.embed_tokens", "model.layers.0.block_sparse_moe.gate"],
    }
    assert quant["producer"]["name"] == "modelopt"
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert config["quantization_config"]["quant_method"] == "modelopt"
    assert config["quantization_config"]["ignore"] == quant["quantization"]["exclude_modules"]
    assert (out / "tokenizer.json").read_text() == "{}"
    assert stats.copied_files == ["tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "reference"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failure_leaves_nothing_behind(tmp_path):
    def failing():
        yield from list(_stream())[:3]
        raise ValueError("model.layers.0.mlp: cannot be quantized")

    with pytest.raises(CheckpointError, match="pipeline stage 0: model.layers.0.mlp"):
        _write(tmp_path / "out", failing())
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        _write(out, _stream())
    assert (out / "keep").exists()
    _write(out, _stream(), overwrite=True)
    assert not (out / "keep").exists() and (out / "hf_quant_config.json").exists()


def test_module_names_split_into_quantized_and_excluded():
    shapes = {n: list(t.shape) for n, t in _stream()}
    quantized, excluded = quantized_module_names(shapes)
    assert quantized == ["model.layers.0.block_sparse_moe.experts.0.w1"]
    assert excluded == ["model.embed_tokens", "model.layers.0.block_sparse_moe.gate"]
