# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The tests run from a fresh clone on any machine: no test file names an absolute path.

Inputs live in the repository (``examples/minimax_m2/configs/...``) or are made in pytest's
temporary directories; a path outside the repository would tie the suite to one machine.
"""

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

# "/name" at the start of a string or after a blank, '=', ':', ',' or a quote: "<root>x/y",
# "1.0 <root>data/x", "PATH=<root>usr/bin" (<root> standing for "/"). Not "a/b",
# "s3://bucket/x", "B/s" or "{dir}/x".
_ABSOLUTE_POSIX = re.compile(r"(?:^|(?<=[\s=:,'\"(]))/(?!/)[A-Za-z0-9_.~-]")
_ABSOLUTE_WINDOWS = re.compile(r"(?:^|(?<=[\s=:,'\"(]))[A-Za-z]:[\\/]")
# What a shell script may name: the shebang's interpreter and the null device.
_SHELL_ALLOWED = re.compile(r"^#!/usr/bin/env \w+$|/dev/null")


def _absolute_paths(text: str):
    matches = (*_ABSOLUTE_POSIX.finditer(text), *_ABSOLUTE_WINDOWS.finditer(text))
    return [m.group(0) for m in matches]


def _python_strings(source: str):
    """(line, text) of every string literal; an f-string's replacement fields read as 'X', so
    that ``f"{root}/x"`` is the relative "X/x"."""
    tree = ast.parse(source)
    fstrings = [node for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)]
    fstring_parts = {id(part) for node in fstrings for part in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(p.value if isinstance(p, ast.Constant) else "X" for p in node.values)
            yield node.lineno, text
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in fstring_parts:
                yield node.lineno, node.value


def _offences(path: Path):
    source = path.read_text()
    where = path.relative_to(TESTS.parent)
    if path.suffix == ".py":
        for line, text in _python_strings(source):
            for found in _absolute_paths(text):
                yield f"{where}:{line}: {text!r} ({found!r})"
    else:
        for line, text in enumerate(source.splitlines(), start=1):
            for found in _absolute_paths(_SHELL_ALLOWED.sub("", text)):
                yield f"{where}:{line}: {text.strip()!r} ({found!r})"


def _test_files():
    return sorted(
        p for p in TESTS.rglob("*") if p.suffix in (".py", ".sh") and "__pycache__" not in p.parts
    )


def test_no_test_file_names_an_absolute_path():
    files = _test_files()
    assert len(files) > 30  # the walk found the suite
    offences = [o for path in files for o in _offences(path)]
    assert offences == [], "\n".join(offences)


# The examples spell the roots as "<root>" and "<drive>", so that this file names no absolute
# path itself.
@pytest.mark.parametrize(
    "text, found",
    [
        ("<root>work/shared/configs/config.json", True),
        ("DATA_PATH=1.0 <root>data/corpus", True),
        ("PATH=<root>usr/bin", True),
        ("<drive>models\\x", True),
        ("ckpt/run", False),
        ("s3://bucket/x_chat_document", False),
        ("939kB/s", False),
        ("X/config.json", False),
    ],
)
def test_detector(text, found):
    text = text.replace("<root>", "/").replace("<drive>", "C:" + "\\")
    assert bool(_absolute_paths(text)) == found
