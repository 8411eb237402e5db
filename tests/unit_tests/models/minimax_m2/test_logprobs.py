# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Per-token log-probabilities from vocab-parallel Megatron logits vs transformers' fp32 model.

The library runs at TP1, TP2xEP2 and PP2 in one 4-process gloo launch; tools/score_logprobs.py
runs as users launch it (torchrun at TP2, and one plain process). Sequence lengths are prime, so
sequence parallelism pads internally.
"""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron.minimax.models.minimax_m2.hf_reference import load_hf_reference_model
from megatron.minimax.models.minimax_m2.logprobs import (
    LOGPROBS_ATOL,
    compare_log_probs,
    hf_log_probs,
    log_probs_from_logits,
    scored_positions,
    vocab_parallel_log_probs,
)
from megatron.minimax.models.minimax_m2.parity import ParallelLayout
from megatron.minimax.testing.distributed import run_in_processes

TOOL = Path(__file__).resolve().parents[4] / "tools" / "score_logprobs.py"
WORLD_SIZE = 4
LAYOUTS = [ParallelLayout(), ParallelLayout(tp=2, ep=2, etp=1), ParallelLayout(pp=2)]
PADDED_ROW_SCALE = 100.0
"""Padded output rows are set to N(0, 100^2) entries: their logits dwarf the real ones (O(1))."""


def _tokens(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 13), generator=torch.Generator().manual_seed(11))


def _inflate_padded_output_rows(loaded) -> int:
    """Overwrite this rank's padded output-layer rows with huge values; returns how many."""
    from megatron.core import parallel_state

    output_layer = getattr(loaded.model, "output_layer", None)
    if output_layer is None or not loaded.model.post_process:
        return 0
    weight = output_layer.weight  # [V/tp, h]
    start = parallel_state.get_tensor_model_parallel_rank() * weight.shape[0]
    first_padded = max(loaded.model_args.vocab_size - start, 0)
    rows = weight.shape[0] - first_padded
    if rows > 0:
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            weight[first_padded:] = PADDED_ROW_SCALE * torch.randn(
                rows, weight.shape[1], generator=generator
            ).to(weight.dtype)
    return rows


def _worker(rank, world_size, hf_dir, layouts):
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2.logprobs import megatron_log_probs
    from megatron.minimax.models.minimax_m2.parity import build_from_hf, initialize_layout

    ckpt = HFCheckpoint(hf_dir)
    tokens = _tokens(ckpt.config["vocab_size"])
    out = {}
    for layout in layouts:
        initialize_layout(layout)
        loaded = build_from_hf(ckpt.config, lambda name: ckpt.get(name, torch.float32), layout)
        # PP2 also runs two micro-batches through the schedule.
        micro_batch_size = 1 if layout.pp > 1 else None
        clean = megatron_log_probs(loaded, tokens, micro_batch_size)
        inflated_rows = torch.tensor([_inflate_padded_output_rows(loaded)])
        torch.distributed.all_reduce(inflated_rows, op=torch.distributed.ReduceOp.MAX)
        with_padding_rows = megatron_log_probs(loaded, tokens, micro_batch_size)
        # Sensitivity check: the same computation, told that the padded rows are tokens.
        as_tokens = dataclasses.replace(
            loaded,
            model_args=dataclasses.replace(
                loaded.model_args, vocab_size=loaded.ctx.padded_vocab_size
            ),
        )
        padding_as_tokens = megatron_log_probs(as_tokens, tokens, micro_batch_size)
        out[str(layout)] = dict(
            clean=clean,
            with_padding_rows=with_padding_rows,
            padding_as_tokens=padding_as_tokens,
            inflated_rows=int(inflated_rows.item()),
        )
    return out


@pytest.fixture(scope="module")
def hf_model(tiny_bf16_checkpoint):
    return load_hf_reference_model(tiny_bf16_checkpoint)


@pytest.fixture(scope="module")
def tokens(hf_model):
    return _tokens(hf_model.config.vocab_size)


