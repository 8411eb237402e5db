# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Megatron torch_dist -> HF export (convert_mcore_to_hf, convert_minimax_m2.py mcore-to-hf).

The forward direction is convert_hf_to_mcore; round trips are checked tensor by tensor against the
tiny release-format checkpoints, bit for bit where the formats allow it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron.minimax.checkpoint.fp8_blockwise import dequantize_blockwise
from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError, HFCheckpoint
from megatron.minimax.checkpoint.hf_to_mcore import convert_hf_to_mcore
from megatron.minimax.checkpoint.mcore_to_hf import convert_mcore_to_hf, parse_size
from megatron.minimax.models.minimax_m2.parity import ParallelLayout
from megatron.minimax.models.minimax_m2.weight_mapping import RELEASE_QUANTIZATION_CONFIG
from megatron.minimax.testing.distributed import run_in_processes

TOOL = Path(__file__).resolve().parents[3] / "tools" / "checkpoint" / "convert_minimax_m2.py"
ROUTER_SUFFIXES = (".block_sparse_moe.gate.weight", ".block_sparse_moe.e_score_correction_bias")
NUM_QUANTIZED = 4 * (4 + 8 * 3)  # layers x (q/k/v/o + experts x w1/w2/w3)
SHARD_BYTES = 400_000
EXTRA_FILES = {
    "tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}\n',
    "tokenizer_config.json": '{"tokenizer_class": "GPT2Tokenizer"}\n',
    "chat_template.jinja": "{% for m in messages %}{{ m.content }}{% endfor %}\n",
    "generation_config.json": '{"temperature": 1.0, "top_p": 0.95, "top_k": 40}\n',
    "modeling_minimax_m2.py": "# remote code\n",
    "assets/notes.txt": "nested files are copied too\n",
}
SKIPPED_FILES = ["pytorch_model.bin", "original/consolidated.pth", "legacy.pt"]


def _is_router(name):
    return name.endswith(ROUTER_SUFFIXES)


def _with_extras(source: Path, destination: Path) -> Path:
    """A copy of a tiny checkpoint with the non-weight files a HF repo ships, and pickles."""
    shutil.copytree(source, destination)
    for rel, text in EXTRA_FILES.items():
        (destination / rel).parent.mkdir(parents=True, exist_ok=True)
        (destination / rel).write_text(text)
    for rel in SKIPPED_FILES:
        (destination / rel).parent.mkdir(parents=True, exist_ok=True)
        (destination / rel).write_bytes(b"\x80\x04 not a real pickle")
    return destination


def _expand(scale, shape):
    rows, cols = shape
    return scale.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]


def _within_fp8_rounding(dequantised, target, scale):
    """One e4m3 rounding: half an ulp (2**-4 relative, 3 mantissa bits) in the normal range, half
    the subnormal step (scale * 2**-10) below it; a little slack for fp32 products."""
    bound = target.abs() * 2.0**-4 + _expand(scale, target.shape) * 2.0**-10
    return bool(((dequantised - target).abs() <= bound * (1 + 2.0**-10)).all())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("mcore_to_hf")


@pytest.fixture(scope="module")
def bf16_reference(tiny_bf16_checkpoint, work):
    return _with_extras(tiny_bf16_checkpoint, work / "ref_bf16")


@pytest.fixture(scope="module")
def mcore_bf16(tiny_bf16_checkpoint, work):
    convert_hf_to_mcore(tiny_bf16_checkpoint, work / "mcore_bf16")
    return work / "mcore_bf16"


@pytest.fixture(scope="module")
def mcore_fp8(tiny_fp8_checkpoint, work):
    convert_hf_to_mcore(tiny_fp8_checkpoint, work / "mcore_fp8")
    return work / "mcore_fp8"


@pytest.fixture(scope="module")
def bf16_export(mcore_bf16, bf16_reference, work):
    out = work / "hf_bf16"
    stats = convert_mcore_to_hf(
        mcore_bf16, out, bf16_reference, fmt="bf16", max_shard_bytes=SHARD_BYTES
    )
    return out, stats


@pytest.fixture(scope="module")
def fp8_to_bf16_export(mcore_fp8, tiny_fp8_checkpoint, work):
    out = work / "hf_fp8_to_bf16"
    return out, convert_mcore_to_hf(mcore_fp8, out, tiny_fp8_checkpoint, fmt="bf16")


