# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Plan the native series on a tree, write it into the tree, and export it as ``git format-patch``.

Planning applies every edit of every feature in memory (:class:`~megatron.minimax.upstream.
source_edits.SourceTree`); an error in any edit stops before a single file is written. Writing
replaces each changed file atomically. The exported series is one commit per feature that
changes something, made in a scratch git repository holding only the touched files, so the
patches' paths and contexts are those of the tree and ``git apply`` them to any copy of it.
"""

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from megatron.minimax.upstream.native_series import SERIES, Feature
from megatron.minimax.upstream.source_anchor import is_present
from megatron.minimax.upstream.source_edits import EditError, SourceTree
from megatron.minimax.upstream.source_lifting import LiftError
from megatron.minimax.upstream.target_tree import TargetTree

APPLIED, PRESENT, UPSTREAM = "applied", "already applied", "already in this tree"


class SeriesError(ValueError):
    """The series cannot be applied to this tree; the message is one line."""


@dataclass
class FeaturePlan:
    """What one feature does to the tree.

    Args:
        feature: the feature.
        status: :data:`APPLIED` (it changes files), :data:`PRESENT` (its edits are all there
            already) or :data:`UPSTREAM` (the tree has the change from elsewhere; skipped).
        files: ``path -> text after this feature`` for the files it changes.
    """

    feature: Feature
    status: str
    files: Dict[str, str]


@dataclass
class SeriesPlan:
    """The series planned on one tree."""

    target: TargetTree
    features: List[FeaturePlan]
    originals: Dict[str, Optional[str]]

    @property
    def applied(self) -> List[FeaturePlan]:
        """The features that change the tree, in series order."""
        return [plan for plan in self.features if plan.status == APPLIED]

    def final_texts(self) -> Dict[str, str]:
        """``path -> new text`` of every file the series changes."""
        out: Dict[str, str] = {}
        for plan in self.applied:
            out.update(plan.files)
        return out


def plan_series(target: TargetTree, series: Sequence[Feature] = SERIES) -> SeriesPlan:
    """Apply ``series`` to ``target`` in memory.

    Raises:
        SeriesError: an anchor is missing or ambiguous, a file conflicts, or this package's
            sources lack what the series lifts; one line naming the file, the anchor and the tree.
    """
    tree = SourceTree(target.root)
    plans = []
    for feature in series:
        try:
            if feature.already_upstream is not None:
                path, anchor = feature.already_upstream
                source = tree.read(path)
                if source is not None and is_present(source, anchor):
                    plans.append(FeaturePlan(feature, UPSTREAM, {}))
                    continue
            edits = feature.edits()
            if target.has_unit_tests:
                edits += feature.test_edits()
            for edit in edits:
                tree.read(edit.path)
            before = tree.snapshot()
            for edit in edits:
                edit.apply(tree)
        except (EditError, LiftError) as e:
            raise SeriesError(f"{feature.name}: {e} ({target.describe()})") from None
        after = tree.snapshot()
        files = {path: text for path, text in after.items() if before.get(path) != text}
        plans.append(FeaturePlan(feature, APPLIED if files else PRESENT, files))
    originals = {path: original for path, (original, _) in tree.changes().items()}
    return SeriesPlan(target=target, features=plans, originals=originals)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if path.exists():
            shutil.copymode(path, tmp)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_into_tree(plan: SeriesPlan) -> List[str]:
    """Write the planned files into the target tree; returns their paths."""
    texts = plan.final_texts()
    for path, text in texts.items():
        _write_atomically(plan.target.root / path, text)
    return sorted(texts)


def _git(work: Path, *args: str, env: Optional[dict] = None, stdin: Optional[str] = None) -> str:
    result = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false", *args],
        cwd=work,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode != 0:
        raise SeriesError(f"git {args[0]} failed: {result.stderr.strip().splitlines()[-1]}")
    return result.stdout


def _author_env(author: Tuple[str, str]) -> dict:
    name, email = author
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME=name,
        GIT_AUTHOR_EMAIL=email,
        GIT_COMMITTER_NAME=name,
        GIT_COMMITTER_EMAIL=email,
    )
    return env


def write_patch_series(plan: SeriesPlan, out_dir: Path, author: Tuple[str, str]) -> List[Path]:
    """Export the applied features as ``git format-patch`` files in ``out_dir``.

    ``out_dir`` must not exist or be empty; the patches are written to a hidden sibling that is
    renamed into place when complete. Each commit carries the feature's message and a
    ``Signed-off-by`` line for ``author`` (Megatron-LM requires the DCO sign-off).

    Returns:
        The patch files, in series order; none (and no ``out_dir``) when the tree already carries
        every feature.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SeriesError(f"{out_dir}: exists and is not an empty directory")
    applied = plan.applied
    if not applied:
        return []
    env = _author_env(author)
    with tempfile.TemporaryDirectory(prefix="native-series-") as scratch:
        work = Path(scratch) / "tree"
        work.mkdir()
        _git(work, "init", "-q")
        for path, original in plan.originals.items():
            if original is not None:
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                (work / path).write_text(original, encoding="utf-8")
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "--allow-empty", "-m", "base", env=env)
        for feature_plan in applied:
            for path, text in feature_plan.files.items():
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                (work / path).write_text(text, encoding="utf-8")
            message = f"{feature_plan.feature.subject}\n\n{feature_plan.feature.body}\n"
            _git(work, "add", "-A")
            _git(work, "commit", "-q", "-s", "-F", "-", env=env, stdin=message)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent or "."))
        try:
            _git(
                work,
                "format-patch",
                "-q",
                "--no-signature",
                "-o",
                str(staging.resolve()),
                f"HEAD~{len(applied)}..HEAD",
                env=env,
            )
            if out_dir.exists():
                out_dir.rmdir()
            os.replace(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return sorted(out_dir.glob("*.patch"))
