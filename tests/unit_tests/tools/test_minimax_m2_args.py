# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""tools/minimax_m2_args.py: its flags, parsed by the training parser, rebuild the HF model config.

The check here is independent of the tool's own self-check: every ``TransformerConfig`` field is
compared except an explicit list of fields the training command (not the checkpoint) decides.
"""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron.minimax.models.minimax_m2.hf_config import minimax_m2_config_from_hf
from megatron.minimax.models.minimax_m2.hf_config import padded_vocab_size
from megatron.minimax.testing.tiny_checkpoint import tiny_hf_config
from megatron.minimax.training.arguments import gpt_model_config_from_args, parse_training_args
from megatron.minimax.training.minimax_m2_flags import Layout, padded_vocab_size_of

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / "tools" / "minimax_m2_args.py"
RELEASED_CONFIG = REPO / "examples" / "minimax_m2" / "configs" / "minimax_m2.5_config.json"
SHELL_SPECIAL = "'\"$`*?[]{}()<>|&;~\\"

# Decided by the training command, not by config.json: layout bookkeeping, kernel choices,
# precision plumbing and initialisation functions (compared through init_method_std instead).
NOT_FROM_CONFIG = {
    "tensor_parallel_num_weight_shards",
    "expert_tensor_parallel_num_weight_shards",
    "cp_comm_type",
    "pipeline_dtype",
    "deallocate_pipeline_outputs",
    "microbatch_group_size_per_vp_stage",
    "transformer_impl",
    "gradient_accumulation_fusion",
    "bias_activation_fusion",
    "bias_dropout_fusion",
    "masked_softmax_fusion",
    "persist_layer_norm",
    "apply_rope_fusion",
    "init_method",
    "output_layer_init_method",
    "embedding_init_method",
    "use_cpu_initialization",
    "inference_sampling_seed",
}
# Required non-architecture flags of any pretrain_gpt.py command line (run on CPU here).
NON_ARCHITECTURE_FLAGS = [
    "--seq-length", "512",
    "--micro-batch-size", "1",
    "--tokenizer-type", "NullTokenizer",
    "--transformer-impl", "local",
    "--no-rope-fusion",
]  # fmt: skip


def _load_tool():
    spec = importlib.util.spec_from_file_location("minimax_m2_args_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_tool_in_process(capsys, *argv):
    """``(exit code, stdout, stderr)`` of the tool's main()."""
    try:
        _load_tool().main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _config_from_tool_output(lines, layout: Layout):
    """What pretrain_gpt.py builds from the printed flags."""
    argv = NON_ARCHITECTURE_FLAGS + [token for line in lines for token in line.split()]
    args = parse_training_args(argv, world_size=layout.min_world_size)
    model_config = gpt_model_config_from_args(args)
    return model_config.transformer, model_config


def _assert_same_model(hf_config, lines, layout: Layout, mtp_num_layers=None):
    expected, model_args = minimax_m2_config_from_hf(
        hf_config, mtp_num_layers=mtp_num_layers, **layout.config_overrides()
    )
    parsed, model_config = _config_from_tool_output(lines, layout)
    compared = [f.name for f in dataclasses.fields(expected) if f.name not in NOT_FROM_CONFIG]
    differing = {
        name: (getattr(expected, name), getattr(parsed, name))
        for name in compared
        if getattr(expected, name) != getattr(parsed, name)
    }
    assert differing == {}
    assert len(compared) > 250  # every TransformerConfig field but NOT_FROM_CONFIG
    assert (model_config.position_embedding_type, model_config.rotary_percent) == (
        model_args.position_embedding_type,
        model_args.rotary_percent,
    )
    assert model_config.rotary_base == model_args.rotary_base
    assert model_config.seq_length == model_args.max_sequence_length
    assert not model_config.share_embeddings_and_output_weights
    # The rows converted checkpoints have: a multiple of 128 at every TP (the release: unpadded).
    assert padded_vocab_size_of(model_config) == padded_vocab_size(model_args.vocab_size, layout.tp)
    return expected


