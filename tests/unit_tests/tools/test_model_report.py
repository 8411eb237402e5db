# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""tools/model_report.py: parameter counts and per-rank memory from the meta-device model.

Expected values are derived independently here, from the HF config's shapes (as in
docs minimax_m2_architecture.md 7.1), and compared with what the tool counts on the model.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron.minimax.models.minimax_m2.hf_config import padded_vocab_size

from megatron.minimax.testing.tiny_checkpoint import tiny_hf_config

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / "tools" / "model_report.py"
RELEASED_CONFIG = REPO / "examples" / "minimax_m2" / "configs" / "minimax_m2.5_config.json"

# MiniMax-M2.5 (architecture doc 7.1): attention 44,040,192 + 256 experts x 14,155,776 +
# router 786,432 + norms 13,312 per layer; 62 layers; embedding and lm_head 200,064 x 3072.
M25_PER_LAYER = 44_040_192 + 256 * 14_155_776 + 786_432 + 13_312
M25_ACTIVE_PER_LAYER = 44_040_192 + 8 * 14_155_776 + 786_432 + 13_312
M25_VOCAB_ROWS = 200_064 * 3072
M25_TOTAL = 62 * M25_PER_LAYER + 2 * M25_VOCAB_ROWS + 3072  # + final norm
M25_EXPERT_BIAS = 62 * 256
BUILD_SECONDS_LIMIT = 60
PEAK_RSS_MIB_LIMIT = 4096  # the bf16 weights alone would be 426 GiB


def _tiny_counts(hf):
    hidden, head_dim = hf["hidden_size"], hf["head_dim"]
    q, kv = hf["num_attention_heads"] * head_dim, hf["num_key_value_heads"] * head_dim
    experts, ffn = hf["num_local_experts"], hf["intermediate_size"]
    attention = hidden * q + 2 * hidden * kv + q * hidden + q + kv
    expert = 3 * hidden * ffn
    layer = attention + experts * expert + experts * hidden + 2 * hidden
    active = attention + hf["num_experts_per_tok"] * expert + experts * hidden + 2 * hidden
    # Embedding and output rows as built: padded to a multiple of 128 (the release: unpadded).
    vocab = padded_vocab_size(hf["vocab_size"]) * hidden
    return {
        "total": hf["num_hidden_layers"] * layer + 2 * vocab + hidden,
        "active_decoder_layers": hf["num_hidden_layers"] * active,
        "lm_head": vocab,
    }


