# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""tools/quantize_minimax_m2.py: a run as users launch it, and its one-line refusals (exit 2).

The numerics of the export are tested in tests/unit_tests/quantization/test_hf_export.py; here
the command line: a real run on a converted torch_dist checkpoint, and bad inputs refused before
any process group or model exists.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[3]
TOOL = ROOT / "tools" / "quantize_minimax_m2.py"
PROG = "quantize_minimax_m2.py"


def _subprocess(args, env_extra=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, str(TOOL), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _main(argv):
    sys.path.insert(0, str(TOOL.parent))
    try:
        import quantize_minimax_m2
    finally:
        sys.path.pop(0)
    return quantize_minimax_m2.main(argv)


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.safetensors"
    tokens = torch.randint(0, 1001, (4, 16), generator=torch.Generator().manual_seed(7))
    save_file({"tokens": tokens}, str(path))
    return path


def _refused(capsys, argv):
    with pytest.raises(SystemExit) as e:
        _main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{PROG}: error: "), err
    return err[0][len(f"{PROG}: error: ") :]


def _quantize(load_dir, reference_dir, tokens_file, out):
    return _subprocess(
        ["--load-dir", str(load_dir), "--hf-reference-dir", str(reference_dir),
         "--calib-tokens-file", str(tokens_file), "--save-dir", str(out)]
    )  # fmt: skip


def _tensors(directory):
    from safetensors.torch import load_file

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    out = {}
    for name in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(directory / name)))
    return out


@pytest.fixture(scope="module")
def gpt_checkpoint_export(
    converted_fp8_checkpoint, tiny_fp8_checkpoint, tokens_file, tmp_path_factory
):
    root = tmp_path_factory.mktemp("quantized")
    out = root / "nvfp4"
    proc = _quantize(converted_fp8_checkpoint, tiny_fp8_checkpoint, tokens_file, out)
    return proc, root, out


def test_quantizes_a_converted_checkpoint(gpt_checkpoint_export):
    proc, root, out = gpt_checkpoint_export
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "nvfp4-experts (NVFP4), layout TP1, 1 processes"
    assert lines[1] == "calibrated on 4 sequences (64 tokens)"
    assert lines[-1] == f"wrote {out}"
    assert "96 quantized modules, 22 kept unquantized" in proc.stdout
    quant = json.loads((out / "hf_quant_config.json").read_text())
    assert quant["quantization"]["quant_algo"] == "NVFP4"
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "modelopt"
    assert sorted(p.name for p in root.iterdir()) == ["nvfp4"]  # nothing else left behind


def _save_as_hybrid(rank, world_size, hf_config, gpt_dir, hybrid_dir):
    from megatron.core import dist_checkpointing

    from megatron.minimax.models.minimax_m2 import parity

    layout = parity.ParallelLayout()
    parity.initialize_layout(layout)
    loaded = parity.build_from_dist_checkpoint(
        hf_config, gpt_dir, layout, params_dtype=torch.bfloat16, model="hybrid"
    )
    os.makedirs(hybrid_dir)
    dist_checkpointing.save(loaded.model.sharded_state_dict(), hybrid_dir)
    return type(loaded.model).__name__


def test_quantizes_a_hybrid_checkpoint_as_the_gpt_one(
    gpt_checkpoint_export, converted_fp8_checkpoint, tiny_fp8_checkpoint, tokens_file, tmp_path
):
    """A checkpoint saved by a HybridModel (pretrain_hybrid.py) quantizes to the same bytes as
    the GPT-layout checkpoint holding the same weights."""
    from megatron.minimax.models.minimax_m2.parity import checkpoint_model_class
    from megatron.minimax.testing.distributed import run_in_processes

    hf_config = json.loads((tiny_fp8_checkpoint / "config.json").read_text())
    hybrid_dir = tmp_path / "hybrid_ckpt"
    args = (hf_config, str(converted_fp8_checkpoint), str(hybrid_dir))
    assert run_in_processes(_save_as_hybrid, 1, *args) == ["HybridModel"]
    assert checkpoint_model_class(hybrid_dir) == "hybrid"
    out = tmp_path / "nvfp4"
    proc = _quantize(hybrid_dir, tiny_fp8_checkpoint, tokens_file, out)
    assert proc.returncode == 0, proc.stderr
    _, _, gpt_out = gpt_checkpoint_export
    expected, got = _tensors(gpt_out), _tensors(out)
    assert len(got) > 100 and list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert (out / "hf_quant_config.json").read_text() == (
        gpt_out / "hf_quant_config.json"
    ).read_text()