@pytest.fixture(scope="module")
def fp8_export(mcore_fp8, tiny_fp8_checkpoint, work):
    out = work / "hf_fp8"
    return out, convert_mcore_to_hf(mcore_fp8, out, tiny_fp8_checkpoint, fmt="fp8")


# Tensors changed in the "trained" checkpoint: layer 1's fused QKV scaled by 1.25 (-> q/k/v_proj:
# the same FP8 codes can come back, with 1.25x scales), layer 2 expert 5's linear_fc2 scaled row by
# row (-> w2: new codes), and one NaN in the final norm.
SCALE_FACTOR = 1.25
UNIFORMLY_SCALED = [
    "model.layers.1.self_attn.q_proj.weight",
    "model.layers.1.self_attn.k_proj.weight",
    "model.layers.1.self_attn.v_proj.weight",
]
ROW_SCALED = "model.layers.2.block_sparse_moe.experts.5.w2.weight"
MODIFIED = UNIFORMLY_SCALED + [ROW_SCALED]


def _row_factors(rows):
    return torch.linspace(0.5, 1.5, rows)[:, None]


@pytest.fixture(scope="module")
def modified_mcore(mcore_fp8, tiny_fp8_checkpoint, work):
    """mcore_fp8 loaded into a bf16 model, a few tensors changed, saved with megatron-core's own
    dist_checkpointing.save (world size 1)."""
    from megatron.core import dist_checkpointing

    from megatron.minimax.checkpoint.dist_checkpoint_layout import single_process_group
    from megatron.minimax.models.minimax_m2.parity import (
        build_from_dist_checkpoint,
        initialize_layout,
    )

    root = work / "mcore_modified"
    (root / "release").mkdir(parents=True)
    # In this process: the block leaves no group, state or CPU shim behind for later tests.
    with single_process_group():
        initialize_layout(ParallelLayout())
        config = HFCheckpoint(tiny_fp8_checkpoint).config
        model = build_from_dist_checkpoint(
            config, mcore_fp8, ParallelLayout(), params_dtype=torch.bfloat16
        ).model
        with torch.no_grad():
            model.decoder.layers[1].self_attention.linear_qkv.weight.mul_(SCALE_FACTOR)
            fc2 = model.decoder.layers[2].mlp.experts.local_experts[5].linear_fc2.weight
            fc2.mul_(_row_factors(fc2.shape[0]))
            model.decoder.final_layernorm.weight[3] = float("nan")
        dist_checkpointing.save(model.sharded_state_dict(), str(root / "release"))
    (root / "latest_checkpointed_iteration.txt").write_text("release")
    return root


def _tp2_ep2_save_worker(rank, world_size, hf_dir, ckpt_dirs):
    from megatron.core import dist_checkpointing

    from megatron.minimax.models.minimax_m2.parity import build_from_hf, initialize_layout

    hf = HFCheckpoint(hf_dir)
    layout = ParallelLayout(tp=2, ep=2, etp=1)
    for model_class, ckpt_dir in ckpt_dirs.items():
        initialize_layout(layout)
        model = build_from_hf(
            hf.config,
            lambda n: hf.get(n, torch.float32),
            layout,
            params_dtype=torch.bfloat16,
            model=model_class,
        ).model
        dist_checkpointing.save(model.sharded_state_dict(), ckpt_dir)
    return None


@pytest.fixture(scope="module")
def tp2_ep2_mcore(tiny_bf16_checkpoint, work):
    """Checkpoints saved by megatron-core itself from TP2xEP2xETP1 models (4 ranks), a GPTModel's
    and a HybridModel's: expert fc1 chunks split by TP, GLU halves in separate chunks, vocab rows
    split; the hybrid one keyed per layer."""
    directories = {m: work / f"mcore_tp2_ep2_{m}" for m in ("gpt", "hybrid")}
    for directory in directories.values():
        directory.mkdir()
    run_in_processes(
        _tp2_ep2_save_worker,
        4,
        str(tiny_bf16_checkpoint),
        {m: str(d) for m, d in directories.items()},
    )
    return directories


def _assert_same_tensors(exported: Path, expected: Path):
    with HFCheckpoint(exported) as got, HFCheckpoint(expected) as want:
        assert got.tensor_names() == want.tensor_names()
        for name in want.tensor_names():
            a, b = got.get(name, None), want.get(name, None)
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name


