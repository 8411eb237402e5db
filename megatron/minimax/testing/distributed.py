# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Run a function in N local gloo processes and collect each rank's return value.

Tests batch several parallel layouts into one launch: the function initialises and destroys
Megatron's model-parallel state for each layout itself. The processes meet through a file store
private to the launch, not a TCP port: a port found free can be taken by another launch before
rank 0 binds it, and ranks of two launches would then join each other's groups and hang.
"""

import io
import os
import socket
import tempfile
import traceback
from typing import Any, Callable, List

import torch
import torch.distributed
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, store_file, fn, args, queue):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        from megatron.minimax.platform.cpu_shims import apply_cpu_shims

        apply_cpu_shims()
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{store_file}", rank=rank, world_size=world_size
        )
        result = fn(rank, world_size, *args)
        # Serialise by value: torch's queue pickler would pass tensors through shared memory
        # that disappears when this process exits.
        buffer = io.BytesIO()
        torch.save(result, buffer)
        queue.put((rank, True, buffer.getvalue()))
    except BaseException:  # report any failure, including SystemExit, to the parent
        queue.put((rank, False, traceback.format_exc()))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_in_processes(fn: Callable, world_size: int, *args, timeout: float = 600) -> List[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` forked gloo processes.

    Returns the per-rank results (rank order). Raises ``RuntimeError`` with the failing ranks'
    tracebacks if any rank fails or does not finish within ``timeout`` seconds.
    """
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = _free_port()
    store_fd, store_file = tempfile.mkstemp(prefix="gloo-store-")
    os.close(store_fd)
    procs = [
        ctx.Process(target=_worker, args=(rank, world_size, port, store_file, fn, args, queue))
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    results, failures = {}, {}
    try:
        for _ in range(world_size):
            rank, ok, value = queue.get(timeout=timeout)
            (results if ok else failures)[rank] = value
            if failures:
                break
    except Exception as e:  # queue.Empty on timeout
        failures[-1] = f"timed out after {timeout}s waiting for ranks: {e!r}"
    finally:
        for p in procs:
            p.join(timeout=5 if failures else 60)
            if p.is_alive():
                p.kill()
        if os.path.exists(store_file):
            os.unlink(store_file)
    if failures:
        raise RuntimeError(
            "\n".join(f"--- rank {rank} ---\n{tb}" for rank, tb in sorted(failures.items()))
        )
    return [torch.load(io.BytesIO(results[rank]), weights_only=False) for rank in range(world_size)]
