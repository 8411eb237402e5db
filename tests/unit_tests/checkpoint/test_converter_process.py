# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Settings for a converter process: megatron-core without TorchDynamo (and without the garbage
collector during the import), glibc keeping freed memory."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _run_fresh(script: str) -> str:
    """Runs ``script`` in a fresh interpreter (the settings are process-wide); returns stdout."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": os.defpath},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_megatron_core_imported_without_dynamo_or_inductor():
    # A fresh interpreter: in this one megatron-core (and Dynamo) are imported already.
    script = textwrap.dedent("""
        import gc
        import sys
        import torch
        compile_ = torch.compile
        from megatron.minimax.checkpoint.converter_process import import_megatron_core_uncompiled
        assert import_megatron_core_uncompiled() is True
        # The collector runs again; what the import created is frozen out of its collections.
        assert gc.isenabled() and gc.get_freeze_count() > 10000
        assert import_megatron_core_uncompiled() is False
        from megatron.core import jit
        from megatron.core.fusions import fused_bias_geglu
        from megatron.minimax.checkpoint import hf_to_mcore, mcore_to_hf
        assert torch.compile is compile_
        def f(x):
            return x
        assert jit.jit_fuser(f) is f
        # The fused functions are the plain Python functions.
        assert type(fused_bias_geglu.geglu).__name__ == "function"
        loaded = sorted(m for m in ("torch._dynamo", "torch._inductor.compile_fx") if m in sys.modules)
        print("LOADED", loaded)
        """)
    assert "LOADED []" in _run_fresh(script)


def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    # A fresh interpreter: the settings are process-wide.
    script = textwrap.dedent("""
        import resource
        import torch
        from megatron.minimax.checkpoint.converter_process import keep_freed_memory_mapped

        def faults_for_allocations():
            # Three tensors alive at once, then all freed, ten times: what a worker does.
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                blocks = [torch.empty(16 * 1024 * 1024, dtype=torch.uint8).fill_(1) for _ in range(3)]
                del blocks
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        # From a known state, glibc's initial one with its adaptive threshold switched off:
        # every block mapped on allocation and unmapped on free.
        import ctypes
        assert ctypes.CDLL(None).mallopt(-3, 128 * 1024) == 1
        default = faults_for_allocations()
        assert keep_freed_memory_mapped() is True
        faults_for_allocations()
        kept = faults_for_allocations()
        print("FAULTS", default, kept)
        """)
    default, kept = map(int, _run_fresh(script).split("FAULTS")[1].split())
    # Ten rounds of 48 MiB are 120k pages: mapped and unmapped, each is faulted in again; kept,
    # they are reused.
    assert default > 10 * 4096, (default, kept)
    assert kept < 1000, (default, kept)