class TestBF16RoundTrip:
    def test_every_tensor_is_bit_identical(self, bf16_export, tiny_bf16_checkpoint):
        out, stats = bf16_export
        _assert_same_tensors(out, tiny_bf16_checkpoint)
        with HFCheckpoint(out) as got:
            for name in got.tensor_names():
                expected = torch.float32 if _is_router(name) else torch.bfloat16
                assert got.dtype(name) == expected, name
        assert stats.tensors_written == 139 and stats.scales_written == 0
        assert stats.nonfinite == {}

    def test_shards_index_and_config(self, bf16_export, tiny_bf16_checkpoint):
        out, stats = bf16_export
        shards = sorted(p.name for p in out.glob("*.safetensors"))
        assert len(shards) == stats.shards >= 3
        assert shards == [
            f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
        ]
        assert all((out / s).stat().st_size <= SHARD_BYTES for s in shards)
        index = json.loads((out / "model.safetensors.index.json").read_text())
        with HFCheckpoint(out) as got:
            assert sorted(index["weight_map"]) == got.tensor_names()
            assert set(index["weight_map"].values()) == set(shards)
            assert index["metadata"]["total_size"] == got.total_bytes()
            got.validate(deep=True)
        config = json.loads((out / "config.json").read_text())
        reference = json.loads((Path(tiny_bf16_checkpoint) / "config.json").read_text())
        assert "quantization_config" not in config
        assert config == {**reference, "torch_dtype": "bfloat16"}

    def test_reference_files_are_copied_and_weights_are_not(self, bf16_export):
        out, stats = bf16_export
        for rel, text in EXTRA_FILES.items():
            assert (out / rel).read_text() == text, rel
        for rel in SKIPPED_FILES:
            assert not (out / rel).exists(), rel
        assert sorted(stats.copied_files) == sorted(EXTRA_FILES)
        assert "tokenizer.json" in stats.summary()

    def test_logits_match_the_original_in_transformers(self, bf16_export, tiny_bf16_checkpoint):
        from transformers import AutoModelForCausalLM

        from megatron.minimax.models.minimax_m2.hf_reference import (
            hf_logits,
            load_hf_reference_model,
        )

        out, _ = bf16_export
        tokens = torch.randint(0, 1001, (2, 12), generator=torch.Generator().manual_seed(7))
        original = hf_logits(
            load_hf_reference_model(tiny_bf16_checkpoint, round_to=torch.bfloat16), tokens
        )
        exported = hf_logits(load_hf_reference_model(out), tokens)
        native = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        assert native.model.layers[0].mlp.gate.weight.dtype == torch.float32
        assert (exported - original).abs().max() <= 1e-5
        assert (hf_logits(native, tokens) - original).abs().max() <= 1e-5
        assert original.std() > 0.5

    @pytest.mark.parametrize("model_class", ["gpt", "hybrid"])
    def test_checkpoint_saved_by_megatron_core_at_tp2_ep2(
        self, tp2_ep2_mcore, bf16_reference, work, model_class
    ):
        out = work / f"hf_from_tp2_ep2_{model_class}"
        stats = convert_mcore_to_hf(
            tp2_ep2_mcore[model_class], out, bf16_reference, read_group_bytes=1
        )
        assert stats.model_class == model_class
        _assert_same_tensors(out, bf16_reference)

    def test_hybrid_checkpoint_keys_are_per_layer(self, tp2_ep2_mcore):
        from megatron.minimax.checkpoint.dist_checkpoint_reader import DistCheckpointReader

        keys = DistCheckpointReader(tp2_ep2_mcore["hybrid"]).tensors
        assert "decoder.final_norm.weight" in keys and "decoder.final_layernorm.weight" not in keys
        assert "decoder.layers.0.self_attention.linear_qkv.weight" in keys
        assert "decoder.layers.1.mlp.router.weight" in keys
        assert "decoder.layers.self_attention.linear_qkv.weight" not in keys

    def test_hybrid_checkpoint_with_a_config_of_other_depth_is_refused(
        self, tp2_ep2_mcore, tiny_bf16_checkpoint, tmp_path
    ):
        reference = tmp_path / "ref"
        reference.mkdir()
        config = json.loads((Path(tiny_bf16_checkpoint) / "config.json").read_text())
        config.update(num_hidden_layers=2, attn_type_list=[1, 1])
        (reference / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match="num_hidden_layers=2.*4 attention layers"):
            convert_mcore_to_hf(tp2_ep2_mcore["hybrid"], tmp_path / "out", reference)

    def test_checkpoint_with_more_vocabulary_padding(self, mcore_bf16, bf16_reference, tmp_path):
        """A checkpoint padded to more rows (another make_vocab_size_divisible_by) exports the
        HF vocabulary; each stored tensor is rewritten as a single chunk."""
        from megatron.minimax.checkpoint.dist_checkpoint_layout import CheckpointChunk
        from megatron.minimax.checkpoint.dist_checkpoint_reader import DistCheckpointReader
        from megatron.minimax.checkpoint.torch_dist_writer import TorchDistWriter

        source = DistCheckpointReader(mcore_bf16 / "release")
        writer = TorchDistWriter(tmp_path / "padded" / "release")
        data_file = writer.open_file()
        for key, md in source.tensors.items():
            shape = tuple(md.size)
            chunk = CheckpointChunk(key, shape, (0,) * len(shape), shape, md.properties.dtype)
            (tensor,) = source.read([chunk])
            if key in ("embedding.word_embeddings.weight", "output_layer.weight"):
                padding = torch.full((256, shape[1]), 7.0, dtype=tensor.dtype)
                tensor = torch.cat([tensor, padding])
                chunk = CheckpointChunk(
                    key, tuple(tensor.shape), (0, 0), tuple(tensor.shape), tensor.dtype
                )
            data_file.write_chunk(chunk, tensor)
        data_file.close()
        writer.finish({"checkpoint_version": 3.0})
        (tmp_path / "padded" / "latest_checkpointed_iteration.txt").write_text("release")
        assert (
            DistCheckpointReader(tmp_path / "padded" / "release").shape("output_layer.weight")[0]
            == 1280
        )
        convert_mcore_to_hf(tmp_path / "padded", tmp_path / "out", bf16_reference)
        _assert_same_tensors(tmp_path / "out", bf16_reference)


