# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""tools/checkpoint/verify_minimax_m2.py as users launch it (torchrun, gloo on CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron.minimax.models.minimax_m2.hf_reference import hf_logits, load_hf_reference_model
from megatron.minimax.models.minimax_m2.parity import LOGITS_ATOL

TOOL = Path(__file__).resolve().parents[3] / "tools" / "checkpoint" / "verify_minimax_m2.py"


def _run(args, nproc=None, timeout=300):
    if nproc is None:
        cmd = [sys.executable, str(TOOL), *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--standalone", str(TOOL), *args,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.safetensors"
    # A prime length: sequence parallelism at TP2 pads it internally.
    tokens = torch.randint(0, 1001, (2, 13), generator=torch.Generator().manual_seed(5))
    save_file({"tokens": tokens}, str(path))
    return path


class TestVerifyTool:
    def test_tp2_fp8_checkpoint_passes_and_dumps_logits(
        self, tiny_fp8_checkpoint, tokens_file, tmp_path
    ):
        dump = tmp_path / "logits.safetensors"
        proc = _run(
            ["--hf-dir", str(tiny_fp8_checkpoint), "--tp", "2", "--tokens-file", str(tokens_file),
             "--dump-logits", str(dump)],
            nproc=2,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "PASS" in proc.stdout and "layout TP2xSP" in proc.stdout
        logits = load_file(str(dump))["logits"]
        tokens = load_file(str(tokens_file))["tokens"]
        assert logits.dtype == torch.float32 and logits.shape == (2, 13, 1001)
        reference = hf_logits(load_hf_reference_model(tiny_fp8_checkpoint), tokens)
        assert (logits - reference).abs().max() <= LOGITS_ATOL

    @pytest.mark.parametrize(
        "nproc, layout_args, label",
        [
            (4, ["--tp", "2", "--ep", "2", "--etp", "1"], "TP2xEP2xETP1xSP"),
            (2, ["--pp", "2"], "TP1xPP2"),
        ],
    )
    def test_converted_checkpoint_matches_hf(
        self, tiny_fp8_checkpoint, converted_fp8_checkpoint, nproc, layout_args, label
    ):
        # FP8 release -> torch_dist (bf16) -> loaded and resharded at this layout; the reference
        # is HF on the same bf16-rounded weights.
        proc = _run(
            ["--hf-dir", str(tiny_fp8_checkpoint), "--load-dir", str(converted_fp8_checkpoint),
             *layout_args],
            nproc=nproc,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"layout {label}" in proc.stdout and "PASS" in proc.stdout
        assert f"weights from {converted_fp8_checkpoint}" in proc.stdout

    def test_hybrid_model_loads_the_gpt_layout_checkpoint(
        self, tiny_fp8_checkpoint, converted_fp8_checkpoint
    ):
        # A HybridModel run reading the hf-to-mcore checkpoint through megatron-core's
        # load-time translation of GPT checkpoints.
        proc = _run(
            ["--hf-dir", str(tiny_fp8_checkpoint), "--load-dir", str(converted_fp8_checkpoint),
             "--model", "hybrid", "--tp", "2", "--ep", "2", "--etp", "1"],
            nproc=4,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "HybridModel at layout TP2xEP2xETP1xSP" in proc.stdout and "PASS" in proc.stdout

    def test_uneven_pipeline_stages(self, tiny_bf16_checkpoint, tokens_file):
        # 4 layers over PP3 as 1/2/1.
        proc = _run(
            ["--hf-dir", str(tiny_bf16_checkpoint), "--pp", "3", "--first-stage-layers", "1",
             "--last-stage-layers", "1", "--tokens-file", str(tokens_file)],
            nproc=3,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "layout TP1xPP3[first=1,last=1]" in proc.stdout and "PASS" in proc.stdout

    def test_layout_gloo_cannot_run_is_refused_with_one_line(self, tiny_bf16_checkpoint):
        proc = _run(["--hf-dir", str(tiny_bf16_checkpoint), "--tp", "2", "--ep", "2"], nproc=4)
        assert proc.returncode != 0
        errors = [
            line for line in proc.stderr.splitlines() if "verify_minimax_m2.py: error:" in line
        ]
        assert errors and all("cannot run on gloo" in line for line in errors), proc.stderr
        assert "ProcessGroupGloo" not in proc.stderr

    def test_exit_status_1_above_tolerance(self, tiny_bf16_checkpoint):
        proc = _run(["--hf-dir", str(tiny_bf16_checkpoint), "--logits-atol", "1e-12"])
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "FAIL" in proc.stdout
        # No notice of torch, megatron-core or transformers that a user cannot act on.
        assert proc.stderr == ""

    @pytest.mark.parametrize(
        "args, message",
        [
            (["--hf-dir", "__MISSING_DIR__"], "__MISSING_DIR__"),
            (["--tp", "3"], "TP=3 does not divide num_attention_heads=8"),
            (["--tokens-file", "__BAD_TOKENS__"], "no tensor named 'tokens'"),
        ],
    )
    def test_bad_input_exits_2_with_one_line(self, tiny_bf16_checkpoint, tmp_path, args, message):
        bad_tokens = tmp_path / "bad.safetensors"
        save_file({"ids": torch.zeros(1, 4, dtype=torch.int64)}, str(bad_tokens))
        missing = str(tmp_path / "nonexistent")
        substitutes = {"__BAD_TOKENS__": str(bad_tokens), "__MISSING_DIR__": missing}
        args = [substitutes.get(a, a) for a in args]
        message = substitutes.get(message, message)
        if "--hf-dir" not in args:
            args = ["--hf-dir", str(tiny_bf16_checkpoint), *args]
        proc = _run(args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        errors = [
            line for line in proc.stderr.splitlines() if "verify_minimax_m2.py: error:" in line
        ]
        assert len(errors) == 1 and message in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr
