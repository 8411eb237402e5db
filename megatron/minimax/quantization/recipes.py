# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The quantization recipes: what is quantised to which format, as a modelopt config.

=================  ======================================================  ==================
recipe             quantised (W and A, per-tensor amax from calibration)   serve with
=================  ======================================================  ==================
``nvfp4-experts``  every routed expert's w1/w2/w3: NVFP4 (W4A4, groups     vLLM ``modelopt_fp4``
                   of 16). Attention, router, embeddings, ``lm_head``:     (Blackwell)
                   BF16. NVIDIA's published MiniMax-M2.x NVFP4 layout.
``nvfp4``          the above plus attention q/k/v/o: NVFP4                 vLLM ``modelopt_fp4``
``fp8``            attention q/k/v/o and experts: per-tensor FP8 e4m3      vLLM ``modelopt``
                                                                           (Hopper and later)
=================  ======================================================  ==================

The router gate and ``e_score_correction_bias`` stay fp32 in every recipe (see
``docs/quantization.md`` for why the rest of the BF16 set stays BF16). Each recipe is modelopt's
own preset (``NVFP4_EXPERTS_ONLY_CFG``, ``NVFP4_DEFAULT_CFG``, ``FP8_DEFAULT_CFG``), whose module
patterns match Megatron's names as well as HF's (``*.experts.*``, ``*router*``,
``*output_layer*``); on a machine without CUDA the NVFP4 quantizers use this package's CPU
backend (:mod:`nvfp4_cpu_backend`).
"""

import copy
from dataclasses import dataclass
from typing import Dict, Literal, Optional

__all__ = ["RECIPES", "QuantizationRecipe", "get_recipe"]


@dataclass(frozen=True)
class QuantizationRecipe:
    """One quantization recipe."""

    name: str
    """Command-line name (``--recipe``, ``--modelopt-recipe``)."""
    quant_algo: Literal["NVFP4", "FP8"]
    """``quant_algo`` of ``hf_quant_config.json``."""
    modelopt_preset: str
    """Name of the modelopt config this recipe is (``modelopt.torch.quantization.<name>``)."""
    summary: str
    """One line for ``--help``."""
    group_size: Optional[int] = None
    """NVFP4 elements per e4m3 scale (None for FP8)."""

    @property
    def is_nvfp4(self) -> bool:
        return self.quant_algo == "NVFP4"

    def modelopt_config(self, backend: Optional[str] = None) -> Dict:
        """A fresh modelopt ``quantize`` config.

        Args:
            backend: name of a registered modelopt quant backend for the NVFP4 quantizers (the
                CPU backend on machines without CUDA); None for modelopt's own kernels.
        """
        import modelopt.torch.quantization as mtq

        config = copy.deepcopy(getattr(mtq, self.modelopt_preset))
        if backend is not None and self.is_nvfp4:
            for entry in config["quant_cfg"]:
                cfg = entry.get("cfg") if isinstance(entry, dict) else None
                if isinstance(cfg, dict) and cfg.get("num_bits") in ((2, 1), [2, 1]):
                    cfg["backend"] = backend
        return config


RECIPES: Dict[str, QuantizationRecipe] = {
    recipe.name: recipe
    for recipe in (
        QuantizationRecipe(
            name="nvfp4-experts",
            quant_algo="NVFP4",
            modelopt_preset="NVFP4_EXPERTS_ONLY_CFG",
            summary="routed experts NVFP4 (W4A4, groups of 16), the rest BF16, router fp32",
            group_size=16,
        ),
        QuantizationRecipe(
            name="nvfp4",
            quant_algo="NVFP4",
            modelopt_preset="NVFP4_DEFAULT_CFG",
            summary="experts and attention projections NVFP4, the rest BF16, router fp32",
            group_size=16,
        ),
        QuantizationRecipe(
            name="fp8",
            quant_algo="FP8",
            modelopt_preset="FP8_DEFAULT_CFG",
            summary="experts and attention projections per-tensor FP8, the rest BF16, router fp32",
        ),
    )
}
"""Every recipe by name; the first is the default."""


def get_recipe(name: str) -> QuantizationRecipe:
    """The recipe called ``name``.

    Raises:
        ValueError: one line naming the known recipes.
    """
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(
            f"unknown quantization recipe {name!r}; choose one of {', '.join(RECIPES)}"
        ) from None
