# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Shims that let megatron-core 0.19 run on a machine without CUDA (gloo, CPU tensors).

Nothing here is applied on import. Tests, the demo and the CPU path of the parity tool call
:func:`apply_cpu_shims` explicitly. Each shim replaces a hard-coded ``cuda`` device or CUDA
runtime call that megatron-core makes even when ``use_cpu_initialization=True``:

1. RNG tracker: ``torch.cuda.manual_seed``/``get_rng_state`` and the tracker's private
   ``_get_cuda_rng_state``/``_set_cuda_rng_state`` use the CPU generator.
2. ``torch.cuda.current_device()`` returns the CPU device (router buffers, rotary ``inv_freq``,
   communication buffers are allocated on it).
3. ``get_default_causal_mask`` builds the mask on CPU.
4. ``torch.cuda.synchronize`` is a no-op (dist-checkpoint save).
5. alltoall dispatcher: a no-op side stream, and split sizes converted to numpy for CPU tensors
   (upstream converts only CUDA tensors, and gloo's ``all_to_all_single`` needs lists).
6. ``device="cuda"`` literals (pipeline schedules, optimizer, clip-grad): a torch-function mode,
   active for the rest of the process, maps them to CPU, and ``Tensor.cuda()`` returns the tensor.
   The optimizer and clip-grad also check ``Tensor.type()`` against ``torch.cuda.*Tensor`` names,
   so ``type()`` without arguments reports the CUDA name of a CPU tensor.
"""

import contextlib
import logging

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False


class _NoOpStream:
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
        return isinstance(other, _NoOpStream)

    def __hash__(self):
        return 0


class _NoOpEvent:
    def synchronize(self):
        return None

    def wait(self, stream=None):
        return None

    def record(self, stream=None):
        return None


_NO_OP_STREAM = _NoOpStream()


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


def apply_cpu_shims() -> None:
    """Patch megatron-core's CUDA-only calls so it runs on CPU. Idempotent.

    Call it before building models, in every process. Does nothing when CUDA is available.
    """
    global _APPLIED
    if _APPLIED or torch.cuda.is_available():
        return

    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.tensor_parallel.random as tp_random
    import megatron.core.transformer.moe.token_dispatcher as token_dispatcher
    import megatron.core.transformer.utils as transformer_utils

    torch.cuda.manual_seed = torch.manual_seed
    torch.cuda.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    tp_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    tp_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)

    # The tracker's "CUDA" state is now the CPU generator, so its check that the CPU state is
    # untouched inside fork() always fires; the state is still saved and restored correctly.
    logging.getLogger(tp_random.__name__).addFilter(
        lambda record: "CPU RNG state changed within GPU RNG context" not in record.getMessage()
    )
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *args, **kwargs: None

    def causal_mask_on_cpu(sq: int) -> torch.Tensor:
        return torch.triu(torch.ones(sq, sq), diagonal=1).bool()

    transformer_utils.get_default_causal_mask = causal_mask_on_cpu
    fused_softmax.get_default_causal_mask = causal_mask_on_cpu

    torch.cuda.Stream = _NoOpStream
    torch.cuda.current_stream = lambda *args, **kwargs: _NO_OP_STREAM
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()

    upstream_move = token_dispatcher.maybe_move_tensor_to_cpu

    def move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.numpy() if as_numpy else tensor
        return upstream_move(tensor, as_numpy=as_numpy, record_stream=record_stream)

    token_dispatcher.maybe_move_tensor_to_cpu = move_tensor_to_cpu

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    upstream_type = torch.Tensor.type

    def cuda_type_name(self, *args, **kwargs):
        if args or kwargs:
            return upstream_type(self, *args, **kwargs)
        name = upstream_type(self)
        # With the torch-function mode below active, upstream_type dispatches back into this
        # function (torch.Tensor.type is this function then): rename only once.
        return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)

    torch.Tensor.type = cuda_type_name
    _CudaDeviceToCpu().__enter__()
    _APPLIED = True
