# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Edits: applied in memory, indented like their anchor, idempotent, errors naming the file."""

import textwrap

import pytest

from megatron.minimax.upstream.source_anchor import Anchor
from megatron.minimax.upstream.source_edits import (
    EditError,
    EnsureImport,
    InsertAfter,
    InsertBefore,
    InsertLineAfter,
    NewFile,
    ReplaceStatement,
    SourceTree,
)

MODULE = textwrap.dedent('''\
    import copy

    from pkg import (
        alpha,
        gamma,
    )


    class Layer:
        def __init__(self, config):
            self.config = config
            # Choose the norm.
            if config.norm:
                self.norm = copy.copy(config.norm)
            self.weight = config.weight.to(config.dtype)
    ''')


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "layer.py").write_text(MODULE)
    return SourceTree(tmp_path)


INIT = "Layer.__init__"


def _apply_twice(tree, edit):
    first = edit.apply(tree)
    text = tree.read("pkg/layer.py")
    second = edit.apply(tree)
    assert tree.read("pkg/layer.py") == text  # idempotent
    return first, second, text


def test_insert_before_goes_above_leading_comments_with_the_anchor_indent(tree):
    edit = InsertBefore(
        "pkg/layer.py", Anchor(INIT, "if config.norm:"), "if config.scope:\n    x = 1\n"
    )
    first, second, text = _apply_twice(tree, edit)
    assert (first, second) == (True, False)
    expected = (
        "        self.config = config\n"
        "        if config.scope:\n"
        "            x = 1\n"
        "        # Choose the norm."
    )
    assert expected in text


def test_insert_after_a_compound_statement(tree):
    edit = InsertAfter("pkg/layer.py", Anchor(INIT, "if config.norm:"), "self.extra = None\n")
    _, second, text = _apply_twice(tree, edit)
    assert second is False
    assert "copy.copy(config.norm)\n        self.extra = None\n        self.weight" in text


def test_replace_statement_that_keeps_the_anchor_inside(tree):
    code = "if not config.keep:\n    self.weight = config.weight.to(config.dtype)\n"
    edit = ReplaceStatement(
        "pkg/layer.py", Anchor(INIT, "self.weight = config.weight.to(config.dtype)"), code
    )
    first, second, text = _apply_twice(tree, edit)
    assert (first, second) == (True, False)
    assert text.count("config.weight.to(config.dtype)") == 1
    assert "        if not config.keep:\n            self.weight = " in text


def test_insert_line_after_inside_a_multiline_import(tree):
    edit = InsertLineAfter("pkg/layer.py", Anchor("", "from pkg import ("), "alpha,", "beta,")
    _, _, text = _apply_twice(tree, edit)
    assert "    alpha,\n    beta,\n    gamma,\n" in text


def test_ensure_import_adds_only_missing_imports(tree):
    assert (
        EnsureImport("pkg/layer.py", Anchor("", "import copy"), "import copy").apply(tree) is False
    )
    edit = EnsureImport("pkg/layer.py", Anchor("", "import copy"), "import dataclasses")
    _, _, text = _apply_twice(tree, edit)
    assert text.startswith("import copy\nimport dataclasses\n")


def test_new_file_conflicts_with_other_content(tree, tmp_path):
    assert NewFile("pkg/new.py", "x = 1\n").apply(tree) is True
    assert NewFile("pkg/new.py", "x = 1\n").apply(tree) is False
    with pytest.raises(EditError, match="pkg/new.py: exists with other content"):
        NewFile("pkg/new.py", "x = 2\n").apply(tree)
    with pytest.raises(EditError, match="directory nowhere not found"):
        NewFile("nowhere/new.py", "x = 1\n").apply(tree)
    assert not (tmp_path / "pkg" / "new.py").exists()  # in memory only


def test_errors_name_the_file_and_the_anchor(tree):
    with pytest.raises(EditError) as info:
        InsertAfter("pkg/layer.py", Anchor(INIT, "if config.other:"), "x = 1").apply(tree)
    assert str(info.value) == ("pkg/layer.py: anchor Layer.__init__: 'if config.other:' not found")
    with pytest.raises(EditError, match="pkg/missing.py: file not found"):
        InsertAfter("pkg/missing.py", Anchor("", "import copy"), "x = 1").apply(tree)


def test_changes_report_only_changed_files(tree):
    InsertAfter("pkg/layer.py", Anchor(INIT, "if config.norm:"), "self.extra = None").apply(tree)
    changes = tree.changes()
    assert list(changes) == ["pkg/layer.py"]
    original, new = changes["pkg/layer.py"]
    assert original == MODULE and new != MODULE
