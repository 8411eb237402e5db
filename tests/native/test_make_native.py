# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""tools/upstream/make_native.py on the real megatron-core sdist: the series, idempotence, refusal.

Uses the sdist that ``prepare_native_tree.py`` cached for this session (``.cache/sdist``).
"""

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from megatron.minimax.upstream.native_series import SERIES

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "upstream" / "make_native.py"
VERSION = importlib.metadata.version("megatron-core")
ROUTER_CAST = "        self.weight.data = self.weight.data.to(dtype=self.config.params_dtype)\n"


@pytest.fixture(scope="module")
def sdist():
    archive = REPO / ".cache" / "sdist" / f"megatron_core-{VERSION}.tar.gz"
    if not archive.is_file():
        pytest.fail(f"{archive} is missing: run through 'make test-native'")
    return archive


def _fresh(sdist, where: Path) -> Path:
    where.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(where, filter="data")
    (top,) = list(where.iterdir())
    return top


def _run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def _digest(tree: Path) -> dict:
    return {
        str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(tree.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def series(sdist, tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    tree = _fresh(sdist, root / "target")
    proc = _run("--target", tree, "--series", root / "patches")
    return {
        "root": root,
        "tree": tree,
        "proc": proc,
        "patches": sorted((root / "patches").glob("*")),
    }


class TestSeriesOnTheSdist:
    def test_exit_0_and_one_patch_per_feature(self, series):
        assert series["proc"].returncode == 0, series["proc"].stderr
        names = [p.name for p in series["patches"]]
        assert len(names) == len(SERIES) == 6
        assert names[0].startswith("0001-tensor_parallel-add-all_reduce_sum")
        assert all(name.endswith(".patch") for name in names)
        for patch, feature in zip(series["patches"], SERIES):
            text = patch.read_text()
            assert f"Subject: [PATCH {SERIES.index(feature) + 1}/6] {feature.subject[:30]}" in text
            assert "Signed-off-by: " in text
            assert "tests/unit_tests" not in text  # an sdist has no test tree

    def test_patches_apply_cleanly_to_a_second_fresh_copy(self, series, sdist):
        copy = _fresh(sdist, series["root"] / "second")
        check = subprocess.run(
            ["git", "apply", "--check", *map(str, series["patches"])],
            cwd=copy,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr
        subprocess.run(["git", "apply", *map(str, series["patches"])], cwd=copy, check=True)
        assert _digest(copy) == _digest(series["tree"])  # the series is exactly the edit

    def test_second_run_changes_nothing(self, series):
        before = _digest(series["tree"])
        proc = _run("--target", series["tree"], "--series", series["root"] / "again")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("already applied") == len(SERIES)
        assert "nothing to change" in proc.stdout
        assert _digest(series["tree"]) == before
        assert not (series["root"] / "again").exists()

    def test_dry_run_writes_nothing(self, sdist, tmp_path):
        tree = _fresh(sdist, tmp_path / "dry")
        before = _digest(tree)
        proc = _run("--target", tree, "--dry-run")
        assert proc.returncode == 0 and proc.stdout.count(": applied") == len(SERIES)
        assert _digest(tree) == before


class TestRefusals:
    @pytest.mark.parametrize(
        "edit, expected",
        [
            # The anchor of the SelfAttention change moved: renamed condition.
            (
                ("megatron/core/transformer/attention.py", "if self.config.qk_l2_norm:",
                 "if self.config.qk_l2_norm is True:"),
                "megatron/core/transformer/attention.py: anchor SelfAttention.__init__: "
                "'if self.config.qk_l2_norm:' not found",
            ),
            # An ambiguous anchor: the router's cast appears twice.
            (
                ("megatron/core/transformer/moe/router.py", ROUTER_CAST, ROUTER_CAST * 2),
                "megatron/core/transformer/moe/router.py: anchor Router.reset_parameters: "
                "'self.weight.data = self.weight.data.to(dtype=self.config.params_dtype)' "
                "found 2 times",
            ),
        ],
    )  # fmt: skip
    def test_moved_anchor_one_line_exit_2_tree_untouched(self, sdist, tmp_path, edit, expected):
        tree = _fresh(sdist, tmp_path / "moved")
        path, old, new = edit
        source = (tree / path).read_text()
        assert source.count(old) == 1
        (tree / path).write_text(source.replace(old, new))
        before = _digest(tree)
        proc = _run("--target", tree, "--series", tmp_path / "patches")
        assert proc.returncode == 2
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert expected in lines[0]
        assert lines[0].endswith(f"(megatron-core {VERSION})")
        assert _digest(tree) == before  # not even the features before the failing one
        assert not (tmp_path / "patches").exists()

    @pytest.mark.parametrize(
        "setup, message",
        [
            (lambda root: None, "not a directory"),
            (lambda root: root.mkdir(), "no megatron/core/package_info.py"),
        ],
    )
    def test_not_a_megatron_core_tree(self, tmp_path, setup, message):
        target = tmp_path / "target"
        setup(target)
        proc = _run("--target", target)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr

    def test_non_empty_series_directory_is_refused(self, sdist, tmp_path):
        tree = _fresh(sdist, tmp_path / "t")
        out = tmp_path / "out"
        out.mkdir()
        (out / "keep.txt").write_text("x")
        before = _digest(tree)
        proc = _run("--target", tree, "--series", out)
        assert proc.returncode == 2 and "exists and is not an empty directory" in proc.stderr
        assert _digest(tree) == before


class TestMegatronLMCheckout:
    def test_series_carries_the_unit_tests(self, sdist, tmp_path):
        # An sdist tree with Megatron-LM's tests/unit_tests layout stands for a checkout.
        tree = _fresh(sdist, tmp_path / "checkout")
        for test in {t for f in SERIES for t in f.tests}:
            (tree / "tests" / "unit_tests" / test).parent.mkdir(parents=True, exist_ok=True)
        proc = _run("--target", tree, "--series", tmp_path / "patches")
        assert proc.returncode == 0, proc.stderr
        assert "Megatron-LM" in proc.stdout
        patches = sorted((tmp_path / "patches").glob("*.patch"))
        for patch, feature in zip(patches, SERIES):
            text = patch.read_text()
            for test in feature.tests:
                assert f"b/tests/unit_tests/{test}" in text
            assert (tree / "tests" / "unit_tests" / feature.tests[0]).is_file()
