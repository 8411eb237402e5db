#!/usr/bin/env python
# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Benchmark ``convert_minimax_m2.py hf-to-mcore``: memory and throughput against plain file I/O.

    python tools/bench/bench_convert.py [--work-dir DIR] [--workers 2] [--repeat 2] [--evict-cache]

Writes two synthetic checkpoints in the released FP8 format (config, zero-based shards whose
"of" count is one more than the number of files, an index, 128x128-block ``float8_e4m3fn``
weights with fp32 ``weight_scale_inv``, fp32 router, bf16 norms/embedding/head) with the
released layer shapes (hidden 3072, expert width 1536, 48 query heads of 128, 8 KV heads, rotary
dim 64) but few layers and experts and a small vocabulary, of about 1 GB and 4 GB. On the same
disk and in the same run it then measures, for each:

* the converter (``hf-to-mcore --workers N``, a subprocess): wall time and peak RSS
  (``ru_maxrss`` from ``wait4`` of that child alone);
* a plain read + write (a subprocess): read every input byte, write as many bytes as the
  converter wrote through the page cache and fsync them, as a plain copy does; twice in a row;
* for information, the same with ``O_DIRECT`` writes from an aligned buffer, as the converter
  writes where the filesystem allows.

They alternate ``--repeat`` times per checkpoint; the best time of each and the highest peak
RSS count (the machine may be shared). It prints the peak-RSS ratio 4 GB / 1 GB (bar: within
25%) and the conversion throughput as a fraction of plain read + write throughput, end to end
(interpreter start, imports and model layout included), on the 4 GB checkpoint (bar: >= 50%;
the 1 GB figure is printed too, but a fixed start of ~2 s weighs on it), and exits 1 if either
misses. Everything is written under ``--work-dir`` (a fresh directory in /tmp by default) and
removed at the end.

The measuring process imports neither torch nor numpy, so that its own memory cannot leak into a
child's ``ru_maxrss`` (Linux carries the pre-exec high-water mark over to the exec'd program).
"""

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from megatron.minimax.testing.machine import describe_machine

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "checkpoint" / "convert_minimax_m2.py"
GIB = 1024**3

RSS_BAR = 0.25
"""Peak RSS of the 4 GB and 1 GB conversions may differ by less than this fraction."""
THROUGHPUT_BAR = 0.5
"""Conversion throughput must be at least this fraction of plain read + write throughput."""

CHECKPOINTS = {
    # fp8 bytes per layer: attention 44 MB + 32 experts x 14.2 MB; embedding + head 100 MB.
    "1GB": dict(num_hidden_layers=2, num_local_experts=32),
    "4GB": dict(num_hidden_layers=8, num_local_experts=32),
}

PLAIN_RUNS = 2
"""Plain read + write runs per repeat, back to back (see ``measure``)."""

# ------------------------------------------------------------------------------------ baseline


def plain_read_write(
    in_dir: Path, out_dir: Path, out_bytes: int, files: int, direct: bool = False
) -> None:
    """Reads every byte under ``in_dir``; writes ``out_bytes`` (the bytes read, repeated) into
    ``files`` files under ``out_dir``, fsynced, like the converter's data files.

    ``direct``: write with ``O_DIRECT`` from an aligned buffer, as the converter does where the
    filesystem allows (16 MiB writes; ``out_bytes`` rounded up to 4 KiB)."""
    out_dir.mkdir(parents=True)
    size = 16 * 1024 * 1024
    if direct:
        flags = os.O_WRONLY | os.O_CREAT | os.O_DIRECT
        streams = [os.open(out_dir / f"out_{i}.bin", flags, 0o644) for i in range(files)]
        buffer = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
    else:
        streams = [open(out_dir / f"out_{i}.bin", "wb") for i in range(files)]
        buffer = bytearray(size)
    view = memoryview(buffer)
    written, turn = 0, 0

    def emit(data):
        nonlocal written, turn
        data = data[: max(0, out_bytes - written)]
        if data:
            if direct:
                os.write(streams[turn % files], view[: -(-len(data) // 4096) * 4096])
            else:
                streams[turn % files].write(data)
            turn += 1
            written += len(data)

    for path in sorted(in_dir.iterdir()):
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(buffer)
                if not n:
                    break
                emit(view[:n])
                if written < out_bytes:  # the converter writes about 2 bytes per FP8 byte read
                    emit(view[:n])
    while written < out_bytes:
        emit(view)
    for stream in streams:
        if direct:
            os.fsync(stream)
            os.close(stream)
        else:
            stream.flush()
            os.fsync(stream.fileno())
            stream.close()


# ------------------------------------------------------------------------------------ measuring


def _evict(directory: Path) -> None:
    """Drops the (clean) page-cache pages of every file under ``directory``."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _run(cmd, log: Path):
    """Runs ``cmd``; returns (wall seconds, peak RSS bytes of that child alone, exit status)."""
    print(f"    (load average {os.getloadavg()[0]:.2f} before: {Path(cmd[1]).name} {cmd[2]})",
          flush=True)  # fmt: skip
    # The children import megatron.minimax from this checkout, installed or not.
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, proc.returncode


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _self(*args):
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