def test_missing_modelopt_is_one_line(tmp_path, tiny_bf16_checkpoint, tokens_file):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "modelopt.py").write_text("raise ImportError(\"No module named 'modelopt'\")\n")
    proc = _subprocess(
        ["--hf-dir", str(tiny_bf16_checkpoint), "--calib-tokens-file", str(tokens_file),
         "--save-dir", str(tmp_path / "out")],
        env_extra={"PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )  # fmt: skip
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith(PROG)]
    assert errors == [
        f"{PROG}: error: nvidia-modelopt is not importable (No module named 'modelopt'); "
        "install nvidia-modelopt==0.47.0 and requests"
    ], proc.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_recipe(capsys, tiny_bf16_checkpoint, tmp_path):
    message = _refused(
        capsys,
        ["--hf-dir", str(tiny_bf16_checkpoint), "--recipe", "int4", "--save-dir", str(tmp_path)],
    )
    assert message == "unknown quantization recipe 'int4'; choose one of nvfp4-experts, nvfp4, fp8"


def test_non_divisible_shapes(capsys, tmp_path):
    from megatron.minimax.testing.tiny_checkpoint import tiny_hf_config

    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "config.json").write_text(json.dumps(tiny_hf_config(intermediate_size=40)))
    message = _refused(
        capsys, ["--load-dir", str(tmp_path), "--hf-reference-dir", str(reference),
                 "--save-dir", str(tmp_path / "out")],
    )  # fmt: skip
    assert message == "expert FFN size (w2 inputs) 40 is not a multiple of the NVFP4 group size 16"
    message = _refused(
        capsys, ["--load-dir", str(tmp_path), "--hf-reference-dir", str(reference), "--tp", "3",
                 "--recipe", "fp8", "--save-dir", str(tmp_path / "out")],
    )  # fmt: skip
    assert message.startswith(f"{tmp_path}: not a Megatron torch_dist checkpoint")


def test_empty_calibration_data(capsys, tiny_bf16_checkpoint, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = str(tmp_path / "empty_text_document")
    IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32).finalize(prefix + ".idx")
    message = _refused(
        capsys, ["--hf-dir", str(tiny_bf16_checkpoint), "--calib-data", prefix,
                 "--save-dir", str(tmp_path / "out")],
    )  # fmt: skip
    assert message == f"{prefix}: the calibration data holds no tokens"


def test_plain_checkpoint_without_calibration_data(
    capsys, converted_fp8_checkpoint, tiny_fp8_checkpoint, tmp_path
):
    message = _refused(
        capsys, ["--load-dir", str(converted_fp8_checkpoint), "--hf-reference-dir",
                 str(tiny_fp8_checkpoint), "--save-dir", str(tmp_path / "out")],
    )  # fmt: skip
    assert message == (
        f"{converted_fp8_checkpoint} holds no trained quantizers: calibration data is needed "
        "(--calib-data or --calib-tokens-file)"
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "give exactly one of --load-dir and --hf-dir"),
        (["--load-dir", "."],
         "--load-dir needs --hf-reference-dir (the model's config.json and tokenizer)"),
        (["--hf-dir", ".", "--calib-samples", "0"], "--calib-samples must be >= 1, got 0"),
        (["--hf-dir", "missing"], "missing: --hf-dir is not a directory"),
    ],
)  # fmt: skip
def test_bad_arguments(capsys, tmp_path, argv, expected):
    assert _refused(capsys, argv + ["--save-dir", str(tmp_path / "out")]) == expected


def test_help_names_the_recipes_and_serving():
    proc = _subprocess(["--help"])
    assert proc.returncode == 0
    assert "nvfp4-experts (default)" in proc.stdout and "--quantization modelopt_fp4" in proc.stdout
