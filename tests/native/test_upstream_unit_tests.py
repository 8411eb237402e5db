# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The series' own unit tests (Megatron-LM conventions) pass on the patched tree, on CPU.

They are the files ``make_native.py`` adds to a Megatron-LM checkout's ``tests/unit_tests``.
Here they run under ``torchrun`` on 4 gloo processes, as Megatron-LM runs its unit tests on
GPUs, with a CPU stand-in for Megatron-LM's ``Utils`` (``tools/upstream/cpu_test_harness``).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from megatron.minimax.upstream.native_series import SERIES, UPSTREAM_TESTS_DIR

HARNESS = Path(__file__).resolve().parents[2] / "tools" / "upstream" / "cpu_test_harness"
WORLD_SIZE = 4


def _layout_upstream_tests(root: Path) -> list:
    """Megatron-LM's layout: tests/unit_tests/<path> plus the harness' Utils and conftest."""
    unit_tests = root / "tests" / "unit_tests"
    unit_tests.mkdir(parents=True)
    (root / "tests" / "__init__.py").write_text("")
    (unit_tests / "__init__.py").write_text("")
    shutil.copy(HARNESS / "test_utilities.py", unit_tests / "test_utilities.py")
    shutil.copy(HARNESS / "conftest.py", root / "conftest.py")
    files = []
    for feature in SERIES:
        for test in feature.tests:
            target = unit_tests / test
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(UPSTREAM_TESTS_DIR / test, target)
            files.append(str(target.relative_to(root)))
    return files


def test_series_unit_tests_pass_on_cpu(native_tree, tmp_path):
    files = _layout_upstream_tests(tmp_path)
    assert len(files) == sum(len(f.tests) for f in SERIES) >= 6
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD_SIZE),
            "--standalone", "-m", "pytest", "-q", "-p", "no:cacheprovider", *files,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    summaries = re.findall(r"^(\d+) passed.*$", proc.stdout, flags=re.MULTILINE)
    assert len(summaries) == WORLD_SIZE, output[-3000:]  # every rank ran and passed
    assert "skipped" not in proc.stdout and "failed" not in proc.stdout, output[-3000:]
