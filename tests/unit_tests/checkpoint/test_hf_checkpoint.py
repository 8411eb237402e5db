# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Tests for megatron/minimax/checkpoint/hf_checkpoint.py."""

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron.minimax.checkpoint import hf_checkpoint
from megatron.minimax.checkpoint.fp8_blockwise import dequantize_blockwise
from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError, HFCheckpoint, find_nonfinite
from megatron.minimax.testing.tiny_checkpoint import build_tiny_checkpoint, tiny_hf_config

INDEX = "model.safetensors.index.json"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
Q_SCALE = Q_PROJ + "_scale_inv"
W2 = "model.layers.3.block_sparse_moe.experts.7.w2.weight"
GATE = "model.layers.1.block_sparse_moe.gate.weight"
BIAS = "model.layers.1.block_sparse_moe.e_score_correction_bias"
NORM = "model.layers.2.self_attn.q_norm.weight"


@pytest.fixture
def bf16_dir(tmp_path):
    return build_tiny_checkpoint(tmp_path / "bf16")


@pytest.fixture
def fp8_dir(tmp_path):
    return build_tiny_checkpoint(tmp_path / "fp8", fp8=True)


def _index(d: Path) -> dict:
    return json.loads((d / INDEX).read_text())


def _write_index(d: Path, index: dict) -> None:
    (d / INDEX).write_text(json.dumps(index))


def _rewrite_shard(d: Path, tensor_name: str, edit) -> Path:
    """Rewrites the shard holding ``tensor_name`` after ``edit(tensors)`` (tiny files only)."""
    shard = d / _index(d)["weight_map"][tensor_name]
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})
    return shard