def measure(work: Path, label: str, spec: dict, workers: int, evict: bool, repeat: int) -> dict:
    """Generates one checkpoint, then alternates converter and plain runs ``repeat`` times."""
    hf_dir, save_dir = work / f"hf_{label}", work / f"mcore_{label}"
    plain_dir = work / f"plain_{label}"
    start = time.perf_counter()
    log = work / f"generate_{label}.log"
    _, _, rc = _run(
        _self("_generate", hf_dir, spec["num_hidden_layers"], spec["num_local_experts"]), log
    )
    if rc:
        raise SystemExit(f"generating {label} failed:\n{log.read_text()[-3000:]}")
    in_bytes = _dir_bytes(hf_dir)
    print(f"[{label}] generated {in_bytes / GIB:.2f} GiB in {time.perf_counter() - start:.1f} s "
          f"({len(list(hf_dir.glob('*.safetensors')))} shards)", flush=True)  # fmt: skip

    runs = {"convert": [], "plain": [], "plain_direct": []}

    def plain(kind, title, extra):
        if evict:
            _evict(hf_dir)
        log = work / f"{kind}_{label}_{len(runs[kind])}.log"
        wall, rss, rc = _run(_self("_plain", hf_dir, plain_dir, out_bytes, workers, *extra), log)
        shutil.rmtree(plain_dir, ignore_errors=True)
        if rc and kind == "plain_direct":
            # For information only: a filesystem may refuse O_DIRECT.
            print(f"[{label}] {title}: failed, skipped ({log.read_text().strip()[-200:]})")
            return
        if rc:
            raise SystemExit(f"{title} failed:\n{log.read_text()[-3000:]}")
        runs[kind].append(dict(wall_s=wall, peak_rss=rss))
        print(f"[{label}] {title}: {wall:.1f} s", flush=True)

    for attempt in range(repeat):
        if evict:
            _evict(hf_dir)
        log = work / f"convert_{label}_{attempt}.log"
        cmd = [sys.executable, TOOL, "hf-to-mcore", "--hf-dir", hf_dir, "--save-dir", save_dir,
               "--workers", workers, "--no-progress"]  # fmt: skip
        wall, rss, rc = _run(list(map(str, cmd)), log)
        if rc:
            raise SystemExit(f"conversion of {label} failed:\n{log.read_text()[-3000:]}")
        out_bytes = _dir_bytes(save_dir)
        summary = next((l for l in log.read_text().splitlines() if l.startswith("read ")), "")
        in_tool = float(summary.split(" in ")[1].split(" s ")[0])
        runs["convert"].append(dict(wall_s=wall, in_tool_s=in_tool, peak_rss=rss))
        print(f"[{label}] converter: {wall:.1f} s wall ({in_tool:.1f} s in the tool), peak RSS "
              f"{rss / GIB:.2f} GiB, wrote {out_bytes / GIB:.2f} GiB", flush=True)  # fmt: skip
        shutil.rmtree(save_dir)

        # The plain read + write twice in a row, both counted: in a VM, the first few GB that a
        # process writes through the page cache after a pause can cost several times more
        # (the hypervisor backs the guest's free pages again); the second run finds them backed.
        for turn in range(PLAIN_RUNS):
            plain("plain", f"plain read+write ({turn + 1}/{PLAIN_RUNS})", [])
        plain("plain_direct", "plain read+write with O_DIRECT writes", ["--direct"])
    shutil.rmtree(hf_dir)

    # Best of the repeats for time (the machine may be shared), worst for memory.
    convert_wall = min(r["wall_s"] for r in runs["convert"])
    in_tool = min(r["in_tool_s"] for r in runs["convert"])
    plain_wall = min(r["wall_s"] for r in runs["plain"])
    direct_wall = min((r["wall_s"] for r in runs["plain_direct"]), default=float("nan"))
    result = dict(
        input_bytes=in_bytes,
        output_bytes=out_bytes,
        convert_wall_s=convert_wall,
        convert_in_tool_s=in_tool,
        convert_peak_rss=max(r["peak_rss"] for r in runs["convert"]),
        plain_wall_s=plain_wall,
        plain_direct_wall_s=direct_wall,
        throughput_ratio=plain_wall / convert_wall,
        throughput_ratio_in_tool=plain_wall / in_tool,
        throughput_ratio_direct=direct_wall / convert_wall,
        runs=runs,
    )
    print(f"[{label}] best of {repeat}: converter {convert_wall:.1f} s ({in_tool:.1f} s in the "
          f"tool), plain {plain_wall:.1f} s: the converter reaches "
          f"{result['throughput_ratio']:.0%} of plain read+write throughput end to end, "
          f"{result['throughput_ratio_in_tool']:.0%} counting the tool's own time; "
          f"{result['throughput_ratio_direct']:.0%} of plain read+write with O_DIRECT writes "
          f"({direct_wall:.1f} s)", flush=True)  # fmt: skip
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_generate"]:
        from megatron.minimax.testing.release_shaped_checkpoint import (
            write_release_shaped_checkpoint,
        )

        write_release_shaped_checkpoint(Path(argv[1]), int(argv[2]), int(argv[3]))
        return 0
    if argv[:1] == ["_plain"]:
        plain_read_write(
            Path(argv[1]), Path(argv[2]), int(argv[3]), int(argv[4]), "--direct" in argv[5:]
        )
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work-dir", type=Path, help="Scratch directory (default: a new one in /tmp)."
    )
    parser.add_argument("--workers", type=int, default=2, help="Converter --workers (default 2).")
    parser.add_argument("--evict-cache", action="store_true",
                        help="Drop the inputs' page cache (posix_fadvise) before each measured "
                             "run; by default the inputs are warm (just written).")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=2,
                        help="Converter and plain runs per checkpoint, alternating; the best "
                             "time and the highest RSS count (default 2).")  # fmt: skip
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)

    if args.work_dir is None:
        work = Path(tempfile.mkdtemp(prefix="bench_convert_", dir="/tmp"))
    else:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench_convert_", dir=args.work_dir))
    free = shutil.disk_usage(work).free / GIB
    print(f"machine: {describe_machine()}\nwork dir: {work} ({free:.0f} GiB free)\npage cache: "
          f"{'evicted before each run' if args.evict_cache else 'warm'}", flush=True)  # fmt: skip
    results = {}
    try:
        for label, spec in CHECKPOINTS.items():
            results[label] = measure(
                work, label, spec, args.workers, args.evict_cache, max(1, args.repeat)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    small, large = results["1GB"], results["4GB"]
    rss_ratio = large["convert_peak_rss"] / small["convert_peak_rss"]
    throughput = large["throughput_ratio"]
    rss_ok = abs(rss_ratio - 1) < RSS_BAR
    throughput_ok = throughput >= THROUGHPUT_BAR
    print(f"peak RSS 4GB/1GB: {rss_ratio:.3f} (bar: within {RSS_BAR:.0%}) "
          f"{'PASS' if rss_ok else 'FAIL'}")  # fmt: skip
    # For information: the rate at which extra input is converted, from the difference of the
    # two sizes (fixed costs such as the converter's ~5 s of imports cancel out).
    extra = large["input_bytes"] - small["input_bytes"]
    convert_rate = extra / (large["convert_wall_s"] - small["convert_wall_s"])
    plain_rate = extra / (large["plain_wall_s"] - small["plain_wall_s"])
    print(f"throughput of the extra 3 GB: converter {convert_rate / GIB:.2f} GiB/s, plain "
          f"{plain_rate / GIB:.2f} GiB/s ({convert_rate / plain_rate:.0%})")  # fmt: skip
    print(f"for information: conversion / plain read+write with O_DIRECT writes, 4GB, end to "
          f"end: {large['throughput_ratio_direct']:.0%}")  # fmt: skip
    print(f"conversion / plain read+write throughput, 4GB, end to end: {throughput:.0%} (bar: >= "
          f"{THROUGHPUT_BAR:.0%}) {'PASS' if throughput_ok else 'FAIL'}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(
            {"machine": describe_machine(), "workers": args.workers,
             "evict_cache": args.evict_cache,
             "repeat": args.repeat, "results": results, "rss_ratio": rss_ratio,
             "throughput_ratio": throughput, "incremental_ratio": convert_rate / plain_rate,
             "pass": rss_ok and throughput_ok}, indent=2) + "\n")  # fmt: skip
    return 0 if rss_ok and throughput_ok else 1


if __name__ == "__main__":
    sys.exit(main())
