# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""examples/minimax_m2/*.sh: each script's pretrain_gpt.py (or pretrain_hybrid.py) command parses
and validates with the training parser at its own world size, and builds the released
architecture."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from megatron.training.vocab_utils import calculate_padded_vocab_size

from megatron.minimax.training.arguments import parse_training_args

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "minimax_m2"
RELEASED_CONFIG = EXAMPLES / "configs" / "minimax_m2.5_config.json"


ENTRY_POINTS = ("pretrain_gpt.py", "pretrain_hybrid.py")


def _dry_run_command(script: str, env: dict, *extra_args: str) -> list:
    """The command a script prints with DRY_RUN=1."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "DRY_RUN": "1",
        **env,
    }
    proc = subprocess.run(
        ["bash", str(EXAMPLES / script), *extra_args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout.strip().splitlines()[-1])


def _entry(command: list) -> int:
    return next(i for i, token in enumerate(command) if token.endswith(ENTRY_POINTS))


def _dry_run(script: str, env: dict, *extra_args: str) -> list:
    """The training flags of a script's command (after the entry point)."""
    command = _dry_run_command(script, env, *extra_args)
    return command[_entry(command) + 1 :]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    (path / "config.json").write_text(RELEASED_CONFIG.read_text())
    return path


def _cluster_env(hf_dir, **extra):
    return {
        "HF_DIR": str(hf_dir),
        "LOAD_DIR": "ckpt/minimax-m2.5-mcore",
        "SAVE_DIR": "ckpt/run",
        "DATA_PATH": "1.0 data/corpus_text_document",
        **extra,
    }


