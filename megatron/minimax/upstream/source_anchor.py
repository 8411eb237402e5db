# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Anchors: where in a source file an edit applies.

An anchor names a scope (a qualified class or function, e.g. ``SelfAttention.__init__``; empty
for the module) and one statement inside it. The statement is given by its first line (the header
of a compound statement, ``if self.config.qk_l2_norm:``, or a whole simple statement) or, for a
simple statement, by any text that parses to the same syntax tree (formatting ignored). An anchor
must match exactly once; a missing or ambiguous anchor is an :class:`AnchorError`, so an edit never
lands somewhere a changed upstream file happens to look alike.
"""

import ast
from dataclasses import dataclass
from typing import List, Optional, Sequence


@dataclass(frozen=True)
class Anchor:
    """A statement inside a scope of a source file.

    Args:
        scope: dotted path of nested classes/functions (``"Router.reset_parameters"``), or ``""``
            for the module level.
        statement: the statement's first line, stripped; or a simple statement's full text.
    """

    scope: str
    statement: str

    def __str__(self) -> str:
        where = self.scope or "<module>"
        return f"{where}: {self.statement!r}"


class AnchorError(ValueError):
    """An anchor that is missing or matches more than once."""


@dataclass(frozen=True)
class Located:
    """A located anchor: 1-based first and last line of the statement, the first line of the
    comment block that leads into it (``first_line`` when there is none), and its indentation."""

    first_line: int
    last_line: int
    indent: int
    lead_line: int


def _scope_node(tree: ast.Module, scope: str) -> ast.AST:
    node: ast.AST = tree
    if not scope:
        return node
    for name in scope.split("."):
        matches = [
            child
            for child in ast.iter_child_nodes(node)
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and child.name == name
        ]
        if len(matches) != 1:
            found = "not found" if not matches else f"found {len(matches)} times"
            raise AnchorError(f"scope {scope} {found}")
        node = matches[0]
    return node


def _statements(scope_node: ast.AST) -> List[ast.stmt]:
    """Every statement nested in ``scope_node`` (excluding the scope itself), in source order."""
    out = []
    for node in ast.walk(scope_node):
        if node is not scope_node and isinstance(node, ast.stmt):
            out.append(node)
    return sorted(out, key=lambda n: (n.lineno, n.col_offset))


def _parse_simple_statement(text: str) -> Optional[ast.stmt]:
    try:
        body = ast.parse(text).body
    except SyntaxError:
        return None
    return body[0] if len(body) == 1 else None


def _matches(stmt: ast.stmt, lines: Sequence[str], statement: str, parsed) -> bool:
    if lines[stmt.lineno - 1].strip() == statement:
        return True
    return parsed is not None and ast.dump(stmt) == ast.dump(parsed)


def _attribute_docstring_end(stmt: ast.stmt, tree: ast.Module) -> int:
    """Last line of ``stmt``, extended over the attribute docstring that follows a field."""
    if not isinstance(stmt, (ast.AnnAssign, ast.Assign)):
        return stmt.end_lineno
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.ClassDef) and isinstance(body, list) and stmt in body:
            index = body.index(stmt)
            if index + 1 < len(body):
                following = body[index + 1]
                if (
                    isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
                    return following.end_lineno
    return stmt.end_lineno


def locate(source: str, anchor: Anchor) -> Located:
    """The statement ``anchor`` names in ``source``.

    A class field's extent includes its attribute docstring, so that inserting after a field
    inserts after its documentation. A decorated definition starts at its first decorator.

    Raises:
        AnchorError: the scope or the statement is missing, or either matches more than once.
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    scope_node = _scope_node(tree, anchor.scope)
    parsed = _parse_simple_statement(anchor.statement)
    found = [s for s in _statements(scope_node) if _matches(s, lines, anchor.statement, parsed)]
    if len(found) != 1:
        raise AnchorError(
            f"anchor {anchor} " + ("not found" if not found else f"found {len(found)} times")
        )
    stmt = found[0]
    first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
    lead = first
    comment = " " * stmt.col_offset + "#"
    while lead > 1 and lines[lead - 2].startswith(comment):
        lead -= 1
    return Located(
        first_line=first,
        last_line=_attribute_docstring_end(stmt, tree),
        indent=stmt.col_offset,
        lead_line=lead,
    )


def is_present(source: str, anchor: Anchor) -> bool:
    """True when ``anchor`` matches exactly once in ``source``."""
    try:
        locate(source, anchor)
    except AnchorError:
        return False
    return True
