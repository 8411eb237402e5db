#!/usr/bin/env python
# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Benchmark the HF reference of the parity tools: peak host memory against model depth.

    python tools/bench/bench_reference.py [--work-dir DIR] [--layers 4 16] [--experts 8]

Writes synthetic checkpoints in the released FP8 format with the released layer shapes (hidden
3072, expert width 1536, 48 query heads of 128, 8 KV heads; ``--experts`` experts, top-8, vocabulary
8192) at each ``--layers`` depth, and runs on each, in a fresh process, the layer-by-layer
reference (``streamed_hf_logits``) on one sequence of ``--seq-length`` tokens; for comparison,
the whole-model reference (``load_hf_reference_model``) runs at the smallest depth. Each run
reports its own peak resident set (``VmHWM``: the high-water mark of the process's memory, which
starts afresh at ``exec``) and the resident set after its imports.

It prints each peak, the one-layer fp32 size, and the ratio of the layer-by-layer reference's
peak at the largest depth to the smallest (bar: <= 1.25; it would grow with the depth if layers
were kept), and exits 1 above the bar. Everything is written under ``--work-dir`` (a fresh
directory in the system's temporary directory by default) and removed at the end.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from megatron.minimax.testing.machine import describe_machine

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3
MIB = 1024**2

RSS_RATIO_BAR = 1.25
"""Peak RSS of the layer-by-layer reference, deepest / shallowest checkpoint, at most this."""


def _memory_status() -> dict:
    """``VmHWM`` and ``VmRSS`` of this process, in bytes (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out


def run_reference(hf_dir: Path, mode: str, seq_length: int) -> dict:
    """One reference forward in this process (``mode``: ``streamed`` or ``whole``); returns the
    peak resident set and the resident set after imports, in bytes, and the seconds taken."""
    import torch

    from megatron.minimax.models.minimax_m2.hf_reference import (
        hf_logits,
        load_hf_reference_model,
        streamed_hf_logits,
    )

    torch.set_num_threads(1)
    after_imports = _memory_status()["VmRSS"]
    vocab = json.loads((hf_dir / "config.json").read_text())["vocab_size"]
    tokens = torch.randint(0, vocab, (1, seq_length), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    if mode == "streamed":
        logits = streamed_hf_logits(hf_dir, tokens)
    else:
        logits = hf_logits(load_hf_reference_model(hf_dir), tokens)
    seconds = time.perf_counter() - start
    assert logits.shape == (1, seq_length, vocab)
    peak = _memory_status()["VmHWM"]
    return dict(peak_rss=peak, rss_after_imports=after_imports, seconds=seconds)


def _child(*args) -> dict:
    # The children import megatron.minimax from this checkout, installed or not.
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if proc.returncode:
        raise SystemExit(f"{args[0]} {args[1:]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def layer_fp32_bytes(experts: int) -> int:
    """fp32 bytes of one decoder layer of these shapes (what the streamed reference holds)."""
    from megatron.minimax.testing.release_shaped_checkpoint import RELEASE_SHAPES as s

    hidden, ffn = s["hidden_size"], s["intermediate_size"]
    q, kv = s["num_attention_heads"] * s["head_dim"], s["num_key_value_heads"] * s["head_dim"]
    attention = hidden * (q + 2 * kv) + q * hidden + q + kv + 2 * hidden
    moe = experts * 3 * hidden * ffn + experts * (hidden + 1)
    return 4 * (attention + moe)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_generate"]:
        from megatron.minimax.testing.release_shaped_checkpoint import (
            write_release_shaped_checkpoint,
        )

        experts = int(argv[3])
        total = write_release_shaped_checkpoint(
            Path(argv[1]), int(argv[2]), experts, num_experts_per_tok=min(8, experts)
        )
        print(json.dumps({"bytes": total}))
        return 0
    if argv[:1] == ["_reference"]:
        print(json.dumps(run_reference(Path(argv[1]), argv[2], int(argv[3]))))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, help="Scratch directory (default: a new one).")
    parser.add_argument("--layers", type=int, nargs=2, default=[4, 16],
                        help="The two depths compared (default 4 16).")  # fmt: skip
    parser.add_argument("--experts", type=int, default=8,
                        help="Experts per layer, each token routed to min(8, experts) "
                             "(default 8).")  # fmt: skip
    parser.add_argument("--seq-length", type=int, default=64, help="Tokens (default 64).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)

    parent = args.work_dir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_reference_", dir=parent))
    layer_bytes = layer_fp32_bytes(args.experts)
    print(f"machine: {describe_machine()}\nwork dir: {work}\none decoder layer in fp32: "
          f"{layer_bytes / MIB:.0f} MiB ({args.experts} experts)", flush=True)  # fmt: skip
    results = {}
    try:
        for layers in sorted(args.layers):
            hf_dir = work / f"hf_{layers}"
            start = time.perf_counter()
            size = _child("_generate", hf_dir, layers, args.experts)["bytes"]
            print(f"[{layers} layers] generated {size / GIB:.2f} GiB in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
            modes = ["streamed"] + (["whole"] if layers == min(args.layers) else [])
            for mode in modes:
                result = _child("_reference", hf_dir, mode, args.seq_length)
                results[f"{mode}_{layers}"] = result
                print(f"[{layers} layers] {mode:8s} reference: peak RSS "
                      f"{result['peak_rss'] / GIB:.2f} GiB ({result['rss_after_imports'] / GIB:.2f}"
                      f" GiB after imports), {result['seconds']:.1f} s", flush=True)  # fmt: skip
            shutil.rmtree(hf_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    small, large = sorted(args.layers)
    ratio = results[f"streamed_{large}"]["peak_rss"] / results[f"streamed_{small}"]["peak_rss"]
    whole = results[f"whole_{small}"]["peak_rss"] / results[f"streamed_{small}"]["peak_rss"]
    ok = ratio <= RSS_RATIO_BAR
    print(f"for comparison: the whole-model reference at {small} layers peaks at {whole:.2f}x the "
          f"layer-by-layer one, and holds every layer ({large} layers: {large} x "
          f"{layer_bytes / MIB:.0f} MiB)")  # fmt: skip
    print(f"layer-by-layer reference, peak RSS {large} layers / {small} layers: {ratio:.3f} "
          f"(bar: <= {RSS_RATIO_BAR}) {'PASS' if ok else 'FAIL'}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(
            {"machine": describe_machine(), "experts": args.experts, "seq_length": args.seq_length,
             "layer_fp32_bytes": layer_bytes, "results": results, "rss_ratio": ratio,
             "pass": ok}, indent=2) + "\n")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
