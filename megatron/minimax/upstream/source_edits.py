# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Edits of a source tree, applied in memory, each idempotent.

Every edit names its file and its :class:`~megatron.minimax.upstream.source_anchor.Anchor`;
code is given dedented and is indented like the anchor statement. An edit whose result is already
in the file does nothing, so applying a series twice changes nothing the second time. Nothing
reaches the disk here: :class:`SourceTree` collects the new file contents, and the caller writes
them only when every edit of every feature has been planned.
"""

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from megatron.minimax.upstream.source_anchor import Anchor, AnchorError, Located, locate


class EditError(ValueError):
    """An edit that cannot be applied: its anchor is missing or ambiguous, or its file conflicts.

    Args:
        path: the file, relative to the tree.
        message: what is wrong.
    """

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


class SourceTree:
    """The files of a tree as the edits see them: read on first use, changed in memory only."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._original: Dict[str, Optional[str]] = {}
        self._current: Dict[str, Optional[str]] = {}

    def read(self, path: str) -> Optional[str]:
        """The current text of ``path`` (relative to the root), or None if it does not exist."""
        if path not in self._current:
            file = self.root / path
            text = file.read_text(encoding="utf-8") if file.is_file() else None
            self._original[path] = self._current[path] = text
        return self._current[path]

    def write(self, path: str, text: str) -> bool:
        """Replace the current text of ``path`` (in memory); True if the text changed."""
        changed = self.read(path) != text
        self._current[path] = text
        return changed

    def changes(self) -> Dict[str, Tuple[Optional[str], str]]:
        """``path -> (original text or None, new text)`` for every file whose text changed."""
        return {
            path: (self._original[path], text)
            for path, text in sorted(self._current.items())
            if text is not None and text != self._original[path]
        }

    def snapshot(self) -> Dict[str, Optional[str]]:
        """The current text of every file read so far."""
        return dict(self._current)


def _render(text: str, indent: int) -> List[str]:
    """``text`` (dedented code) as lines indented by ``indent`` spaces; blank lines stay empty."""
    body = textwrap.dedent(text).rstrip("\n")
    return [(" " * indent + line) if line.strip() else "" for line in body.split("\n")]


def _contains(source: str, lines: List[str]) -> bool:
    core = "\n".join(lines).strip("\n")
    return bool(core) and core in source


def _require(tree: SourceTree, path: str) -> str:
    source = tree.read(path)
    if source is None:
        raise EditError(path, "file not found")
    return source


def _locate(path: str, source: str, anchor: Anchor) -> Located:
    try:
        return locate(source, anchor)
    except AnchorError as e:
        raise EditError(path, str(e)) from None
    except SyntaxError as e:
        raise EditError(path, f"cannot parse ({e.msg}, line {e.lineno})") from None


def _splice(source: str, at_line: int, lines: List[str], remove: int = 0) -> str:
    """Insert ``lines`` before 0-based line ``at_line`` of ``source``, replacing ``remove``."""
    old = source.split("\n")
    return "\n".join(old[:at_line] + lines + old[at_line + remove :])


def _insert(tree: SourceTree, path: str, anchor: Anchor, code: str, after: bool) -> bool:
    """Insert ``code``, indented like the anchor statement, after it or before it (and before
    the comment lines that lead into it); False when the code is already there."""
    source = _require(tree, path)
    located = _locate(path, source, anchor)
    lines = _render(code, located.indent)
    if _contains(source, lines):
        return False
    at_line = located.last_line if after else located.lead_line - 1
    return tree.write(path, _splice(source, at_line, lines))


@dataclass(frozen=True)
class InsertAfter:
    """Insert ``code`` after the statement ``anchor`` names (after a field's docstring)."""

    path: str
    anchor: Anchor
    code: str

    def apply(self, tree: SourceTree) -> bool:
        """Apply to ``tree``; False when the code is already there."""
        return _insert(tree, self.path, self.anchor, self.code, after=True)


@dataclass(frozen=True)
class InsertBefore:
    """Insert ``code`` before the statement ``anchor`` names, before its decorators and the
    comment lines that lead into it."""

    path: str
    anchor: Anchor
    code: str

    def apply(self, tree: SourceTree) -> bool:
        """Apply to ``tree``; False when the code is already there."""
        return _insert(tree, self.path, self.anchor, self.code, after=False)


@dataclass(frozen=True)
class ReplaceStatement:
    """Replace the whole statement ``anchor`` names with ``code``.

    Applied already when ``code`` is in the file.
    """

    path: str
    anchor: Anchor
    code: str

    def apply(self, tree: SourceTree) -> bool:
        """Apply to ``tree``; False when the replacement is already there."""
        source = _require(tree, self.path)
        # Replaced already? The replacement may still contain the anchor statement (guarded by a
        # condition, say), so look for the code first, at the indentations code can have.
        if any(_contains(source, _render(self.code, indent)) for indent in range(0, 17, 4)):
            return False
        located = _locate(self.path, source, self.anchor)
        lines = _render(self.code, located.indent)
        remove = located.last_line - located.first_line + 1
        return tree.write(self.path, _splice(source, located.first_line - 1, lines, remove))


@dataclass(frozen=True)
class InsertLineAfter:
    """Inside the statement ``anchor`` names, insert ``code`` after the one line equal to
    ``line`` (stripped), with that line's indentation. For items of a multi-line import or list."""

    path: str
    anchor: Anchor
    line: str
    code: str

    def apply(self, tree: SourceTree) -> bool:
        """Apply to ``tree``; False when the code is already there."""
        source = _require(tree, self.path)
        located = _locate(self.path, source, self.anchor)
        old = source.split("\n")
        span = range(located.first_line - 1, located.last_line)
        hits = [i for i in span if old[i].strip() == self.line]
        if len(hits) != 1:
            found = "not found" if not hits else f"found {len(hits)} times"
            raise EditError(self.path, f"line {self.line!r} in anchor {self.anchor} {found}")
        indent = len(old[hits[0]]) - len(old[hits[0]].lstrip())
        lines = _render(self.code, indent)
        if any(old[i].strip() == lines[0].strip() for i in span):
            return False
        return tree.write(self.path, _splice(source, hits[0] + 1, lines))


@dataclass(frozen=True)
class EnsureImport:
    """Add the module-level import ``code`` (one line) after ``anchor`` unless the file already
    has exactly that line."""

    path: str
    anchor: Anchor
    code: str

    def apply(self, tree: SourceTree) -> bool:
        """Apply to ``tree``; False when the import is already there."""
        source = _require(tree, self.path)
        if any(line.strip() == self.code.strip() for line in source.split("\n")):
            return False
        return InsertAfter(self.path, self.anchor, self.code).apply(tree)


@dataclass(frozen=True)
class NewFile:
    """Create ``path`` with ``text``. An existing file with other content is a conflict."""

    path: str
    text: str

    def apply(self, tree: SourceTree) -> bool:
        """Apply to ``tree``; False when the file already has exactly this text."""
        current = tree.read(self.path)
        if current == self.text:
            return False
        if current is not None:
            raise EditError(self.path, "exists with other content")
        if not (tree.root / os.path.dirname(self.path)).is_dir():
            raise EditError(self.path, f"directory {os.path.dirname(self.path)} not found")
        return tree.write(self.path, self.text)
