# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Guard of ``make test-native``: every test of that session runs against the patched tree.

``make test-native`` sets ``MEGATRON_MINIMAX_NATIVE_TREE`` to the megatron-core tree made native by
``tools/upstream/make_native.py`` and puts it first on ``PYTHONPATH``. Tests that hold on both
paths cannot tell them apart by passing, so the session refuses to start unless megatron-core and
megatron-training are loaded from that tree and declare the native fields.
"""

import os

import pytest

NATIVE_TREE_ENV = "MEGATRON_MINIMAX_NATIVE_TREE"


def _inside(path: str, tree: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(tree)]) == os.path.realpath(
        tree
    )


def pytest_sessionstart(session):
    tree = os.environ.get(NATIVE_TREE_ENV)
    if not tree:
        return
    import megatron.core
    import megatron.training

    from megatron.minimax.native_core import megatron_core_is_native

    for package in (megatron.core, megatron.training):
        if not _inside(package.__file__, tree):
            raise pytest.UsageError(
                f"{NATIVE_TREE_ENV}={tree} but {package.__name__} loads from {package.__file__}"
            )
    if not megatron_core_is_native():
        raise pytest.UsageError(f"megatron-core in {tree} does not declare the native fields")
