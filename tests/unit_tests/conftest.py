# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Session fixtures: tiny MiniMax-M2 checkpoints in the released on-disk format, built once."""

import pytest

from megatron.minimax.testing.tiny_checkpoint import build_tiny_checkpoint, tiny_hf_config


@pytest.fixture(scope="session")
def tiny_bf16_checkpoint(tmp_path_factory):
    """BF16 tiny checkpoint (fp32 router tensors), sharded with an index."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "bf16", tiny_hf_config(), seed=0)


@pytest.fixture(scope="session")
def tiny_fp8_checkpoint(tmp_path_factory):
    """FP8 128x128-block tiny checkpoint with ``quantization_config``, as released."""
    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny") / "fp8", tiny_hf_config(), seed=0, fp8=True
    )


@pytest.fixture(scope="session")
def converted_fp8_checkpoint(tiny_fp8_checkpoint, tmp_path_factory):
    """``tiny_fp8_checkpoint`` converted to a Megatron torch_dist checkpoint (bf16, no MTP)."""
    from megatron.minimax.checkpoint.hf_to_mcore import convert_hf_to_mcore

    save_dir = tmp_path_factory.mktemp("mcore") / "fp8_to_bf16"
    convert_hf_to_mcore(tiny_fp8_checkpoint, save_dir)
    return save_dir
