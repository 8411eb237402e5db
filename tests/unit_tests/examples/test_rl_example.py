# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""examples/minimax_m2/rl/run_grpo_slime.sh: syntax, the flags it hands to our code, a dry run.

Neither slime nor Ray is installed here: the script runs with DRY_RUN=1, which prints the
conversion and launch commands instead of running them (tools/minimax_m2_args.py does run).
slime's own flags cannot be checked; Megatron's flags are checked against megatron-training's
parser, which slime extends.
"""

import argparse
import functools
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "examples" / "minimax_m2" / "rl" / "run_grpo_slime.sh"
MEGATRON_ARRAYS = ("SPEC_ARGS", "ROUTER_ARGS", "MOE_ARGS", "MEGATRON_PERF_ARGS", "OPTIMIZER_ARGS")
"""Arrays of the script that hold only Megatron (not slime) flags."""


def _array(name: str) -> list:
    match = re.search(rf"^{name}=\(\n(.*?)\n\)", SCRIPT.read_text(), re.MULTILINE | re.DOTALL)
    assert match, f"no array {name} in {SCRIPT}"
    return shlex.split(match.group(1), comments=True)


@functools.lru_cache(maxsize=None)
def _megatron_options() -> frozenset:
    from megatron.training.arguments import add_megatron_arguments

    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_megatron_arguments(parser)
    return frozenset(option for action in parser._actions for option in action.option_strings)


def _run_script(env_overrides, *args):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "DRY_RUN": "1",
        **env_overrides,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=env
    )


class TestScriptText:
    def test_bash_syntax(self):
        proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    def test_strict_mode_and_passthrough(self):
        text = SCRIPT.read_text()
        assert "set -euo pipefail" in text and '"$@"' in text

    def test_spec_names_a_callable_with_slime_signature(self):
        from megatron.core.transformer.spec_utils import import_module

        option, module, function = _array("SPEC_ARGS")
        assert option == "--spec"
        spec_fn = import_module((module, function))  # how slime resolves --spec
        assert callable(spec_fn)
        assert list(inspect.signature(spec_fn).parameters)[:3] == ["args", "config", "vp_stage"]

    @pytest.mark.parametrize("array", MEGATRON_ARRAYS)
    def test_megatron_flags_exist(self, array):
        flags = [token for token in _array(array) if token.startswith("--")]
        assert flags
        unknown = sorted(set(flags) - _megatron_options())
        assert not unknown, f"{array}: not Megatron flags: {unknown}"

    def test_expert_bias_policy_defaults_to_frozen(self):
        assert _array("ROUTER_ARGS") == [
            "--moe-router-dtype", "fp32",
            "--moe-router-bias-update-rate", "${EXPERT_BIAS_UPDATE_RATE}",
        ]  # fmt: skip
        assert 'EXPERT_BIAS_UPDATE_RATE="${EXPERT_BIAS_UPDATE_RATE:-0}"' in SCRIPT.read_text()


@pytest.fixture(scope="module")
def dry_run(tiny_bf16_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl_example")
    env = {
        "SLIME_DIR": str(tmp / "slime"),
        "HF_DIR": str(tiny_bf16_checkpoint),
        "MCORE_DIR": str(tmp / "mcore"),
        "PROMPT_DATA": str(tmp / "prompts.jsonl"),
        "TP": "1",  # the tiny vocabulary (1001) is divisible by no larger TP
        "PP": "2",
        "EP": "2",
        "SKIP_REFIT_NAME_CHECK": "1",
    }
    proc = _run_script(env, "--extra-flag", "a b")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [shlex.split(line) for line in proc.stdout.splitlines()]
    return env, lines


class TestDryRun:
    def test_converts_the_hf_checkpoint_with_our_converter(self, dry_run):
        env, lines = dry_run
        convert = next(line for line in lines if "hf-to-mcore" in line)
        tool = next(token for token in convert if token.endswith("convert_minimax_m2.py"))
        sys.path.insert(0, str(Path(tool).parent))
        try:
            import convert_minimax_m2
        finally:
            sys.path.remove(str(Path(tool).parent))
        args = convert_minimax_m2.parse_args(convert[convert.index("hf-to-mcore") :])
        assert (str(args.hf_dir), str(args.save_dir)) == (env["HF_DIR"], env["MCORE_DIR"])

    def test_launches_train_py_with_spec_policy_and_passthrough(self, dry_run):
        env, lines = dry_run
        submit = lines[-1]
        assert submit[:3] == ["ray", "job", "submit"]
        train = submit[submit.index(os.path.join(env["SLIME_DIR"], "train.py")) + 1 :]
        joined = " ".join(train)
        assert "--spec megatron.minimax.rl.spec get_minimax_m2_spec" in joined
        assert "--moe-router-bias-update-rate 0" in joined
        assert "--qk-layernorm" in train and "--qk-layernorm-scope" not in train
        assert "--moe-router-dtype" in train and "--moe-router-keep-in-fp32" not in train
        assert "--pipeline-model-parallel-size 2 --expert-model-parallel-size 2" in joined
        assert f"--ref-load {env['MCORE_DIR']}" in joined
        assert f"--hf-checkpoint {env['HF_DIR']}" in joined
        assert train[-2:] == ["--extra-flag", "a b"]

    def test_generated_model_flags_are_megatron_flags(self, dry_run):
        # Every flag between train.py and --spec comes from tools/minimax_m2_args.py (after the
        # cluster flags); slime's parser is megatron-training's plus slime's own.
        _, lines = dry_run
        train = lines[-1]
        model = train[train.index("--num-layers") : train.index("--spec")]
        unknown = sorted({t for t in model if t.startswith("--")} - _megatron_options())
        assert not unknown


class TestPreflight:
    def test_missing_required_input_names_it(self):
        proc = _run_script({"SLIME_DIR": "", "HF_DIR": "x", "MCORE_DIR": "y", "PROMPT_DATA": "z"})
        assert proc.returncode != 0 and "SLIME_DIR" in proc.stderr

    def test_slime_without_our_weight_names_is_refused_before_any_work(self, tmp_path):
        converter = tmp_path / "slime/slime/backends/megatron_utils/megatron_to_hf/minimax_m2.py"
        converter.parent.mkdir(parents=True)
        converter.write_text('if rest == "self_attention.q_norm.weight": ...\n')
        proc = _run_script(
            {
                "SLIME_DIR": str(tmp_path / "slime"),
                "HF_DIR": str(tmp_path / "hf"),
                "MCORE_DIR": str(tmp_path / "mcore"),
                "PROMPT_DATA": "p.jsonl",
            }
        )
        assert proc.returncode == 2
        assert "q_layernorm/k_layernorm" in proc.stderr and proc.stdout == ""
