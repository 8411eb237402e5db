# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""What kind of megatron-core tree a path is, and which version.

Two kinds are patched: an unpacked megatron-core sdist (``megatron/core`` and
``megatron/training``, no tests) and a Megatron-LM git checkout (the same packages plus
``tests/unit_tests``, which then also receives the series' unit tests).
"""

import ast
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


class TargetError(ValueError):
    """The path is not a megatron-core tree this tool can patch."""


@dataclass(frozen=True)
class TargetTree:
    """A megatron-core source tree.

    Args:
        root: the directory holding ``megatron/core``.
        version: ``megatron.core.package_info.__version__`` of the tree.
        commit: the git commit (short hash) of a checkout, else None.
        has_unit_tests: True for a Megatron-LM checkout (``tests/unit_tests`` exists).
    """

    root: Path
    version: str
    commit: Optional[str]
    has_unit_tests: bool

    def describe(self) -> str:
        """``megatron-core 0.19.2`` or ``Megatron-LM 0.20.0 (d98e8a6)``."""
        if self.has_unit_tests:
            return f"Megatron-LM {self.version}" + (f" ({self.commit})" if self.commit else "")
        return f"megatron-core {self.version}"


def _package_version(package_info: Path) -> str:
    values = {}
    for node in ast.parse(package_info.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
        ):
            values[node.targets[0].id] = node.value.value
    try:
        return (
            f"{values['MAJOR']}.{values['MINOR']}.{values['PATCH']}{values.get('PRE_RELEASE', '')}"
        )
    except KeyError:
        raise TargetError(f"{package_info}: no MAJOR/MINOR/PATCH") from None


def _git_commit(root: Path) -> Optional[str]:
    if not (root / ".git").exists():
        return None
    result = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None if result.returncode == 0 else None


def inspect_target(root: Path) -> TargetTree:
    """Recognise the tree at ``root``.

    Raises:
        TargetError: ``root`` holds no ``megatron/core`` with a ``package_info.py``, or no
            ``megatron/training`` beside it (a partial tree would mix with an installed one).
    """
    root = Path(root)
    if not root.is_dir():
        raise TargetError(f"{root}: not a directory")
    package_info = root / "megatron" / "core" / "package_info.py"
    if not package_info.is_file():
        raise TargetError(
            f"{root}: no megatron/core/package_info.py (expected an unpacked megatron-core sdist "
            "or a Megatron-LM checkout)"
        )
    if not (root / "megatron" / "training").is_dir():
        raise TargetError(f"{root}: megatron/core without megatron/training beside it")
    return TargetTree(
        root=root,
        version=_package_version(package_info),
        commit=_git_commit(root),
        has_unit_tests=(root / "tests" / "unit_tests").is_dir(),
    )
