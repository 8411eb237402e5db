# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Process-wide settings for a command-line process whose only job is a checkpoint conversion.

Both change the whole process, so the converters' CLI applies them, never the library functions
that a training or RL process may call:

* :func:`import_megatron_core_uncompiled`: the converters use megatron-core only to build the
  model on the meta device and read its checkpoint layout; they never run a fused kernel.
  Importing megatron-core decorates those kernels with ``torch.compile``
  (``megatron.core.jit.jit_fuser``), which imports TorchDynamo and Inductor: 1.6 s of a 4 s
  start-up on a 2-core machine, paid on every conversion. The garbage collector is also held
  off during the import, and the imported objects frozen (``gc.freeze``) out of later
  collections.
* :func:`keep_freed_memory_mapped`: a conversion allocates and frees tensors of 1-50 MB
  thousands of times. glibc returns each to the kernel (``munmap``) and the next one faults its
  pages in again, zeroed: 700k page faults for a 4 GB checkpoint, against 300k when freed memory
  stays in the heap for the next tensor.
"""

import ctypes
import gc
import sys

__all__ = ["import_megatron_core_uncompiled", "keep_freed_memory_mapped"]


def _no_compile(model=None, **_):
    return model if model is not None else (lambda function: function)


def import_megatron_core_uncompiled() -> bool:
    """Imports ``megatron.core`` with ``torch.compile`` replaced by a no-op and the garbage
    collector paused during the import; the objects it created are then frozen (``gc.freeze``).

    Only for processes that never execute megatron-core's fused functions (its ``jit_fuser``
    stays the no-op for the life of the process). ``torch.compile`` itself is restored.

    Returns:
        True if megatron-core was imported here, False if it had already been imported (then
        nothing changes).
    """
    if "megatron.core" in sys.modules:
        return False
    # The imports (torch's too, if it is not imported yet) create a few hundred thousand objects
    # that live as long as the process; the cyclic garbage collector would walk them over and
    # over (0.3 s on a 2-core machine).
    collecting = gc.isenabled()
    gc.disable()
    try:
        import torch

        compile_ = torch.compile
        torch.compile = _no_compile
        try:
            import megatron.core  # noqa: F401
        finally:
            torch.compile = compile_
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
    return True


# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's largest mmap threshold on 64-bit: smaller blocks come from (and return to) the heap."""


def keep_freed_memory_mapped() -> bool:
    """Makes glibc keep freed blocks below 32 MiB in the process for reuse instead of unmapping
    them, and never trim the heap (the default thresholds adapt, but start at 128 KiB).

    Peak memory is unchanged (a freed block is reused, not added to); larger blocks (the
    embedding and output layer) are still mapped and unmapped one by one.

    Returns:
        True if the C library took the settings (glibc), False otherwise (nothing changes).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, 2**31 - 1),
        (_M_TOP_PAD, 64 * 1024 * 1024),
    )
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
