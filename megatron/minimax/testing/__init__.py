# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Helpers for tests and the demo (tiny random checkpoints, CPU shims); not used in training."""
