# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Reading, writing and converting MiniMax-M2 checkpoints (HF safetensors, FP8 blocks)."""
