# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The machine a benchmark ran on, in one line (standard library only: a measuring parent process
stays small)."""

import os
import platform


def describe_machine() -> str:
    """Architecture, cores, RAM and platform, e.g. ``x86_64, 2 cores, 24 GiB RAM, Linux-...``."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.platform()}"