class TestFP8Source:
    def test_bf16_export_is_dequantised_and_rounded_once(
        self, fp8_to_bf16_export, tiny_fp8_checkpoint
    ):
        out, stats = fp8_to_bf16_export
        with HFCheckpoint(out) as got, HFCheckpoint(tiny_fp8_checkpoint) as source:
            assert got.tensor_names() == source.tensor_names()
            assert not any(got.is_quantized(n) for n in got.tensor_names())
            for name in source.tensor_names():
                raw, scale = source.get_raw(name)
                if scale is not None:
                    expected = dequantize_blockwise(raw, scale).to(torch.bfloat16)
                else:
                    expected = raw
                value = got.get(name, None)
                assert value.dtype == expected.dtype, name
                assert torch.equal(value.view(torch.uint8), expected.view(torch.uint8)), name
        assert "quantization_config" not in json.loads((out / "config.json").read_text())
        assert stats.fp8_copied == stats.fp8_quantized == 0

    def test_fp8_export_keeps_release_bytes_scales_and_config(
        self, fp8_export, tiny_fp8_checkpoint
    ):
        out, stats = fp8_export
        _assert_same_tensors(out, tiny_fp8_checkpoint)
        with HFCheckpoint(out) as got, HFCheckpoint(tiny_fp8_checkpoint) as source:
            quantized = [n for n in source.tensor_names() if source.is_quantized(n)]
            assert [n for n in got.tensor_names() if got.is_quantized(n)] == quantized
            assert len(quantized) == NUM_QUANTIZED
            for name in quantized:
                _, scale = source.get_raw(name)
                _, got_scale = got.get_raw(name)
                assert got_scale.shape == scale.shape and torch.equal(got_scale, scale), name
            assert got.quantization_config == source.quantization_config
        assert stats.fp8_copied == NUM_QUANTIZED and stats.fp8_quantized == 0
        assert stats.scales_written == NUM_QUANTIZED

    def test_bf16_export_logits_match_rounded_fp8_reference(
        self, fp8_to_bf16_export, tiny_fp8_checkpoint
    ):
        from megatron.minimax.models.minimax_m2.hf_reference import (
            hf_logits,
            load_hf_reference_model,
        )

        out, _ = fp8_to_bf16_export
        tokens = torch.randint(0, 1001, (2, 12), generator=torch.Generator().manual_seed(8))
        original = load_hf_reference_model(tiny_fp8_checkpoint, round_to=torch.bfloat16)
        diff = hf_logits(load_hf_reference_model(out), tokens) - hf_logits(original, tokens)
        assert diff.abs().max() <= 1e-5


