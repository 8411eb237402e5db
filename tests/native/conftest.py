# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Fixtures of the native-path tests (``make test-native`` only)."""

import os

import pytest

from megatron.minimax.testing.tiny_checkpoint import build_tiny_checkpoint, tiny_hf_config

NATIVE_TREE_ENV = "MEGATRON_MINIMAX_NATIVE_TREE"


@pytest.fixture(scope="session")
def native_tree():
    """The patched megatron-core tree this session runs against."""
    tree = os.environ.get(NATIVE_TREE_ENV)
    if not tree:
        pytest.fail(f"tests/native runs through 'make test-native' ({NATIVE_TREE_ENV} is unset)")
    return os.path.realpath(tree)


@pytest.fixture(scope="session")
def tiny_fp8_checkpoint(tmp_path_factory):
    """FP8 128x128-block tiny checkpoint, as released."""
    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny") / "fp8", tiny_hf_config(), seed=0, fp8=True
    )