def _flag_lines(hf_config_path, *layout_args):
    result = subprocess.run(
        [sys.executable, str(TOOL), "--hf-config", str(hf_config_path), *layout_args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def tiny_config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_config") / "config.json"
    path.write_text(json.dumps(tiny_hf_config()))
    return path


class TestReleasedConfig:
    LAYOUT = Layout(tp=2, pp=2, ep=8, etp=1)

    @pytest.fixture(scope="class")
    @classmethod
    def lines(cls):
        return _flag_lines(RELEASED_CONFIG, "--tp", "2", "--pp", "2", "--ep", "8", "--etp", "1")

    def test_flags_rebuild_the_config(self, lines):
        config = _assert_same_model(RELEASED_CONFIG, lines, self.LAYOUT)
        assert (config.num_layers, config.num_moe_experts, config.kv_channels) == (62, 256, 128)

    def test_required_flags_are_present(self, lines):
        expected = {
            "--qk-layernorm-scope layer",
            "--moe-router-dtype fp32",
            "--kv-channels 128",
            "--rotary-percent 0.5",
            "--rotary-base 5000000",
            "--untie-embeddings-and-output-weights",
            "--vocab-size 200064",
            # 64 x TP 2 = 128 divides 200064 = 128 x 1563: no padding.
            "--make-vocab-size-divisible-by 64",
            "--tensor-model-parallel-size 2",
            "--sequence-parallel",
        }
        assert expected <= set(lines)

    def test_one_flag_per_line_shell_safe(self, lines):
        assert all(line.startswith("--") and "\\" not in line for line in lines)
        tokens = [token for line in lines for token in line.split()]
        assert all(token.isprintable() and not set(token) & set(SHELL_SPECIAL) for token in tokens)


class TestTinyConfig:
    def test_flags_rebuild_the_config(self, capsys, tiny_config_path):
        code, out, err = _run_tool_in_process(capsys, "--hf-config", str(tiny_config_path))
        assert code == 0, err
        lines = out.splitlines()
        _assert_same_model(tiny_config_path, lines, Layout())
        # vocab 1001 pads to 1024 rows, as in converted checkpoints.
        assert "--make-vocab-size-divisible-by 128" in lines

    def test_mtp_layers(self, capsys, tiny_config_path):
        code, out, err = _run_tool_in_process(
            capsys, "--hf-config", str(tiny_config_path), "--mtp-num-layers", "2"
        )
        assert code == 0, err
        assert "--mtp-num-layers 2" in out.splitlines()
        _assert_same_model(tiny_config_path, out.splitlines(), Layout(), mtp_num_layers=2)


class TestErrors:
    @pytest.mark.parametrize(
        "argv, message",
        [
            (
                ["--hf-config", "{tmp}/nonexistent/config.json"],
                "{tmp}/nonexistent/config.json: no such HF config file",
            ),
            (["--ep", "3"], "--ep 3 does not divide num_moe_experts 256"),
            (["--tp", "16"], "--tp 16 does not divide num_query_groups (KV heads) 8"),
            (["--tp", "3"], "--tp 3 does not divide num_query_groups (KV heads) 8"),
            (
                ["--pp", "4"],
                "--pp 4 does not divide num_layers 62 (give --first-stage-layers/"
                "--last-stage-layers for uneven stages)",
            ),
            (["--etp", "5"], "--etp 5 does not divide moe_ffn_hidden_size 1536"),
            (["--tp", "0"], "--tp must be >= 1, got 0"),
        ],
    )
    def test_bad_input_exits_2_with_one_line(self, capsys, tmp_path, argv, message):
        argv = [a.format(tmp=tmp_path) for a in argv]
        message = message.format(tmp=tmp_path)
        if "--hf-config" not in argv:
            argv = ["--hf-config", str(RELEASED_CONFIG)] + argv
        code, out, err = _run_tool_in_process(capsys, *argv)
        assert code == 2
        assert out == ""
        assert err.strip().splitlines() == [f"minimax_m2_args.py: error: {message}"]

    def test_not_a_minimax_config(self, capsys, tmp_path):
        path = tmp_path / "config.json"
        path.write_text(json.dumps({**tiny_hf_config(), "model_type": "llama"}))
        code, _, err = _run_tool_in_process(capsys, "--hf-config", str(path))
        assert code == 2
        assert "not a MiniMax-M2 config: model_type='llama'" in err

    def test_help(self, capsys):
        code, out, _ = _run_tool_in_process(capsys, "--help")
        assert code == 0
        assert (
            "--hf-config" in out
            and "mapfile -t MODEL_ARGS < <(python tools/minimax_m2_args.py" in out
        )
        assert "--model {gpt,hybrid}" in out


@pytest.fixture(scope="module")
def released_config():
    from megatron.minimax.models.minimax_m2.hf_config import minimax_m2_config_from_hf

    return minimax_m2_config_from_hf(str(RELEASED_CONFIG))[0]


class TestUnevenPipeline:

    def test_62_layers_split_15_16_16_15(self, released_config):
        from megatron.minimax.training.minimax_m2_flags import check_layout

        layout = Layout(pp=4, first_stage_layers=15, last_stage_layers=15)
        check_layout(released_config, 200064, layout)

    @pytest.mark.parametrize(
        "layout, message",
        [
            (Layout(pp=4), "--pp 4 does not divide num_layers 62"),
            (Layout(pp=4, first_stage_layers=15, last_stage_layers=16), "does not split evenly"),
            (Layout(pp=1, first_stage_layers=15), "need --pp >= 2"),
        ],
    )
    def test_impossible_stage_splits_are_refused(self, released_config, layout, message):
        from megatron.minimax.training.minimax_m2_flags import check_layout

        with pytest.raises(ValueError, match=re.escape(message)):
            check_layout(released_config, 200064, layout)


class TestHybridModelFlags:
    """``--model hybrid``: pretrain_hybrid.py flags, the pattern carrying layers, stages and MTP."""

    def test_released_config_at_pp4_uneven_with_mtp(self, capsys):
        code, out, err = _run_tool_in_process(
            capsys, "--hf-config", str(RELEASED_CONFIG), "--model", "hybrid", "--tp", "2",
            "--pp", "4", "--ep", "8", "--first-stage-layers", "15", "--last-stage-layers", "15",
            "--mtp-num-layers", "1",
        )  # fmt: skip
        assert code == 0, err
        lines = out.splitlines()
        (pattern_line,) = [line for line in lines if line.startswith("--hybrid-layer-pattern")]
        pattern = pattern_line.split()[1]
        main, mtp = pattern.split("/")
        assert [len(stage) for stage in main.split("|")] == [30, 32, 32, 30]
        assert set(main.replace("|", "")) == {"*", "E"} and main.replace("|", "")[:2] == "*E"
        assert mtp == "*E"
        flags = {line.split()[0] for line in lines}
        for absent in ("--num-layers", "--mtp-num-layers", "--decoder-first-pipeline-num-layers"):
            assert absent not in flags
        # What pretrain_hybrid.py builds from them: the GPT model's config with 124 layers.
        from megatron.minimax.training.arguments import hybrid_model_config_from_args

        argv = NON_ARCHITECTURE_FLAGS + [t for line in lines for t in line.split()]
        args = parse_training_args(argv, world_size=Layout(tp=2, pp=4, ep=8).min_world_size)
        model_config = hybrid_model_config_from_args(args)
        assert model_config.hybrid_layer_pattern == pattern
        transformer = model_config.transformer
        assert (transformer.num_layers, transformer.mtp_num_layers) == (124, 1)
        assert transformer.qk_layernorm_scope == "layer" and transformer.moe_router_keep_in_fp32
        assert transformer.num_moe_experts == 256 and transformer.hidden_size == 3072

    def test_impossible_split_is_refused_with_one_line(self, capsys):
        code, _, err = _run_tool_in_process(
            capsys, "--hf-config", str(RELEASED_CONFIG), "--model", "hybrid", "--pp", "4",
        )  # fmt: skip
        assert code == 2 and "--pp 4 does not divide num_layers 62" in err
        assert len(err.strip().splitlines()) == 1