class TestFP8ModifiedCheckpoint:
    @pytest.fixture(scope="class")
    def export(self, modified_mcore, tiny_fp8_checkpoint, work):
        out = work / "hf_fp8_modified"
        return out, convert_mcore_to_hf(modified_mcore, out, tiny_fp8_checkpoint, fmt="fp8")

    def test_modified_tensors_are_requantised_the_rest_copied(self, export, tiny_fp8_checkpoint):
        out, stats = export
        assert stats.fp8_quantized == len(MODIFIED)
        assert stats.fp8_copied == NUM_QUANTIZED - len(MODIFIED)
        with HFCheckpoint(out) as got, HFCheckpoint(tiny_fp8_checkpoint) as source:
            assert got.tensor_names() == source.tensor_names()
            for name in source.tensor_names():
                if not source.is_quantized(name):
                    continue
                raw, scale = source.get_raw(name)
                got_raw, got_scale = got.get_raw(name)
                assert got_scale.shape == scale.shape and got_raw.dtype == torch.float8_e4m3fn
                if name not in MODIFIED:
                    assert torch.equal(got_raw.view(torch.uint8), raw.view(torch.uint8)), name
                    assert torch.equal(got_scale, scale), name
                    continue
                # The trained value, computed independently of the exporter (bf16 arithmetic, as
                # in the model).
                factor = SCALE_FACTOR if name in UNIFORMLY_SCALED else _row_factors(raw.shape[0])
                trained = (dequantize_blockwise(raw, scale).to(torch.bfloat16) * factor).float()
                new = dequantize_blockwise(got_raw, got_scale)
                assert _within_fp8_rounding(new, trained, got_scale), name
                assert not torch.equal(new, dequantize_blockwise(raw, scale)), name
                if name in UNIFORMLY_SCALED:
                    # Block scales follow the new amax: 1.25x the old ones, up to bf16 rounding.
                    assert torch.allclose(got_scale, scale * SCALE_FACTOR, rtol=2**-7), name
                else:
                    assert not torch.equal(got_raw.view(torch.uint8), raw.view(torch.uint8)), name

    def test_nonfinite_values_are_reported(self, export):
        _, stats = export
        assert stats.nonfinite == {"model.norm.weight": 1}
        assert "NaN/Inf in 1 tensors" in stats.summary()


class TestRefusals:
    def test_non_empty_save_dir_is_refused(self, mcore_bf16, tiny_bf16_checkpoint, tmp_path):
        out = tmp_path / "out"
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        with pytest.raises(CheckpointError, match="not empty"):
            convert_mcore_to_hf(mcore_bf16, out, tiny_bf16_checkpoint)
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
        convert_mcore_to_hf(mcore_bf16, out, tiny_bf16_checkpoint, overwrite=True)
        assert not (out / "keep.txt").exists() and (out / "config.json").is_file()

    def test_progress_bar_shows_bytes_tensors_and_rate(
        self, mcore_bf16, tiny_bf16_checkpoint, tmp_path, capsys
    ):
        convert_mcore_to_hf(mcore_bf16, tmp_path / "out", tiny_bf16_checkpoint, progress=True)
        captured = capsys.readouterr()
        assert captured.out == ""
        final = captured.err.strip().split("\r")[-1]
        assert "mcore-to-hf: 100%" in final and "tensors 139/139" in final
        # Bytes done / total (binary-scaled: 1.00M) and a byte rate, whatever the machine's speed.
        assert re.search(r" 1\.00M/1\.00M ", final) and re.search(r"\d[kMG]?B/s", final), final

    def test_mtp_checkpoint_needs_drop_mtp(self, tiny_bf16_checkpoint, work, tmp_path):
        mcore = work / "mcore_mtp"
        convert_hf_to_mcore(tiny_bf16_checkpoint, mcore, mtp_num_layers=1)
        with pytest.raises(CheckpointError, match="1 MTP layers.*--drop-mtp"):
            convert_mcore_to_hf(mcore, tmp_path / "refused", tiny_bf16_checkpoint)
        assert not (tmp_path / "refused").exists()
        stats = convert_mcore_to_hf(
            mcore, tmp_path / "dropped", tiny_bf16_checkpoint, drop_mtp=True
        )
        assert stats.dropped_mtp_layers == 1 and stats.dropped_mtp_tensors > 0
        assert "dropped 1 MTP layers" in stats.summary()
        _assert_same_tensors(tmp_path / "dropped", tiny_bf16_checkpoint)

    def test_config_that_does_not_match_the_checkpoint_is_refused(
        self, mcore_bf16, tiny_bf16_checkpoint, tmp_path
    ):
        reference = tmp_path / "ref"
        reference.mkdir()
        config = json.loads((Path(tiny_bf16_checkpoint) / "config.json").read_text())
        config.update(num_hidden_layers=2, attn_type_list=[1, 1])
        (reference / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match="num_hidden_layers=2.*linear_qkv.weight.*4"):
            convert_mcore_to_hf(mcore_bf16, tmp_path / "out", reference)

    def test_config_only_reference_quantises_the_release_set(
        self, mcore_fp8, tiny_fp8_checkpoint, tmp_path
    ):
        reference = tmp_path / "ref"
        reference.mkdir()
        config = json.loads((Path(tiny_fp8_checkpoint) / "config.json").read_text())
        config.pop("quantization_config")
        (reference / "config.json").write_text(json.dumps(config))
        stats = convert_mcore_to_hf(mcore_fp8, tmp_path / "out", reference, fmt="fp8")
        assert stats.fp8_quantized == NUM_QUANTIZED and stats.fp8_copied == 0
        with HFCheckpoint(tmp_path / "out") as got, HFCheckpoint(tiny_fp8_checkpoint) as source:
            assert got.quantization_config == RELEASE_QUANTIZATION_CONFIG
            for name in source.tensor_names():
                assert got.is_quantized(name) == source.is_quantized(name), name
                if source.is_quantized(name):
                    raw, scale = source.get_raw(name)
                    value = dequantize_blockwise(raw, scale).to(torch.bfloat16).float()
                    got_raw, got_scale = got.get_raw(name)
                    assert _within_fp8_rounding(
                        dequantize_blockwise(got_raw, got_scale), value, got_scale
                    )

    def test_missing_checkpoint_is_refused(self, tiny_bf16_checkpoint, tmp_path):
        with pytest.raises(CheckpointError, match="does not exist"):
            convert_mcore_to_hf(tmp_path / "nope", tmp_path / "out", tiny_bf16_checkpoint)
        (tmp_path / "empty").mkdir()
        with pytest.raises(CheckpointError, match="no .metadata"):
            convert_mcore_to_hf(tmp_path / "empty", tmp_path / "out", tiny_bf16_checkpoint)

    def test_output_overlapping_an_input_is_refused(self, mcore_bf16, bf16_reference):
        for save_dir in (bf16_reference, mcore_bf16 / "hf", bf16_reference.parent):
            with pytest.raises(CheckpointError, match="must not overlap"):
                convert_mcore_to_hf(mcore_bf16, save_dir, bf16_reference, overwrite=True)
        assert (bf16_reference / "tokenizer.json").is_file()