@pytest.fixture(scope="module")
def reference(hf_model, tokens):
    return hf_log_probs(hf_model, tokens)


@pytest.fixture(scope="module")
def megatron_by_layout(tiny_bf16_checkpoint):
    return run_in_processes(_worker, WORLD_SIZE, tiny_bf16_checkpoint, LAYOUTS)[0]


class TestMegatronLogProbs:
    @pytest.mark.parametrize("layout", LAYOUTS, ids=str)
    def test_match_hf_fp32_log_probs(self, megatron_by_layout, reference, layout):
        result = compare_log_probs(megatron_by_layout[str(layout)]["clean"], reference)
        assert result.max_abs_diff <= LOGPROBS_ATOL, result
        assert result.num_scored == reference.numel()

    @pytest.mark.parametrize("layout", LAYOUTS, ids=str)
    def test_padded_vocab_rows_never_change_the_result(self, megatron_by_layout, layout):
        got = megatron_by_layout[str(layout)]
        # 1001 tokens padded to 1024 rows: 23 padded rows, all on the last TP rank.
        assert got["inflated_rows"] == 23
        assert torch.equal(got["with_padding_rows"], got["clean"])
        # Counted as tokens, the inflated rows would take almost all probability mass.
        assert (got["padding_as_tokens"] - got["clean"]).abs().mean() > 10.0

    def test_reference_log_probs_are_not_trivial(self, reference):
        # Agreement at 1e-4 means something only if log-probs vary by O(1) across tokens.
        assert reference.max() < 0.0
        assert reference.std() > 0.5


class TestVocabParallelLogProbs:
    def test_single_rank_excludes_padding_rows(self):
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(3, 5, 16, generator=generator)
        logits[..., 13:] = 1e4  # padding rows
        targets = torch.randint(0, 13, (3, 5), generator=generator)
        expected = torch.log_softmax(logits[..., :13], dim=-1)
        expected = expected.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        got = vocab_parallel_log_probs(logits, targets, vocab_size=13)
        assert torch.allclose(got, expected, atol=1e-6)

    def test_bf16_logits_give_fp32_log_softmax_at_next_tokens(self):
        logits = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1)).bfloat16()
        tokens = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(2))
        expected = log_probs_from_logits(logits, tokens)
        got = vocab_parallel_log_probs(logits[:, :-1], tokens[:, 1:], vocab_size=32)
        assert got.dtype == torch.float32
        assert torch.allclose(got, expected, atol=1e-6)


class TestMasks:
    def test_mask_marks_predicted_tokens(self):
        tokens = torch.zeros(2, 5, dtype=torch.int64)
        mask = torch.tensor([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1]])
        scored = scored_positions(mask, tokens)
        # logprobs[:, t] scores tokens[:, t+1]
        assert scored.tolist() == [[False, True, True, False], [True, True, True, True]]
        assert scored_positions(None, tokens).all()

    def test_comparison_counts_only_scored_positions(self):
        reference = torch.full((1, 4), -2.0)
        megatron = reference.clone()
        megatron[0, 0] += 5.0  # a large difference on an unscored position
        megatron[0, 2] += 2.0**-16  # exact in fp32
        scored = torch.tensor([[False, True, True, True]])
        result = compare_log_probs(megatron, reference, scored)
        assert result.num_scored == 3
        assert result.max_abs_diff == 2.0**-16
        assert result.kl_k3 >= 0.0
        assert not compare_log_probs(megatron, reference).ok()

    @pytest.mark.parametrize("bad", [torch.ones(2, 4), torch.full((2, 5), 2)])
    def test_bad_masks_are_refused(self, bad):
        with pytest.raises(ValueError):
            scored_positions(bad, torch.zeros(2, 5, dtype=torch.int64))


def _run_tool(args, nproc=None, timeout=300):
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
def masked_tokens_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "rollout.safetensors"
    tokens = torch.randint(0, 1001, (2, 13), generator=torch.Generator().manual_seed(5))
    response_mask = torch.zeros(2, 13, dtype=torch.int64)
    response_mask[0, 4:] = 1
    response_mask[1, 7:] = 1
    save_file({"tokens": tokens, "response_mask": response_mask}, str(path))
    return path


