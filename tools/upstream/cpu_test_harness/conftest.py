# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Run the series' Megatron-LM-style unit tests on CPU: megatron-core's CUDA-only calls shimmed."""

from megatron.minimax.platform.cpu_shims import apply_cpu_shims

apply_cpu_shims()
