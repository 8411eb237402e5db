# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Read pretrain_gpt.py logs of the GPU checks: loss falls, a resumed run repeats the losses,
throughput and MFU. Exit status 1 when a check fails."""

import argparse
import re
import sys
from typing import Dict

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}
"""Dense bf16 peak per GPU (NVIDIA data sheets, SXM)."""

_ITERATION = re.compile(r"iteration\s+(\d+)/\s*\d+")
_FIELDS = {
    "loss": re.compile(r"lm loss: ([0-9.E+-]+)"),
    "ms": re.compile(r"elapsed time per iteration \(ms\): ([0-9.]+)"),
    "tflops": re.compile(r"throughput per GPU \(TFLOP/s/GPU\): ([0-9.]+)"),
}


def parse_log(path: str) -> Dict[int, Dict[str, float]]:
    """iteration -> {loss, ms, tflops} from megatron-training's per-iteration log lines."""
    out = {}
    with open(path, errors="replace") as f:
        for line in f:
            m = _ITERATION.search(line)
            if not m:
                continue
            values = {
                k: float(r.search(line).group(1)) for k, r in _FIELDS.items() if r.search(line)
            }
            if "loss" in values:
                out[int(m.group(1))] = values
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-log", required=True)
    parser.add_argument("--resume-log", required=True)
    parser.add_argument("--resume-from", type=int, required=True)
    parser.add_argument("--seq-length", type=int, required=True)
    parser.add_argument("--global-batch-size", type=int, required=True)
    parser.add_argument("--gpu", default=None, help="H100 or H200 (default: from nvidia-smi).")
    args = parser.parse_args(argv)

    train, resume = parse_log(args.train_log), parse_log(args.resume_log)
    ok = True
    if not train:
        print("FAIL: no iterations in the training log")
        return 1
    first, last = min(train), max(train)
    early = sum(train[i]["loss"] for i in sorted(train)[:5]) / 5
    late = sum(train[i]["loss"] for i in sorted(train)[-5:]) / 5
    falling = late < early
    ok &= falling
    print(
        f"loss: iteration {first} {train[first]['loss']:.4f} -> {last} {train[last]['loss']:.4f}"
        f" (mean of first/last 5: {early:.4f} -> {late:.4f}) {'PASS' if falling else 'FAIL'}"
    )

    repeated = [i for i in sorted(resume) if i > args.resume_from]
    diffs = [abs(resume[i]["loss"] - train[i]["loss"]) for i in repeated if i in train]
    same = bool(diffs) and len(diffs) == len(repeated) and max(diffs) == 0.0
    ok &= same
    print(
        f"resume from {args.resume_from}: {len(diffs)} iterations compared, max |loss diff| "
        f"{max(diffs) if diffs else float('nan'):.3e} {'PASS' if same else 'FAIL'}"
    )

    steady = [train[i] for i in sorted(train)[len(train) // 2 :] if "ms" in train[i]]
    if steady:
        ms = sorted(v["ms"] for v in steady)[len(steady) // 2]
        tokens_per_s = args.seq_length * args.global_batch_size / (ms / 1000)
        tflops = [v["tflops"] for v in steady if "tflops" in v]
        gpu = args.gpu
        if gpu is None:
            try:
                import torch

                gpu = "H200" if "H200" in torch.cuda.get_device_name() else "H100"
            except Exception:  # report throughput even where torch.cuda is unusable
                gpu = "H100"
        line = f"throughput: {tokens_per_s:,.0f} tokens/s (median {ms:.0f} ms/iteration)"
        if tflops:
            median = sorted(tflops)[len(tflops) // 2]
            line += f", {median:.1f} TFLOP/s/GPU, MFU {median / PEAK_BF16_TFLOPS[gpu]:.1%} of {gpu} bf16 peak"
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