class TestScoreLogProbsTool:
    def test_hybrid_model_scores_like_hf(self, tiny_bf16_checkpoint, masked_tokens_file):
        proc = _run_tool(
            ["--hf-dir", str(tiny_bf16_checkpoint), "--model", "hybrid", "--tokens-file",
             str(masked_tokens_file), "--compare-hf"],
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "HybridModel at layout TP1" in proc.stdout and "PASS" in proc.stdout

    def test_tp2_scores_masked_tokens_like_hf(
        self, tiny_bf16_checkpoint, masked_tokens_file, tmp_path
    ):
        output = tmp_path / "scores.safetensors"
        proc = _run_tool(
            ["--hf-dir", str(tiny_bf16_checkpoint), "--tp", "2", "--tokens-file",
             str(masked_tokens_file), "--output", str(output), "--compare-hf"],
            nproc=2,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "layout TP2xSP" in proc.stdout and "PASS" in proc.stdout
        assert "15 scored positions" in proc.stdout  # 9 + 6 response tokens after the first
        scores = load_file(str(output))
        inputs = load_file(str(masked_tokens_file))
        scored = scored_positions(inputs["response_mask"], inputs["tokens"])
        assert scores["logprobs"].dtype == torch.float32
        assert scores["logprobs"].shape == (2, 12)
        assert torch.equal(scores["scored"], scored)
        assert (scores["logprobs"][~scored] == 0).all()
        reference = hf_log_probs(load_hf_reference_model(tiny_bf16_checkpoint), inputs["tokens"])
        diff = (scores["logprobs"] - reference)[scored].abs().max()
        assert diff <= LOGPROBS_ATOL

    def test_bf16_checkpoint_compares_against_rounded_reference(
        self, tiny_fp8_checkpoint, converted_fp8_checkpoint, masked_tokens_file
    ):
        # The reference holds the bf16-rounded weights Megatron loaded, so it agrees to fp32
        # accuracy; a tolerance no computation meets then exercises the failing exit status.
        proc = _run_tool(
            ["--hf-dir", str(tiny_fp8_checkpoint), "--load-dir", str(converted_fp8_checkpoint),
             "--tokens-file", str(masked_tokens_file), "--compare-hf", "--tolerance", "1e-30"]
        )  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "FAIL" in proc.stdout
        assert proc.stderr == ""  # no notice of torch or megatron-core a user cannot act on
        max_diff = float(re.search(r"max \|logprob diff\|\s+(\S+)", proc.stdout).group(1))
        assert max_diff <= LOGPROBS_ATOL

    @pytest.mark.parametrize(
        "tensors, message",
        [
            ({"ids": torch.zeros(1, 4, dtype=torch.int64)}, "no tensor named 'tokens'"),
            ({"tokens": torch.zeros(1, 4, dtype=torch.int32)}, "must be int64"),
            ({"tokens": torch.full((1, 4), 5000)}, "token ids must lie in [0, 1001)"),
            (
                {"tokens": torch.zeros(1, 4, dtype=torch.int64), "loss_mask": torch.ones(1, 3)},
                "'loss_mask' has shape",
            ),
            (
                {
                    "tokens": torch.zeros(1, 4, dtype=torch.int64),
                    "loss_mask": torch.ones(1, 4),
                    "response_mask": torch.ones(1, 4),
                },
                "keep one",
            ),
        ],
    )
    def test_bad_tokens_file_exits_2(
        self, tiny_bf16_checkpoint, tmp_path, capsys, tensors, message
    ):
        sys.path.insert(0, str(TOOL.parent))
        try:
            import score_logprobs
        finally:
            sys.path.remove(str(TOOL.parent))
        path = tmp_path / "bad.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(SystemExit) as exit_info:
            score_logprobs.main(["--hf-dir", str(tiny_bf16_checkpoint), "--tokens-file", str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("score_logprobs.py: error:") and message in err
        assert len(err.splitlines()) == 1
