# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Anchors: a statement in a scope, found exactly once."""

import textwrap

import pytest

from megatron.minimax.upstream.source_anchor import Anchor, AnchorError, is_present, locate

SOURCE = textwrap.dedent('''\
    import torch


    class Config:
        flag: bool = False
        """Documented field."""

        other: int = 1

        def __post_init__(self):
            if self.flag:
                raise ValueError("flag")
            # Leading comment of the next check.
            # Second line.
            if self.other > 1:
                self.other = 1

        @property
        def doubled(self):
            return self.other * 2


    def helper(x):
        y = x + 1
        return y


    def other_helper(x):
        y = x + 1
        return y
    ''')


def test_header_line_of_a_compound_statement():
    located = locate(SOURCE, Anchor("Config.__post_init__", "if self.other > 1:"))
    assert (located.first_line, located.last_line, located.indent) == (15, 16, 8)
    assert located.lead_line == 13  # the two comment lines that lead into it


def test_field_extent_includes_its_docstring():
    located = locate(SOURCE, Anchor("Config", "flag: bool = False"))
    assert (located.first_line, located.last_line) == (5, 6)


def test_decorated_definition_starts_at_its_decorator():
    located = locate(SOURCE, Anchor("Config", "def doubled(self):"))
    assert (located.first_line, located.last_line) == (18, 20)


def test_simple_statement_matches_by_syntax_tree_ignoring_formatting():
    located = locate(SOURCE, Anchor("helper", "y = (x+1)"))
    assert located.first_line == 24


def test_scope_disambiguates_identical_statements():
    assert locate(SOURCE, Anchor("other_helper", "y = x + 1")).first_line == 29
    with pytest.raises(AnchorError, match="found 2 times"):
        locate(SOURCE, Anchor("", "y = x + 1"))


@pytest.mark.parametrize(
    "anchor, message",
    [
        (Anchor("Config.__post_init__", "if self.missing:"), "not found"),
        (Anchor("Missing.__post_init__", "if self.flag:"), "scope Missing.__post_init__ not found"),
    ],
)
def test_missing_anchor_or_scope_is_an_error(anchor, message):
    with pytest.raises(AnchorError, match=message):
        locate(SOURCE, anchor)
    assert not is_present(SOURCE, anchor)
