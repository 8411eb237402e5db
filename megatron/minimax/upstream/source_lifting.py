# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Lift code out of this package's own source files.

The native patch series inserts no code of its own where this package already has it: config
fields with their docstrings, ``__post_init__`` checks, modules, classes and methods are read from
``megatron/minimax/...`` with :mod:`ast` and returned as dedented source text. Changing one of
those files therefore changes the series the next time it is generated.
"""

import ast
import sys
import textwrap
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent.parent
"""The ``megatron/minimax`` directory whose files are lifted."""


class LiftError(ValueError):
    """What the series expects from this package's sources is not there."""


def read_source(module: str) -> str:
    """The text of ``module`` (a path relative to ``megatron/minimax``, e.g.
    ``"transformer/full_dim_qk_norm.py"``)."""
    return (PACKAGE_DIR / module).read_text(encoding="utf-8")


def _lines(source: str, first: int, last: int) -> str:
    return textwrap.dedent("\n".join(source.split("\n")[first - 1 : last]))


def _definition(tree: ast.Module, qualname: str, module: str) -> ast.AST:
    node: ast.AST = tree
    for name in qualname.split("."):
        matches = [
            child
            for child in ast.iter_child_nodes(node)
            if isinstance(child, (ast.ClassDef, ast.FunctionDef)) and child.name == name
        ]
        if len(matches) != 1:
            raise LiftError(f"{module}: {qualname} not found exactly once")
        node = matches[0]
    return node


def _first_line(node: ast.AST) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def definition(module: str, qualname: str) -> str:
    """Source of the class or function ``qualname`` (``"FP32TopKRouter._apply"``), decorators
    included, dedented."""
    source = read_source(module)
    node = _definition(ast.parse(source), qualname, module)
    return _lines(source, _first_line(node), node.end_lineno)


def field(module: str, class_name: str, name: str) -> str:
    """The dataclass field ``name`` of ``class_name``: its annotated assignment and the attribute
    docstring that follows it."""
    source = read_source(module)
    cls = _definition(ast.parse(source), class_name, module)
    for index, stmt in enumerate(cls.body):
        if isinstance(stmt, ast.AnnAssign) and getattr(stmt.target, "id", None) == name:
            docstring = cls.body[index + 1] if index + 1 < len(cls.body) else None
            if not (
                isinstance(docstring, ast.Expr)
                and isinstance(docstring.value, ast.Constant)
                and isinstance(docstring.value.value, str)
            ):
                raise LiftError(f"{module}: field {class_name}.{name} has no docstring")
            return _lines(source, stmt.lineno, docstring.end_lineno)
    raise LiftError(f"{module}: field {class_name}.{name} not found")


def _mentions_attribute(node: ast.AST, attribute: str) -> bool:
    return any(
        isinstance(n, ast.Attribute)
        and n.attr == attribute
        and isinstance(n.value, ast.Name)
        and n.value.id == "self"
        for n in ast.walk(node)
    )


def statements_checking(module: str, qualname: str, attribute: str) -> str:
    """The top-level statements of function ``qualname`` that read ``self.<attribute>``, in
    order, dedented: the checks of one config field in ``__post_init__``."""
    source = read_source(module)
    function = _definition(ast.parse(source), qualname, module)
    picked = [stmt for stmt in function.body if _mentions_attribute(stmt, attribute)]
    if not picked:
        raise LiftError(f"{module}: {qualname} has no statement reading self.{attribute}")
    return "\n".join(_lines(source, stmt.lineno, stmt.end_lineno) for stmt in picked)


def _bound_names(node: ast.stmt) -> List[str]:
    return [(alias.asname or alias.name).split(".")[0] for alias in node.names]


def _used_names(nodes: Iterable[ast.AST]) -> set:
    used = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Name):
                used.add(n.id)
    return used


def _import_line(node: ast.stmt, names: Sequence[ast.alias], module_renames: Dict[str, str]):
    if isinstance(node, ast.Import):
        return ast.unparse(ast.Import(names=list(names))), names[0].name
    target = module_renames.get(node.module, node.module)
    if target.startswith("megatron.minimax"):
        raise LiftError(f"import from {node.module} has no megatron-core counterpart")
    return ast.unparse(ast.ImportFrom(module=target, names=list(names), level=0)), target


def module_with(
    module: str, names: Sequence[str], header: str, module_renames: Dict[str, str]
) -> str:
    """A new module made of ``module``'s docstring, the imports that the top-level definitions
    ``names`` use (``from`` imports of this package renamed by ``module_renames``), and those
    definitions, sorted and spaced as isort (black profile) and black lay them out.

    Args:
        module: source file, relative to ``megatron/minimax``.
        names: top-level classes/functions to carry, in order.
        header: the first line(s) of the new file (its copyright notice).
        module_renames: ``{"megatron.minimax.x": "megatron.core.x"}`` for imports that move.
    """
    source = read_source(module)
    tree = ast.parse(source)
    docstring = tree.body[0]
    if not (isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)):
        raise LiftError(f"{module}: no module docstring")
    definitions = [_definition(tree, name, module) for name in names]
    used = _used_names(definitions)

    sections: Dict[str, List[tuple]] = {"stdlib": [], "thirdparty": [], "firstparty": []}
    for node in tree.body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        kept = [a for a, bound in zip(node.names, _bound_names(node)) if bound in used]
        if not kept:
            continue
        line, target = _import_line(node, kept, module_renames)
        top = target.split(".")[0]
        section = (
            "firstparty"
            if top == "megatron"
            else "stdlib" if top in sys.stdlib_module_names else "thirdparty"
        )
        # isort (default): plain imports before from-imports, then by module name.
        sections[section].append((isinstance(node, ast.ImportFrom), target, line))

    blocks = [header.rstrip("\n"), _lines(source, docstring.lineno, docstring.end_lineno)]
    imports = [
        "\n".join(line for _, _, line in sorted(entries))
        for entries in sections.values()
        if entries
    ]
    blocks.append("\n\n".join(imports))
    parts = ["\n".join(blocks[:2]), blocks[2]]
    parts += [_lines(source, _first_line(d), d.end_lineno) for d in definitions]
    return parts[0] + "\n\n" + parts[1] + "\n\n\n" + "\n\n\n".join(parts[2:]) + "\n"