def _load_tool():
    spec = importlib.util.spec_from_file_location("model_report_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_tool_in_process(capsys, *argv):
    try:
        _load_tool().main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def released_report():
    """The tool as a user runs it: TP2 x PP2 x EP8 (ETP1) on 64 GPUs."""
    argv = ["--tp", "2", "--pp", "2", "--ep", "8", "--etp", "1", "--num-gpus", "64"]
    result = subprocess.run(
        [sys.executable, str(TOOL), "--hf-config", str(RELEASED_CONFIG), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class TestReleasedModel:
    def test_total_parameters(self, released_report):
        params = released_report["parameters"]
        assert params["total"] == M25_TOTAL
        # Architecture doc 7.1 counts e_score_correction_bias too: 228,689,764,864.
        assert params["total_with_expert_bias"] == M25_TOTAL + M25_EXPERT_BIAS == 228_689_764_864
        assert released_report["parameters_billions"]["total"] == pytest.approx(228.69, abs=0.01)

    def test_active_parameters(self, released_report):
        params = released_report["parameters"]
        assert params["active_decoder_layers"] == 62 * M25_ACTIVE_PER_LAYER  # 9.80 B
        assert params["lm_head"] == M25_VOCAB_ROWS
        assert params["active_decoder_layers_and_lm_head"] == (
            62 * M25_ACTIVE_PER_LAYER + 3072 + M25_VOCAB_ROWS
        )
        billions = released_report["parameters_billions"]
        assert billions["active_decoder_layers"] == pytest.approx(9.80, abs=0.01)
        assert billions["active_decoder_layers_and_lm_head"] == pytest.approx(10.42, abs=0.01)

    def test_whole_model_build_is_fast_and_storage_free(self, released_report):
        build = released_report["build"]
        assert build["device"] == "meta"
        assert build["whole_model_build_seconds"] < BUILD_SECONDS_LIMIT
        assert build["peak_rss_mib"] < PEAK_RSS_MIB_LIMIT

    def test_layout(self, released_report):
        layout = released_report["layout"]
        assert (layout["dp"], layout["expert_dp"]) == (16, 4)
        assert released_report["model"]["padded_vocab_size"] == 200_064

    def test_per_rank_memory(self, released_report):
        stages = released_report["per_rank_memory"]["stages"]
        assert [s["pp_rank"] for s in stages] == [0, 1]
        layers_per_stage, local_experts = 31, 256 // 8
        expert_params = layers_per_stage * local_experts * 14_155_776
        router_params = layers_per_stage * 786_432  # fp32, replicated over TP
        # TP-sharded attention projections; replicated norms (layer + full-dim q/k norms).
        attention = 44_040_192 // 2 + 2 * 3072 + 6144 + 1024
        dense = layers_per_stage * attention + M25_VOCAB_ROWS // 2
        for stage, extra in zip(stages, (0, 3072)):  # the last stage has the final norm
            bf16 = dense + extra + expert_params
            assert stage["expert_parameters"] == expert_params
            assert stage["fp32_parameters"] == router_params
            assert stage["parameters"] == bf16 + router_params
            assert stage["weights_bytes"] == 2 * bf16 + 4 * router_params + 4 * 31 * 256
            assert stage["gradients_bytes"] == 4 * (bf16 + router_params)
            optimizer = 12 * (dense + extra) / 16 + 12 * expert_params / 4 + 8 * router_params / 16
            assert stage["optimizer_bytes"] == pytest.approx(optimizer, abs=1)
        assert released_report["per_rank_memory"]["max_total_gib"] == max(
            s["total_gib"] for s in stages
        )


class TestTinyModel:
    def test_counts_match_the_config_shapes(self, capsys, tmp_path):
        hf = tiny_hf_config()
        path = tmp_path / "config.json"
        path.write_text(json.dumps(hf))
        code, out, err = _run_tool_in_process(
            capsys, "--hf-config", str(path), "--pp", "2", "--num-gpus", "2", "--seq-length", "64"
        )
        assert code == 0, err
        report = json.loads(out)
        expected = _tiny_counts(hf)
        params = report["parameters"]
        assert params["total"] == expected["total"]
        assert params["active_decoder_layers"] == expected["active_decoder_layers"]
        assert params["lm_head"] == expected["lm_head"]
        stages = report["per_rank_memory"]["stages"]
        assert [s["pp_rank"] for s in stages] == [0, 1]
        assert sum(s["parameters"] for s in stages) == expected["total"]


class TestHybridModel:
    def test_same_counts_and_per_rank_memory_as_the_gpt_model(self, capsys, tmp_path):
        hf = tiny_hf_config()
        path = tmp_path / "config.json"
        path.write_text(json.dumps(hf))
        argv = ["--hf-config", str(path), "--pp", "2", "--ep", "2", "--num-gpus", "4"]
        argv += ["--seq-length", "64"]
        reports = {}
        for model_class in ("gpt", "hybrid"):
            code, out, err = _run_tool_in_process(capsys, *argv, "--model", model_class)
            assert code == 0, err
            reports[model_class] = json.loads(out)
        gpt, hybrid = reports["gpt"], reports["hybrid"]
        assert (gpt["model"]["class"], hybrid["model"]["class"]) == ("GPTModel", "HybridModel")
        assert hybrid["model"]["hybrid_layer_pattern"] == "*E*E|*E*E"
        assert hybrid["parameters"] == gpt["parameters"]
        assert hybrid["parameters"]["total"] == _tiny_counts(hf)["total"]
        assert hybrid["per_rank_memory"] == gpt["per_rank_memory"]


class TestErrors:
    @pytest.mark.parametrize(
        "argv, message",
        [
            (["--ep", "3"], "--ep 3 does not divide num_moe_experts 256"),
            (["--tp", "16"], "--tp 16 does not divide num_query_groups (KV heads) 8"),
            (["--tp", "2", "--num-gpus", "5"], "--num-gpus 5 is not a multiple of TP x PP = 2"),
            (
                ["--ep", "8", "--etp", "1", "--num-gpus", "4"],
                "--num-gpus 4 is not a multiple of ETP x EP x PP = 8",
            ),
            (
                ["--tp", "4", "--seq-length", "4098"],
                "--tp 4 does not divide --seq-length 4098 (sequence parallelism)",
            ),
            (
                ["--seq-length", "200000"],
                "--seq-length 200000 exceeds max_position_embeddings 196608",
            ),
        ],
    )
    def test_impossible_layout_exits_2_with_one_line(self, capsys, argv, message):
        code, out, err = _run_tool_in_process(capsys, "--hf-config", str(RELEASED_CONFIG), *argv)
        assert code == 2
        assert out == ""
        assert err.strip().splitlines() == [f"model_report.py: error: {message}"]

    def test_bad_path(self, capsys, tmp_path):
        code, _, err = _run_tool_in_process(capsys, "--hf-config", str(tmp_path))
        assert code == 2
        expected = f"model_report.py: error: {tmp_path}/config.json: no such HF config file"
        assert err.strip() == expected

    def test_help(self, capsys):
        code, out, _ = _run_tool_in_process(capsys, "--help")
        assert code == 0
        assert "--num-gpus" in out and "byte_accounting" in out
