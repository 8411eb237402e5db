# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Atomic output directories: write into a hidden sibling, rename into place when complete.

A crash or Ctrl-C never leaves a directory at the destination that looks like a finished
checkpoint, and a rerun starts from a clean slate (the stale sibling is removed).
"""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError


def _incomplete_path(destination: Path) -> Path:
    return destination.parent / f".{destination.name}.incomplete"


def check_destination(destination: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty destination unless ``overwrite``; check it is writable."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise CheckpointError(f"{destination}: exists and is not a directory")
    if destination.is_dir() and any(destination.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{destination}: exists and is not empty (pass --overwrite to replace it)"
        )
    parent = destination.parent
    if parent.exists() and not parent.is_dir():
        raise CheckpointError(f"{parent}: output parent is not a directory")
    if not parent.is_dir():
        raise CheckpointError(f"{parent}: output parent directory does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"{parent}: output parent directory is not writable")


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def prepare_output_dir(destination: Path, overwrite: bool = False) -> Path:
    """Checks ``destination`` (see :func:`check_destination`) and creates its fresh hidden
    sibling, removing one left over from an interrupted run; returns the sibling.

    For writers that cannot hold :func:`atomic_output_dir` open (e.g. several processes writing
    into one directory): finish with :func:`publish_output_dir`, or remove the sibling on failure.
    """
    destination = Path(destination)
    check_destination(destination, overwrite)
    work = _incomplete_path(destination)
    try:
        if work.exists():
            shutil.rmtree(work)  # left over from an interrupted run
        work.mkdir()
    except OSError as e:
        # e.g. a read-only or pseudo filesystem that os.access() does not flag (as root).
        raise CheckpointError(
            f"{destination.parent}: cannot create the output directory there ({e.strerror})"
        ) from None
    return work


def publish_output_dir(work: Path, destination: Path) -> None:
    """Moves the complete ``work`` directory to ``destination`` (replacing what is there)."""
    destination = Path(destination)
    old = destination.parent / f".{destination.name}.replaced"
    if destination.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(destination, old)
    os.rename(work, destination)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def atomic_output_dir(destination: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh hidden sibling directory; on success it replaces ``destination``.

    On any exception (``KeyboardInterrupt`` included) the partial directory is removed and the
    destination is left untouched.
    """
    work = prepare_output_dir(destination, overwrite)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    publish_output_dir(work, destination)
