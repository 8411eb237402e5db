# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Where megatron-core runs: support for machines it assumes are not there (CPU-only, gloo)."""
