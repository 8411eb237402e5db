# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Build a megatron-core tree carrying the native series, for testing against it.

    python tools/upstream/prepare_native_tree.py --out build/native/megatron-core

Downloads the sdist of the installed megatron-core version (cached in ``.cache/sdist``), unpacks
it into ``--out`` (replacing what is there), applies ``make_native.py`` and copies the compiled
dataset helper (``helpers_cpp``, which the sdist builds only on install) from the installed
megatron-core, so that ``PYTHONPATH=OUT`` loads ``megatron.core`` and ``megatron.training``
entirely from the patched tree. Exit status 0, or 2 with one line on failure.
"""

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PROG = "prepare_native_tree.py"
REPO_ROOT = Path(__file__).resolve().parents[2]


def fail(message: str) -> None:
    """One line on stderr, exit status 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def sdist_archive(version: str, cache: Path) -> Path:
    """The cached sdist of megatron-core ``version``, downloaded on first use."""
    archive = cache / f"megatron_core-{version}.tar.gz"
    if archive.is_file():
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    print(f"downloading the megatron-core {version} sdist into {cache}", flush=True)
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--no-binary", ":all:", f"megatron-core=={version}", "-d", str(cache),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if result.returncode != 0 or not archive.is_file():
        lines = (result.stderr or result.stdout).strip().splitlines()
        fail(f"pip download megatron-core=={version} failed: {lines[-1] if lines else '?'}")
    return archive


def unpack(archive: Path, out: Path) -> None:
    """Unpack the sdist's top directory into ``out`` (replaced atomically)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        (top,) = [p for p in staging.iterdir() if p.is_dir()]
        if out.exists():
            shutil.rmtree(out)
        os.replace(top, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def copy_dataset_helper(out: Path) -> None:
    """Copy the installed megatron-core's compiled ``helpers_cpp`` into the tree (found through
    the distribution's file list: importing megatron-core here would take seconds)."""
    helpers = [
        f
        for f in importlib.metadata.files("megatron-core") or []
        if f.name.startswith("helpers_cpp") and f.suffix == ".so"
    ]
    if not helpers:
        fail("the installed megatron-core has no compiled helpers_cpp to copy")
    for helper in helpers:
        shutil.copy2(helper.locate(), out / "megatron" / "core" / "datasets")


def main() -> int:
    """Run the tool; returns the exit status."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="Directory of the patched tree.")
    parser.add_argument(
        "--cache",
        type=Path,
        default=REPO_ROOT / ".cache" / "sdist",
        help="Where the sdist is kept between runs (default: .cache/sdist in the repository).",
    )
    args = parser.parse_args()
    version = importlib.metadata.version("megatron-core")
    archive = sdist_archive(version, args.cache)
    unpack(archive, args.out)
    copy_dataset_helper(args.out)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "upstream" / "make_native.py"),
            "--target",
            str(args.out),
        ]
    )
    if result.returncode != 0:
        return result.returncode
    print(f"native megatron-core {version} ready: PYTHONPATH={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
