# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Recipes: names, formats and the modelopt configs they stand for."""

import pytest

from megatron.minimax.quantization.recipes import RECIPES, get_recipe


def test_default_recipe_is_nvfp4_experts_as_published():
    assert list(RECIPES)[0] == "nvfp4-experts"
    recipe = get_recipe("nvfp4-experts")
    assert (recipe.quant_algo, recipe.group_size, recipe.modelopt_preset) == (
        "NVFP4",
        16,
        "NVFP4_EXPERTS_ONLY_CFG",
    )
    assert get_recipe("fp8").quant_algo == "FP8" and get_recipe("fp8").group_size is None


def test_unknown_recipe_is_one_line_naming_the_choices():
    with pytest.raises(ValueError) as e:
        get_recipe("int4")
    assert str(e.value) == (
        "unknown quantization recipe 'int4'; choose one of nvfp4-experts, nvfp4, fp8"
    )


def test_backend_is_set_on_nvfp4_quantizers_only():
    import modelopt.torch.quantization as mtq

    config = get_recipe("nvfp4-experts").modelopt_config("cpu-backend")
    nvfp4 = [
        e for e in config["quant_cfg"] if tuple(e.get("cfg", {}).get("num_bits", ())) == (2, 1)
    ]
    assert nvfp4 and all(e["cfg"]["backend"] == "cpu-backend" for e in nvfp4)
    assert mtq.NVFP4_EXPERTS_ONLY_CFG != config  # a copy: modelopt's preset is untouched
    assert all(
        "backend" not in e.get("cfg", {})
        for e in get_recipe("fp8").modelopt_config("x")["quant_cfg"]
    )
