# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Shims that let megatron-core 0.19 run on a machine without CUDA (gloo, CPU tensors).

Nothing here is applied on import. Library code applies them for the duration of a block with
:func:`cpu_shims`, which restores every replaced function, the logging filter and the
torch-function mode stack on exit, so a caller's process is left as it was. Programs that are
megatron-core programs from start to end (the command-line tools, test worker processes, the
demo's workers) call :func:`apply_cpu_shims` once, for the rest of the process. Both do nothing
when CUDA is available.

Each shim replaces a hard-coded ``cuda`` device or CUDA runtime call that megatron-core makes even
when ``use_cpu_initialization=True``:

1. RNG tracker: ``torch.cuda.manual_seed``/``get_rng_state`` and the tracker's private
   ``_get_cuda_rng_state``/``_set_cuda_rng_state`` use the CPU generator.
2. ``torch.cuda.current_device()`` returns the CPU device (router buffers, rotary ``inv_freq``,
   communication buffers are allocated on it).
3. ``get_default_causal_mask`` builds the mask on CPU.
4. ``torch.cuda.synchronize`` is a no-op (dist-checkpoint save).
5. alltoall dispatcher: a no-op side stream, and split sizes converted to numpy for CPU tensors
   (upstream converts only CUDA tensors, and gloo's ``all_to_all_single`` needs lists).
6. ``device="cuda"`` literals (pipeline schedules, optimizer, clip-grad): a torch-function mode
   maps them to CPU, and ``Tensor.cuda()`` returns the tensor. The optimizer and clip-grad also
   check ``Tensor.type()`` against ``torch.cuda.*Tensor`` names, so ``type()`` without arguments
   reports the CUDA name of a CPU tensor. The mode is entered on the calling thread (torch keeps
   the mode stack per thread).
"""

import contextlib
import logging
import threading
from typing import Any, Callable, Iterator, List, Optional

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["apply_cpu_shims", "cpu_shims", "NoOpStream"]


class NoOpStream:
    """Stands in for ``torch.cuda.Stream`` on CPU, where every op is synchronous.

    A class (not a factory function) because libraries use ``torch.cuda.Stream`` in annotations.
    """

    _instance = None

    def __new__(cls, *args, **kwargs):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def wait_stream(self, other):
        return None

    def record_event(self, event=None):
        return _NoOpEvent()

    def synchronize(self):
        return None

    def __eq__(self, other):
        return isinstance(other, NoOpStream)

    def __hash__(self):
        return 0


class _NoOpEvent:
    def synchronize(self):
        return None

    def wait(self, stream=None):
        return None

    def record(self, stream=None):
        return None


_NO_OP_STREAM = NoOpStream()


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int)  # a bare ordinal means a CUDA device


class _CudaDeviceToCpu(TorchFunctionMode):
    """Rewrites ``device=<cuda>`` arguments of torch calls to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": torch.device("cpu")}
        return func(*args, **kwargs)


_MISSING = object()


class _Patches:
    """Attribute replacements that can be undone exactly, in reverse order.

    An attribute that an object only inherited (``torch.Tensor.cuda`` comes from the C base class)
    is deleted again on undo rather than set, so the class dictionary is left as it was.
    """

    def __init__(self):
        self._undo: List[Callable[[], None]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        own = vars(owner).get(name, _MISSING)
        setattr(owner, name, value)
        if own is _MISSING:
            self._undo.append(lambda: delattr(owner, name))
        else:
            self._undo.append(lambda: setattr(owner, name, own))

    def on_undo(self, fn: Callable[[], None]) -> None:
        self._undo.append(fn)

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


def _rng_state_filter(record: logging.LogRecord) -> bool:
    # The tracker's "CUDA" state is the CPU generator here, so its check that the CPU state is
    # untouched inside fork() always fires; the state is still saved and restored correctly.
    return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _apply(patches: _Patches) -> None:
    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.tensor_parallel.random as tp_random
    import megatron.core.transformer.moe.token_dispatcher as token_dispatcher
    import megatron.core.transformer.utils as transformer_utils

    patches.set(torch.cuda, "manual_seed", torch.manual_seed)
    patches.set(torch.cuda, "get_rng_state", lambda *args, **kwargs: torch.get_rng_state())
    patches.set(
        torch.cuda, "set_rng_state", lambda state, *args, **kwargs: torch.set_rng_state(state)
    )
    patches.set(tp_random, "_get_cuda_rng_state", lambda *args, **kwargs: torch.get_rng_state())
    patches.set(
        tp_random, "_set_cuda_rng_state", lambda state, *args, **kwargs: torch.set_rng_state(state)
    )
    tracker_logger = logging.getLogger(tp_random.__name__)
    tracker_logger.addFilter(_rng_state_filter)
    patches.on_undo(lambda: tracker_logger.removeFilter(_rng_state_filter))

    patches.set(torch.cuda, "current_device", lambda: torch.device("cpu"))
    patches.set(torch.cuda, "synchronize", lambda *args, **kwargs: None)

    def causal_mask_on_cpu(sq: int) -> torch.Tensor:
        return torch.triu(torch.ones(sq, sq), diagonal=1).bool()

    patches.set(transformer_utils, "get_default_causal_mask", causal_mask_on_cpu)
    patches.set(fused_softmax, "get_default_causal_mask", causal_mask_on_cpu)

    patches.set(torch.cuda, "Stream", NoOpStream)
    patches.set(torch.cuda, "current_stream", lambda *args, **kwargs: _NO_OP_STREAM)
    patches.set(torch.cuda, "stream", lambda stream=None: contextlib.nullcontext())

    upstream_move = token_dispatcher.maybe_move_tensor_to_cpu

    def move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.numpy() if as_numpy else tensor
        return upstream_move(tensor, as_numpy=as_numpy, record_stream=record_stream)

    patches.set(token_dispatcher, "maybe_move_tensor_to_cpu", move_tensor_to_cpu)

    patches.set(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    upstream_type = torch.Tensor.type

    def cuda_type_name(self, *args, **kwargs):
        if args or kwargs:
            return upstream_type(self, *args, **kwargs)
        name = upstream_type(self)
        # With the torch-function mode below active, upstream_type dispatches back into this
        # function (torch.Tensor.type is this function then): rename only once.
        return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)

    patches.set(torch.Tensor, "type", cuda_type_name)

    mode = _CudaDeviceToCpu()
    mode.__enter__()
    depth = torch._C._len_torch_function_stack()

    def leave_mode():
        # TorchFunctionMode.__exit__ pops whatever mode is on top: only pop our own.
        if torch._C._len_torch_function_stack() != depth:
            raise RuntimeError(
                "the torch-function mode stack changed inside a cpu_shims() block; modes "
                "entered there must be left there"
            )
        mode.__exit__(None, None, None)

    patches.on_undo(leave_mode)


_lock = threading.Lock()
_depth = 0
_active: Optional[_Patches] = None
_process_wide: Optional[contextlib.ExitStack] = None


@contextlib.contextmanager
def cpu_shims() -> Iterator[None]:
    """Apply the CPU shims for the duration of the block, and restore on exit everything they
    replaced (functions of torch and megatron-core, the RNG-tracker log filter, the torch-function
    mode stack).

    Blocks nest: an inner block (or one inside :func:`apply_cpu_shims`' process-wide scope) uses
    the shims already in place and restores nothing. Does nothing when CUDA is available.
    """
    global _depth, _active
    if torch.cuda.is_available():
        yield
        return
    with _lock:
        if _depth == 0:
            patches = _Patches()
            try:
                _apply(patches)
            except BaseException:
                patches.undo()
                raise
            _active = patches
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                patches, _active = _active, None
                patches.undo()


def apply_cpu_shims() -> None:
    """Apply the CPU shims for the rest of the process. Idempotent.

    For processes that are megatron-core programs from start to end (command-line tools, test and
    demo worker processes); call it before building models, in every process. Library functions
    use :func:`cpu_shims` instead. Does nothing when CUDA is available.
    """
    global _process_wide
    if _process_wide is None and not torch.cuda.is_available():
        stack = contextlib.ExitStack()
        stack.enter_context(cpu_shims())
        _process_wide = stack