class TestParseSize:
    @pytest.mark.parametrize(
        "text, expected",
        [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("123", 123), ("1.5gb", 1_500_000_000),
         ("2KB", 2000), ("1GiB", 2**30), (" 7 MB ", 7 * 10**6), (42, 42)],
    )  # fmt: skip
    def test_sizes(self, text, expected):
        assert parse_size(text) == expected

    @pytest.mark.parametrize("text", ["", "GB", "5XB", "-1", "0", "five", "5 G B", "1e3"])
    def test_garbage_is_refused(self, text):
        with pytest.raises(ValueError):
            parse_size(text)


def _run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(TOOL), "mcore-to-hf", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


class TestCLI:
    def test_export_prints_summary(self, mcore_fp8, tiny_fp8_checkpoint, tmp_path):
        out = tmp_path / "out"
        proc = _run_cli(
            "--load-dir", str(mcore_fp8), "--save-dir", str(out), "--hf-reference-dir",
            str(tiny_fp8_checkpoint), "--format", "fp8", "--max-shard-size", "300KB",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stderr == ""  # no notice of torch or megatron-core a user cannot act on
        assert f"{NUM_QUANTIZED} unchanged" in proc.stdout and f"wrote {out}" in proc.stdout
        assert len(list(out.glob("*.safetensors"))) >= 3
        _assert_same_tensors(out, tiny_fp8_checkpoint)

    def test_missing_load_dir_exits_2_with_one_line(self, tiny_bf16_checkpoint, tmp_path):
        proc = _run_cli(
            "--load-dir", str(tmp_path / "missing"), "--save-dir", str(tmp_path / "out"),
            "--hf-reference-dir", str(tiny_bf16_checkpoint),
        )  # fmt: skip
        assert proc.returncode == 2, proc.stdout + proc.stderr
        # Only the error line comes from the tool (torch may log its own "no CUDA" notice).
        assert "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        assert errors == [
            f"convert_minimax_m2.py: error: {tmp_path / 'missing'}: checkpoint directory does not "
            f"exist"
        ], proc.stderr
        assert proc.stdout == ""
        assert not (tmp_path / "out").exists()