def _raises(fn, *fragments) -> str:
    """Runs ``fn``, expects a one-line CheckpointError containing every fragment."""
    with pytest.raises(CheckpointError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    return message


class TestHFCheckpointRead:
    def test_config_and_quantization_config(self, fp8_dir, bf16_dir):
        ckpt = HFCheckpoint(fp8_dir)
        assert ckpt.config["model_type"] == "minimax_m2" and ckpt.config["hidden_size"] == 64
        assert ckpt.quantization_config["weight_block_size"] == [128, 128]
        assert ckpt.block_size == (128, 128)
        assert HFCheckpoint(bf16_dir).quantization_config is None

    def test_tensor_names_excludes_scale_companions(self, fp8_dir):
        ckpt = HFCheckpoint(fp8_dir)
        names = ckpt.tensor_names()
        # 3 globals + 4 layers x (2 norms + 4 proj + 2 qk norms + gate + bias + 8 experts x 3).
        assert len(names) == 3 + 4 * (2 + 4 + 2 + 2 + 24) == 139
        assert names == sorted(names)
        assert not any(n.endswith("_scale_inv") for n in names)
        assert len(_index(fp8_dir)["weight_map"]) == 139 + 4 * (4 + 24)
        assert Q_SCALE in ckpt  # still addressable

    def test_shape_and_dtype_come_from_header_only(self, fp8_dir, monkeypatch):
        def no_data(*args, **kwargs):
            raise AssertionError("tensor data must not be opened")

        monkeypatch.setattr(hf_checkpoint, "safe_open", no_data)
        ckpt = HFCheckpoint(fp8_dir)
        assert ckpt.shape(Q_PROJ) == (128, 64) and ckpt.dtype(Q_PROJ) == torch.float8_e4m3fn
        assert ckpt.shape(Q_SCALE) == (1, 1) and ckpt.dtype(Q_SCALE) == torch.float32
        assert ckpt.shape(W2) == (64, 48) and ckpt.dtype(W2) == torch.float8_e4m3fn
        assert ckpt.shape(GATE) == (8, 64) and ckpt.dtype(GATE) == torch.float32
        assert ckpt.shape(BIAS) == (8,) and ckpt.dtype(BIAS) == torch.float32
        assert ckpt.shape("model.embed_tokens.weight") == (1001, 64)
        assert ckpt.dtype("lm_head.weight") == torch.bfloat16
        assert ckpt.total_bytes() > 0

    def test_is_quantized(self, fp8_dir, bf16_dir):
        ckpt = HFCheckpoint(fp8_dir)
        assert ckpt.is_quantized(Q_PROJ) and ckpt.is_quantized(W2)
        assert not ckpt.is_quantized(GATE) and not ckpt.is_quantized(NORM)
        assert not ckpt.is_quantized("lm_head.weight")
        assert not HFCheckpoint(bf16_dir).is_quantized(Q_PROJ)

    def test_get_dequantizes_fp8_then_casts_once(self, fp8_dir):
        ckpt = HFCheckpoint(fp8_dir)
        raw, scale = ckpt.get_raw(Q_PROJ)
        assert raw.dtype == torch.float8_e4m3fn and scale.shape == (1, 1)
        expected = raw.float() * scale[0, 0]
        got = ckpt.get(Q_PROJ)
        assert got.dtype == torch.float32 and torch.equal(got, expected)
        assert torch.equal(ckpt.get(Q_PROJ, torch.bfloat16), expected.to(torch.bfloat16))
        assert torch.equal(ckpt.get(W2), dequantize_blockwise(*ckpt.get_raw(W2)))
        kept = ckpt.get(Q_PROJ, dtype=None)
        assert kept.dtype == torch.float8_e4m3fn
        assert torch.equal(kept.view(torch.uint8), raw.view(torch.uint8))

    def test_get_unquantized_keeps_values(self, bf16_dir):
        ckpt = HFCheckpoint(bf16_dir)
        raw, scale = ckpt.get_raw(NORM)
        assert scale is None and raw.dtype == torch.bfloat16 and raw.shape == (128,)
        assert torch.equal(ckpt.get(NORM), raw.float())
        assert ckpt.get(NORM, dtype=None).dtype == torch.bfloat16
        gate = ckpt.get(GATE, dtype=None)
        assert gate.dtype == torch.float32 and torch.equal(ckpt.get(GATE), gate)
        assert 0.5 <= raw.float().min() and raw.float().max() <= 1.5

    def test_file_of_follows_the_index_not_the_names(self, bf16_dir):
        ckpt = HFCheckpoint(bf16_dir)
        files = sorted(p.name for p in bf16_dir.glob("*.safetensors"))
        assert files == [f"model-0000{i}-of-00004.safetensors" for i in range(3)]
        assert ckpt.file_of("model.embed_tokens.weight").name == files[0]
        assert ckpt.file_of("lm_head.weight").name == files[-1]
        assert ckpt.file_of(Q_PROJ) == bf16_dir / _index(bf16_dir)["weight_map"][Q_PROJ]

    def test_total_bytes_matches_index_and_files(self, fp8_dir):
        ckpt = HFCheckpoint(fp8_dir)
        total = ckpt.total_bytes()
        assert total == _index(fp8_dir)["metadata"]["total_size"]
        on_disk = 0
        for shard in fp8_dir.glob("*.safetensors"):
            with open(shard, "rb") as f:
                on_disk += shard.stat().st_size - 8 - struct.unpack("<Q", f.read(8))[0]
        assert total == on_disk

    def test_single_file_checkpoint(self, tmp_path):
        d = build_tiny_checkpoint(tmp_path / "one", fp8=True, num_shards=1)
        assert not (d / INDEX).exists() and (d / "model.safetensors").is_file()
        ckpt = HFCheckpoint(d)
        assert len(ckpt.tensor_names()) == 139 and ckpt.is_quantized(Q_PROJ)
        ckpt.validate(deep=True)
        sharded = HFCheckpoint(build_tiny_checkpoint(tmp_path / "three", fp8=True))
        assert torch.equal(ckpt.get(W2), sharded.get(W2))

    def test_open_handles_are_bounded(self, bf16_dir):
        ckpt = HFCheckpoint(bf16_dir, max_open_files=1)
        for name in ckpt.tensor_names():
            ckpt.get(name)
            assert len(ckpt._handles) <= 1
        ckpt.close()
        assert not ckpt._handles
        assert ckpt.get(NORM).shape == (128,)  # reopens on demand

    def test_hf_cache_snapshot_symlinks_are_accepted(self, tmp_path, bf16_dir):
        repo = tmp_path / "models--MiniMaxAI--MiniMax-M2.5"
        (repo / "blobs").mkdir(parents=True)
        snapshot = repo / "snapshots" / "abc123"
        snapshot.mkdir(parents=True)
        for i, f in enumerate(sorted(bf16_dir.iterdir())):
            blob = repo / "blobs" / f"blob{i}"
            os.replace(f, blob)
            (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
        ckpt = HFCheckpoint(snapshot)
        ckpt.validate(deep=True)
        assert ckpt.get(NORM).shape == (128,)

    def test_unknown_tensor_name(self, bf16_dir):
        ckpt = HFCheckpoint(bf16_dir)
        mtp = "model.layers.62.eh_proj.weight"
        _raises(lambda: ckpt.get(mtp), INDEX, f"'{mtp}' is not in the checkpoint")

    def test_validate_passes_on_release_format(self, fp8_dir, bf16_dir):
        for d in (fp8_dir, bf16_dir):
            with HFCheckpoint(d) as ckpt:
                ckpt.validate(deep=True)


class TestHFCheckpointSlices:
    """Reading part of a tensor: the values of the whole tensor's part, and only its bytes (an
    FP8 tensor in whole 128x128 blocks)."""

    @pytest.fixture(scope="class")
    def wide(self, tmp_path_factory):
        # Widths above one FP8 block and not multiples of it: partial blocks at both ends.
        config = tiny_hf_config(hidden_size=320, intermediate_size=300)
        root = tmp_path_factory.mktemp("wide")
        return {
            fp8: HFCheckpoint(build_tiny_checkpoint(root / str(fp8), config, fp8=fp8))
            for fp8 in (False, True)
        }

    @pytest.mark.parametrize("fp8", [False, True])
    @pytest.mark.parametrize(
        "name, dim, start, stop",
        [
            ("model.layers.0.block_sparse_moe.experts.1.w1.weight", 0, 150, 300),  # [300, 320]
            ("model.layers.0.block_sparse_moe.experts.1.w2.weight", 1, 100, 200),  # [320, 300]
            ("model.layers.1.self_attn.q_proj.weight", 0, 0, 64),  # [128, 320]
            ("model.embed_tokens.weight", 0, 500, 1001),
            ("model.layers.2.input_layernorm.weight", 0, 7, 7),
        ],
    )
    def test_values_equal_the_whole_tensors_part(self, wide, fp8, name, dim, start, stop):
        ckpt = wide[fp8]
        got = ckpt.get_slice(name, dim, start, stop)
        assert torch.equal(got, ckpt.get(name).narrow(dim, start, stop - start))

    def test_bytes_read_are_the_slice_or_its_blocks(self, wide):
        bf16, fp8 = wide[False], wide[True]
        w2 = "model.layers.0.block_sparse_moe.experts.1.w2.weight"  # [320, 300]
        before = bf16.bytes_read
        bf16.get_slice(w2, 1, 100, 200)
        assert bf16.bytes_read - before == 320 * 100 * 2
        before = fp8.bytes_read
        fp8.get_slice(w2, 1, 100, 200)
        # Columns 0-255 (blocks 0 and 1) of the FP8 bytes, and those blocks' 3 x 2 scales.
        assert fp8.bytes_read - before == 320 * 256 + 3 * 2 * 4
        before = fp8.bytes_read
        fp8.get(w2)
        assert fp8.bytes_read - before == 320 * 300 + 3 * 3 * 4

    @pytest.mark.parametrize("dim, start, stop", [(2, 0, 1), (0, 5, 400), (1, 3, 2)])
    def test_bad_region_is_refused(self, wide, dim, start, stop):
        with pytest.raises(ValueError, match="cannot read"):
            wide[False].get_slice("model.layers.0.self_attn.o_proj.weight", dim, start, stop)


class TestFindNonfinite:
    def test_counts_nan_and_inf(self):
        t = torch.zeros(1000)
        t[3], t[500], t[999] = float("nan"), float("inf"), float("-inf")
        assert find_nonfinite(t) == 3
        assert find_nonfinite(t, chunk_elems=7) == 3
        assert find_nonfinite(t.to(torch.bfloat16)) == 3

    def test_get_counting_nonfinite_agrees_with_counting_the_result(self, fp8_dir):
        with HFCheckpoint(fp8_dir) as ckpt:
            for name in ckpt.tensor_names():
                for dtype in (torch.bfloat16, torch.float32):
                    value, count = ckpt.get_counting_nonfinite(name, dtype)
                    assert torch.equal(value, ckpt.get(name, dtype))
                    assert count == find_nonfinite(value) == 0

    def test_fp8_and_integers(self):
        t = torch.zeros(10, dtype=torch.float8_e4m3fn)
        t.view(torch.uint8)[[2, 5]] = torch.tensor([0x7F, 0xFF], dtype=torch.uint8)  # e4m3fn NaNs
        assert find_nonfinite(t) == 2
        assert find_nonfinite(torch.arange(10)) == 0
        assert find_nonfinite(torch.ones(3, 3)) == 0


class TestHFCheckpointErrors:
    def test_missing_directory(self, tmp_path):
        _raises(lambda: HFCheckpoint(tmp_path / "nope"), "nope", "does not exist")

    def test_missing_config(self, bf16_dir):
        (bf16_dir / "config.json").unlink()
        _raises(lambda: HFCheckpoint(bf16_dir), "config.json", "missing")

    def test_config_not_json(self, bf16_dir):
        (bf16_dir / "config.json").write_text("{not json")
        _raises(lambda: HFCheckpoint(bf16_dir), "config.json", "cannot parse JSON")

    @pytest.mark.parametrize(
        "key, value, fragment",
        [
            ("architectures", ["MixtralForCausalLM"], "architectures is ['MixtralForCausalLM']"),
            ("model_type", "minimax", "model_type is 'minimax'"),
        ],
    )
    def test_wrong_architecture(self, bf16_dir, key, value, fragment):
        config = json.loads((bf16_dir / "config.json").read_text())
        config[key] = value
        (bf16_dir / "config.json").write_text(json.dumps(config))
        _raises(lambda: HFCheckpoint(bf16_dir), "config.json", fragment)

    def test_unsupported_quantization(self, fp8_dir):
        config = json.loads((fp8_dir / "config.json").read_text())
        config["quantization_config"]["quant_method"] = "gptq"
        (fp8_dir / "config.json").write_text(json.dumps(config))
        _raises(lambda: HFCheckpoint(fp8_dir), "config.json", "quant_method is 'gptq'")

    @pytest.mark.parametrize("relative", [True, False], ids=["parent", "absolute"])
    def test_index_entry_escaping_directory(self, bf16_dir, relative):
        evil = bf16_dir.parent / "evil.safetensors"
        evil.write_bytes(b"")
        file_name = "../evil.safetensors" if relative else str(evil.resolve())
        index = _index(bf16_dir)
        index["weight_map"][NORM] = file_name
        _write_index(bf16_dir, index)
        _raises(lambda: HFCheckpoint(bf16_dir), INDEX, NORM, file_name, "refused")

    def test_symlinked_shard_pointing_outside(self, bf16_dir, tmp_path):
        shard = bf16_dir / _index(bf16_dir)["weight_map"][NORM]
        outside = tmp_path / "elsewhere.safetensors"
        os.replace(shard, outside)
        shard.symlink_to(outside)
        _raises(lambda: HFCheckpoint(bf16_dir), shard.name, "outside the checkpoint", "refused")

    def test_index_entry_not_safetensors(self, bf16_dir):
        index = _index(bf16_dir)
        index["weight_map"][NORM] = "pytorch_model-00001-of-00002.bin"
        _write_index(bf16_dir, index)
        _raises(lambda: HFCheckpoint(bf16_dir), INDEX, NORM, "not a .safetensors file")

    def test_only_pickle_weights(self, tmp_path):
        d = tmp_path / "pickled"
        d.mkdir()
        src = build_tiny_checkpoint(tmp_path / "src")
        (d / "config.json").write_bytes((src / "config.json").read_bytes())
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
        _raises(lambda: HFCheckpoint(d), "pickled", "pytorch_model.bin", "never loaded")

    def test_no_weights(self, bf16_dir):
        for f in bf16_dir.glob("*.safetensors"):
            f.unlink()
        (bf16_dir / INDEX).unlink()
        _raises(lambda: HFCheckpoint(bf16_dir), str(bf16_dir), "neither")

    def test_missing_shard(self, bf16_dir):
        index = _index(bf16_dir)
        shard = index["weight_map"]["lm_head.weight"]
        (bf16_dir / shard).unlink()
        _raises(lambda: HFCheckpoint(bf16_dir), shard, "is missing", "model.")

    def test_truncated_shard_is_found_lazily(self, bf16_dir):
        shard = bf16_dir / _index(bf16_dir)["weight_map"]["lm_head.weight"]
        data = shard.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        header.pop("__metadata__")
        # safetensors orders the data by dtype then name, so find the last tensor by offset.
        last = max(header, key=lambda k: header[k]["data_offsets"][1])
        shard.write_bytes(data[:-100])
        ckpt = HFCheckpoint(bf16_dir)  # headers are read on first use
        assert ckpt.get("model.embed_tokens.weight").shape == (1001, 64)
        _raises(lambda: ckpt.get("lm_head.weight"), shard.name, "truncated", f"tensor '{last}'")
        _raises(lambda: HFCheckpoint(bf16_dir).validate(), shard.name, "truncated")

    def test_truncated_header(self, bf16_dir):
        shard = bf16_dir / _index(bf16_dir)["weight_map"][NORM]
        shard.write_bytes(shard.read_bytes()[:50])
        _raises(lambda: HFCheckpoint(bf16_dir).shape(NORM), shard.name, "truncated", "header")

    def test_corrupt_header(self, bf16_dir):
        shard = bf16_dir / _index(bf16_dir)["weight_map"][NORM]
        data = bytearray(shard.read_bytes())
        data[8:12] = b"\xff\xfe{["
        shard.write_bytes(bytes(data))
        _raises(lambda: HFCheckpoint(bf16_dir).get(NORM), shard.name, "corrupt safetensors header")

    def test_inconsistent_header_entry(self, bf16_dir):
        shard = bf16_dir / _index(bf16_dir)["weight_map"][NORM]
        data = shard.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        header[NORM]["shape"] = [129]
        raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)
        assert len(raw) == n
        shard.write_bytes(data[:8] + raw + data[8 + n :])
        _raises(lambda: HFCheckpoint(bf16_dir).dtype(NORM), shard.name, NORM, "needs 258 bytes")

    def test_trailing_bytes(self, bf16_dir):
        shard = bf16_dir / _index(bf16_dir)["weight_map"][NORM]
        shard.write_bytes(shard.read_bytes() + b"junk")
        _raises(lambda: HFCheckpoint(bf16_dir).validate(), shard.name, "4 bytes after")

    def test_index_entry_absent_from_shard(self, bf16_dir):
        index = _index(bf16_dir)
        other = index["weight_map"]["model.embed_tokens.weight"]
        index["weight_map"]["lm_head.weight"] = other  # lm_head is really in the last shard
        _write_index(bf16_dir, index)
        ckpt = HFCheckpoint(bf16_dir)
        _raises(lambda: ckpt.get("lm_head.weight"), other, "'lm_head.weight'", "not in it")
        _raises(lambda: HFCheckpoint(bf16_dir).validate(), other, "lm_head.weight")

    def test_fp8_without_scale(self, fp8_dir):
        index = _index(fp8_dir)
        del index["weight_map"][Q_SCALE]
        _write_index(fp8_dir, index)
        ckpt = HFCheckpoint(fp8_dir)
        assert ckpt.dtype(Q_PROJ) == torch.float8_e4m3fn
        shard = index["weight_map"][Q_PROJ]
        _raises(lambda: ckpt.get(Q_PROJ), shard, Q_PROJ, Q_SCALE, "no")
        _raises(lambda: ckpt.get(Q_PROJ, dtype=None), shard, Q_PROJ)
        _raises(lambda: HFCheckpoint(fp8_dir).validate(), shard, Q_PROJ)

    def test_fp8_scale_with_wrong_shape(self, fp8_dir):
        shard = _rewrite_shard(fp8_dir, Q_SCALE, lambda t: t.update({Q_SCALE: torch.ones(2, 1)}))
        ckpt = HFCheckpoint(fp8_dir)
        _raises(lambda: ckpt.get(Q_PROJ), shard.name, Q_SCALE, "[2, 1]", "needs [1, 1]")
        _raises(lambda: HFCheckpoint(fp8_dir).validate(), shard.name, Q_SCALE)

    def test_scale_on_non_fp8_tensor(self, fp8_dir):
        def edit(t):
            t[Q_PROJ] = t[Q_PROJ].to(torch.bfloat16)

        shard = _rewrite_shard(fp8_dir, Q_PROJ, edit)
        _raises(lambda: HFCheckpoint(fp8_dir).get(Q_PROJ), shard.name, Q_PROJ, "BF16")

    def test_orphan_scale(self, fp8_dir):
        orphan = "model.layers.0.self_attn.z_proj.weight_scale_inv"
        shard = _rewrite_shard(fp8_dir, Q_SCALE, lambda t: t.update({orphan: torch.ones(1, 1)}))
        index = _index(fp8_dir)
        index["weight_map"][orphan] = shard.name
        _write_index(fp8_dir, index)
        _raises(lambda: HFCheckpoint(fp8_dir).validate(), shard.name, orphan, "has no weight")

    def test_deep_validate_finds_nan(self, bf16_dir):
        def edit(t):
            t[NORM] = t[NORM].clone()
            t[NORM][5] = float("nan")

        shard = _rewrite_shard(bf16_dir, NORM, edit)
        HFCheckpoint(bf16_dir).validate()  # headers are fine
        _raises(lambda: HFCheckpoint(bf16_dir).validate(deep=True), shard.name, NORM, "1 NaN/Inf")
