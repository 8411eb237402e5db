# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""--modelopt-recipe: the flags and what they refuse (training itself:
tests/unit_tests/training/test_pretrain_qat.py)."""

import sys
from pathlib import Path

import pytest

from megatron.minimax.quantization.qat import QuantizationAwareTraining, _checkpoint_to_load
from megatron.minimax.training.arguments import parse_training_args

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from training_harness import CPU_RUN_ARGS, TINY_MODEL_ARGS  # noqa: E402

RECIPE = ["--modelopt-recipe", "nvfp4-experts"]


def _args(extra, world_size=1):
    return parse_training_args(TINY_MODEL_ARGS + CPU_RUN_ARGS + extra, world_size=world_size)


def test_without_the_flag_there_is_no_quantization():
    assert QuantizationAwareTraining.from_args(_args([])) is None


def test_flag_selects_the_recipe():
    training = QuantizationAwareTraining.from_args(
        _args(RECIPE + ["--modelopt-calib-samples", "16"])
    )
    assert training.recipe.name == "nvfp4-experts" and training.calib_samples == 16
    assert training.checkpoint is None and not training.restored


def test_unknown_recipe_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        _args(["--modelopt-recipe", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, world_size, message",
    [
        (["--tensor-model-parallel-size", "2", "--sequence-parallel"], 2, "w2 inputs.* 48 / 2"),
        (["--modelopt-calib-samples", "0"], 1, "must be >= 1"),
    ],
)  # fmt: skip
def test_unsupported_setups_are_refused(extra, world_size, message):
    with pytest.raises(ValueError, match=message):
        QuantizationAwareTraining.from_args(_args(RECIPE + extra, world_size))


def test_checkpoint_to_load_follows_megatrons_tracker(tmp_path):
    args = _args([])
    assert _checkpoint_to_load(args) is None
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("40\n")
    args.load = str(tmp_path)
    assert _checkpoint_to_load(args) == tmp_path / "iter_0000040"
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("release")
    assert _checkpoint_to_load(args) == tmp_path / "release"
    args.load, args.pretrained_checkpoint = str(tmp_path / "empty"), str(tmp_path)
    assert _checkpoint_to_load(args) == tmp_path / "release"
