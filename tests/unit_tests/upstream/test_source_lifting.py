# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Lifting this package's own code: what the native series inserts into megatron-core."""

import ast

import pytest

from megatron.minimax.upstream import source_lifting as lift
from megatron.minimax.upstream.native_series import MODULE_RENAMES, NEW_FILE_HEADER


def test_field_with_its_docstring():
    text = lift.field(
        "transformer/transformer_config.py", "TransformerConfig", "qk_layernorm_scope"
    )
    assert text.startswith('qk_layernorm_scope: Literal["head", "layer"] = "head"\n"""Which')
    assert text.endswith('only a per-token sum of squares crosses ranks."""')


def test_checks_of_one_field_only():
    text = lift.statements_checking(
        "transformer/transformer_config.py", "TransformerConfig.__post_init__", "qk_layernorm_scope"
    )
    assert "super().__post_init__()" not in text
    assert "moe_router_keep_in_fp32" not in text
    assert text.count("if self.qk_layernorm_scope") == 2
    ast.parse(text)


def test_method_is_dedented_and_parses():
    text = lift.definition("transformer/moe/fp32_router.py", "FP32TopKRouter._apply")
    assert text.startswith("def _apply(self, fn, recurse=True):")
    assert "# Float16Module converts" in text  # comments come along
    ast.parse(text)


def test_module_carries_only_the_imports_its_definitions_use():
    text = lift.module_with(
        "transformer/full_dim_qk_norm.py", ["FullDimQKRMSNorm"], NEW_FILE_HEADER, MODULE_RENAMES
    )
    tree = ast.parse(text)
    imported = {
        (node.module, alias.name)
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert (
        "megatron.core.tensor_parallel.mappings",
        "all_reduce_sum_in_both_directions",
    ) in imported
    assert not any(module.startswith("megatron.minimax") for module, _ in imported)
    assert ("megatron.core", "parallel_state") not in imported  # used by the spec builders only
    names = [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
    assert names == ["FullDimQKRMSNorm"]
    assert text.startswith(NEW_FILE_HEADER)


def test_missing_source_is_a_lift_error():
    with pytest.raises(lift.LiftError, match="not found"):
        lift.field("transformer/transformer_config.py", "TransformerConfig", "no_such_field")
    with pytest.raises(lift.LiftError, match="no statement reading self.no_such_field"):
        lift.statements_checking(
            "transformer/transformer_config.py", "TransformerConfig.__post_init__", "no_such_field"
        )