class TestFullModelScripts:
    @pytest.mark.parametrize("gpu_type, world_size, ep", [("h100", 128, 32), ("h200", 64, 16)])
    def test_pretrain_layout_parses_and_splits_62_layers_unevenly(
        self, hf_dir, gpu_type, world_size, ep
    ):
        argv = _dry_run("pretrain_minimax_m2.sh", _cluster_env(hf_dir, GPU_TYPE=gpu_type))
        args = parse_training_args(argv, world_size=world_size)
        assert (args.num_layers, args.hidden_size, args.num_experts) == (62, 3072, 256)
        assert args.qk_layernorm_scope == "layer" and args.moe_router_dtype == "fp32"
        assert args.pipeline_model_parallel_size == 4 and args.expert_model_parallel_size == ep
        assert (args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers) == (
            15,
            15,
        )
        assert args.load == "ckpt/minimax-m2.5-mcore" and args.ckpt_format == "torch_dist"
        # The released tokenizer (200,054 tokens) pads to exactly the checkpoint's 200,064 rows.
        assert (
            calculate_padded_vocab_size(
                200054, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size, False
            )
            == 200064
        )

    def test_hybrid_model_class_runs_pretrain_hybrid_with_the_staged_pattern(self, hf_dir):
        env = _cluster_env(hf_dir, GPU_TYPE="h200", MODEL_CLASS="hybrid")
        command = _dry_run_command("pretrain_minimax_m2.sh", env)
        assert Path(command[_entry(command)]).name == "pretrain_hybrid.py"
        args = parse_training_args(command[_entry(command) + 1 :], world_size=64)
        stages = args.hybrid_layer_pattern.split("|")
        assert [len(stage) // 2 for stage in stages] == [15, 16, 16, 15]
        assert set("".join(stages)) == {"*", "E"} and args.num_layers == 124
        assert args.decoder_first_pipeline_num_layers is None
        assert args.qk_layernorm_scope == "layer" and args.moe_router_keep_in_fp32

    def test_without_load_dir_starts_from_the_release_and_resumes_from_save_dir(self, hf_dir):
        env = _cluster_env(hf_dir)
        del env["LOAD_DIR"]
        args = parse_training_args(_dry_run("pretrain_minimax_m2.sh", env), world_size=128)
        assert args.load_hf_dir == str(hf_dir)
        assert args.load == args.save == "ckpt/run"

    def test_sft_uses_chat_data_and_freezes_the_expert_bias(self, hf_dir):
        env = _cluster_env(hf_dir, DATA_PATH="data/sft_chat_document")
        args = parse_training_args(_dry_run("sft_minimax_m2.sh", env), world_size=128)
        assert args.data_path == ["data/sft_chat_document"]
        assert args.moe_router_bias_update_rate == 0
        assert args.calculate_per_token_loss

    def test_sft_refuses_plain_text_data(self, hf_dir):
        env = {
            **os.environ,
            **_cluster_env(hf_dir, DATA_PATH="data/corpus_text_document"),
            "DRY_RUN": "1",
        }
        proc = subprocess.run(
            ["bash", str(EXAMPLES / "sft_minimax_m2.sh")], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 2 and "not a *_chat_document prefix" in proc.stderr


class TestProxyScript:
    def test_one_gpu_proxy_has_the_released_layer_width(self):
        args = parse_training_args(_dry_run("train_minimax_m2_proxy.sh", {}), world_size=1)
        assert (args.num_layers, args.num_experts, args.moe_router_topk) == (4, 16, 8)
        assert (args.hidden_size, args.num_attention_heads, args.kv_channels) == (3072, 48, 128)
        assert args.num_query_groups == 8 and args.moe_ffn_hidden_size == 1536
        assert args.qk_layernorm_scope == "layer" and args.mock_data

    def test_gpu_check_invocation_parses(self, tmp_path):
        # tests/gpu/run_gpu_checks.sh runs the proxy with these flags, saving and then loading.
        flags = ("--deterministic-mode", "--transformer-impl", "local")
        env = {"SAVE_DIR": str(tmp_path), "SAVE_INTERVAL": "25", "LOAD_DIR": str(tmp_path)}
        args = parse_training_args(_dry_run("train_minimax_m2_proxy.sh", env, *flags), world_size=1)
        assert args.deterministic_mode and args.transformer_impl == "local"
        assert (args.save, args.load, args.save_interval, args.train_iters) == (
            str(tmp_path),
            str(tmp_path),
            25,
            50,
        )


class TestGpuLogCheck:
    LINE = (
        " [2026-11-26 10:00:00] iteration {i:8d}/      50 | consumed samples: {s} | elapsed time "
        "per iteration (ms): {ms:.1f} | throughput per GPU (TFLOP/s/GPU): 150.0 | learning rate: "
        "1.0E-04 | global batch size:     8 | lm loss: {loss:.6E} | loss scale: 1.0 |"
    )

    def _write(self, path, losses, start=1):
        path.write_text(
            "\n".join(
                self.LINE.format(i=i, s=8 * i, ms=400.0, loss=loss)
                for i, loss in enumerate(losses, start=start)
            )
        )

    def _main(self, *argv):
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "check_training_logs", REPO / "tests" / "gpu" / "check_training_logs.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main(list(argv))

    @pytest.mark.parametrize("resume_shift, expected", [(0.0, 0), (1e-3, 1)])
    def test_log_check(self, tmp_path, capsys, resume_shift, expected):
        losses = [10.0 - 0.1 * i for i in range(50)]
        self._write(tmp_path / "train.log", losses)
        self._write(tmp_path / "resume.log", [x + resume_shift for x in losses[25:]], start=26)
        code = self._main(
            "--train-log", str(tmp_path / "train.log"), "--resume-log", str(tmp_path / "resume.log"),
            "--resume-from", "25", "--seq-length", "2048", "--global-batch-size", "8", "--gpu", "H100",
        )  # fmt: skip
        out = capsys.readouterr().out
        assert code == expected
        assert "resume from 25: 25 iterations compared" in out
        assert "40,960 tokens/s" in out and "MFU 15.2% of H100" in out
