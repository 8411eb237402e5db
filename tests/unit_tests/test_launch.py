# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""What the command-line tools share (megatron/minimax/launch.py): quiet output, real warnings."""

import subprocess
import sys
import textwrap


def test_quiet_library_notices_keeps_real_warnings():
    # In a fresh interpreter: the filters are the tool process's, for its whole life.
    script = textwrap.dedent("""
        import logging, warnings
        from megatron.minimax.launch import quiet_library_notices
        quiet_library_notices()
        logging.basicConfig(format="%(name)s: %(message)s")
        import megatron.core.models.gpt.gpt_model  # import-time notices (TE, Apex, absl, CUDA)
        logging.getLogger("megatron.core.models.gpt.gpt_model").warning("GPTModel IS DEPRECATED.")
        warnings.warn("Apex is not installed. Falling back to Torch Norm")
        import modelopt.torch.quantization  # its version-matrix notice, torch.jit deprecation
        # Real ones stay: another warning, ours, and other records of the same loggers.
        warnings.warn("a real warning")
        logging.getLogger("megatron.minimax.checkpoint").warning("NaN/Inf in 1 tensors")
        logging.getLogger("megatron.core.models.gpt.gpt_model").warning("something else")
        """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 3, proc.stderr
    assert lines[0].endswith("UserWarning: a real warning")
    assert lines[1:] == [
        "megatron.minimax.checkpoint: NaN/Inf in 1 tensors",
        "megatron.core.models.gpt.gpt_model: something else",
    ]
