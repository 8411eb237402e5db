# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Helpers for tests and the demo (tiny random checkpoints and tokenizers, multi-process
launches); production code never imports them."""
