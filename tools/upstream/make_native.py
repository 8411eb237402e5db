# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Make this package's features native in a megatron-core source tree, and export the patch series.

    # patch an unpacked megatron-core sdist (or a Megatron-LM checkout) in place
    pip download --no-deps --no-binary :all: megatron-core==0.19.2
    tar xzf megatron_core-0.19.2.tar.gz
    python tools/upstream/make_native.py --target megatron_core-0.19.2

    # ... and write the edits as a git format-patch series, one commit per feature
    python tools/upstream/make_native.py --target megatron_core-0.19.2 --series native-series/

The series (see docs/upstream.md): the autograd-correct all-reduce, the full-dimension QK
RMSNorm, ``TransformerConfig.qk_layernorm_scope`` chosen in ``SelfAttention``,
``moe_router_keep_in_fp32``, the mixed-precision optimizer's checkpoint fix for fp32 parameters
(skipped where the tree has it already), and ``HybridStack``'s final norm from its spec. The code
each edit inserts is lifted from this package's own sources. On a Megatron-LM checkout
(``tests/unit_tests`` present) each commit also adds its unit tests.

Every edit names its anchor: a qualified class or function and a statement it must find exactly
once. A missing or ambiguous anchor stops the tool with one line naming the file, the anchor and
the tree's version, before any file is written (exit 2). Running it again on a patched tree
changes nothing. Exit status: 0 on success, 2 on bad input or a tree the series does not fit.
"""

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

PROG = "make_native.py"
DEFAULT_AUTHOR = ("megatron-minimax contributors", "megatron-minimax@users.noreply.github.com")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Edit a megatron-core source tree so that qk_layernorm_scope, the "
        "full-dimension QK norm, moe_router_keep_in_fp32 and the hybrid final-norm spec are "
        "native megatron-core features; optionally export the edits as a git format-patch "
        "series (one commit per feature).",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--target",
        required=True,
        type=Path,
        help="Tree to patch in place: an unpacked megatron-core 0.19.x sdist, or a Megatron-LM "
        "checkout (then the series also carries unit tests under tests/unit_tests).",
    )
    parser.add_argument(
        "--series",
        type=Path,
        default=None,
        metavar="OUT",
        help="Also write the edits as git format-patch files into OUT (must not exist or be "
        "empty). Needs an unpatched tree: a patched one has nothing left to export.",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="Plan and report what would change; write nothing."
    )
    parser.add_argument(
        "--author",
        default=None,
        metavar="'NAME <EMAIL>'",
        help="Author and Signed-off-by of the exported commits (default: git config user.name "
        f"and user.email, else '{DEFAULT_AUTHOR[0]} <{DEFAULT_AUTHOR[1]}>').",
    )
    return parser.parse_args(argv)


def fail(message: str) -> None:
    """One line on stderr, exit status 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _git_config(key: str) -> str:
    result = subprocess.run(
        ["git", "config", "--get", key], capture_output=True, text=True, check=False
    )
    return result.stdout.strip()


def resolve_author(text: Optional[str]) -> Tuple[str, str]:
    """``(name, email)`` from ``'NAME <EMAIL>'``, git config, or the default."""
    if text is None:
        name, email = _git_config("user.name"), _git_config("user.email")
        return (name, email) if name and email else DEFAULT_AUTHOR
    name, sep, rest = text.partition("<")
    if not sep or not rest.endswith(">") or not name.strip():
        fail(f"--author must look like 'NAME <EMAIL>', got {text!r}")
    return name.strip(), rest[:-1].strip()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the tool; returns the exit status."""
    args = parse_args(argv)
    author = resolve_author(args.author)

    from megatron.minimax.upstream.patch_series import (
        SeriesError,
        plan_series,
        write_into_tree,
        write_patch_series,
    )
    from megatron.minimax.upstream.target_tree import TargetError, inspect_target

    try:
        target = inspect_target(args.target)
        plan = plan_series(target)
    except (TargetError, SeriesError) as e:
        fail(str(e))

    print(f"{target.describe()} at {target.root}")
    for index, feature_plan in enumerate(plan.features, 1):
        files = f" ({len(feature_plan.files)} files)" if feature_plan.files else ""
        print(
            f"  [{index}/{len(plan.features)}] {feature_plan.feature.name}: "
            f"{feature_plan.status}{files}"
        )

    if args.dry_run:
        print("dry run: nothing written")
        return 0
    if args.series is not None:
        try:
            patches = write_patch_series(plan, args.series, author)
        except SeriesError as e:
            fail(str(e))
        if patches:
            print(f"wrote {len(patches)} patches to {args.series}")
        else:
            print(f"no patches written to {args.series}: export from an unpatched tree")
    written = write_into_tree(plan)
    if written:
        print(f"patched {len(written)} files in {target.root}")
    else:
        print("nothing to change: the tree already carries the series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
