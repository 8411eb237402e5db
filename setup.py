# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""MiniMax-M2 support for Megatron-core: the ``megatron.minimax`` package, beside megatron-core's
``megatron.core`` and ``megatron.training`` in the ``megatron`` namespace."""

from setuptools import find_namespace_packages, setup

setup(
    name="megatron-minimax",
    version="0.1.0",
    description="MiniMax-M2 (M2/M2.1/M2.5/M2.7) for Megatron-core: native full-dimension QK "
    "norm, fp32 router, HF <-> Megatron converters, parity tools",
    python_requires=">=3.12",
    packages=find_namespace_packages(include=["megatron.minimax", "megatron.minimax.*"]),
    install_requires=[
        "megatron-core>=0.19.2,<0.20",
        "torch",
        "safetensors",
        # MiniMaxM2 in transformers honours rotary_dim (partial RoPE) from 5.24 on.
        "transformers>=5.24.0",
        "numpy",
        # megatron-core's torch_dist checkpointing imports psutil but does not declare it.
        "psutil",
        "tqdm",
        # Chat templates (SFT data preparation).
        "jinja2",
        # NVFP4 / FP8 quantization (tools/quantize_minimax_m2.py, --modelopt-recipe). Its [hf]
        # extra pins transformers < 5.15, so only the base package is installed.
        "nvidia-modelopt==0.47.0",
        # modelopt.torch imports requests without declaring it.
        "requests",
    ],
    extras_require={
        "test": ["pytest>=8"],
        "te": ["transformer-engine[pytorch]"],
    },
)
