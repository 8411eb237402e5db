# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""How a MiniMax-M2 model is laid out in a torch_dist checkpoint, read from the model itself.

The layout is taken from ``sharded_state_dict()`` of the model built on the meta device at
TP=PP=EP=1, so keys, global shapes, chunk offsets and the GLU split of expert ``linear_fc1``
are exactly what megatron-core writes and reads (torch_dist stores global shapes, and loading
reshards to any layout). Each model tensor becomes a :class:`CheckpointUnit`: its canonical
name for the weight table, and the torch_dist chunks it is stored as, with the functions that
split a full tensor into those chunks and merge them back (megatron-core's own sharded-tensor
factories).
"""

import contextlib
import dataclasses
import socket
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
import torch.distributed

from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import (
    ShardedObject,
    ShardedTensor,
    ShardedTensorFactory,
)


@dataclass(frozen=True)
class CheckpointChunk:
    """One chunk of a global tensor in a torch_dist checkpoint."""

    key: str
    global_shape: Tuple[int, ...]
    global_offset: Tuple[int, ...]
    chunk_shape: Tuple[int, ...]
    """Chunk shape in the global tensor's rank (prepended layer/expert axes are 1)."""
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        numel = 1
        for size in self.chunk_shape:
            numel *= size
        return numel * torch.empty((), dtype=self.dtype).element_size()


def _chunk_of(sharded: ShardedTensor) -> CheckpointChunk:
    return CheckpointChunk(
        key=sharded.key,
        global_shape=tuple(sharded.global_shape),
        global_offset=tuple(sharded.global_offset),
        chunk_shape=(1,) * sharded.prepend_axis_num + tuple(sharded.local_shape),
        dtype=sharded.dtype,
    )


@dataclass
class CheckpointUnit:
    """One model tensor of the TP=PP=EP=1 model and the chunks that store it."""

    local_name: str
    """Module path in the model (``decoder.layers.3.mlp.experts.local_experts.7.linear_fc1.weight``)."""
    canonical_name: str
    """Name in the weight table (equal to ``local_name`` at TP=PP=EP=1)."""
    shape: Tuple[int, ...]
    dtype: torch.dtype
    sharded: Union[ShardedTensor, ShardedTensorFactory]
    chunks: List[CheckpointChunk]

    @property
    def nbytes(self) -> int:
        return sum(chunk.nbytes for chunk in self.chunks)

    def to_chunks(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        """Split the full tensor into the data of :attr:`chunks`, in order."""
        if tuple(tensor.shape) != self.shape or tensor.dtype != self.dtype:
            raise ValueError(
                f"{self.canonical_name}: got {tensor.dtype} {tuple(tensor.shape)}, the checkpoint "
                f"stores {self.dtype} {self.shape}"
            )
        if isinstance(self.sharded, ShardedTensorFactory):
            built = dataclasses.replace(self.sharded, data=tensor).build()
            pieces = [sharded.data for sharded in nested_values(built)]
        else:
            pieces = [tensor]
        return [p.reshape(c.chunk_shape) for p, c in zip(pieces, self.chunks)]

    def from_chunks(self, pieces: List[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`to_chunks`."""
        if not isinstance(self.sharded, ShardedTensorFactory):
            return pieces[0].reshape(self.shape)
        # The factory is stored without data; build its structure from a meta tensor.
        placeholder = torch.empty(self.shape, dtype=self.dtype, device="meta")
        built = dataclasses.replace(self.sharded, data=placeholder).build()
        leaves = iter(pieces)

        def fill(node):
            if isinstance(node, dict):
                return {k: fill(v) for k, v in node.items()}
            if isinstance(node, list):
                return [fill(v) for v in node]
            piece = next(leaves)
            return piece.reshape(tuple(node.local_shape))

        return self.sharded.merge_fn(fill(built)).reshape(self.shape)


@dataclass
class DistCheckpointLayout:
    """Every tensor chunk and object of a model's torch_dist checkpoint."""

    units: List[CheckpointUnit]
    objects: List[ShardedObject]
    """Non-tensor entries (``_extra_state``), stored as pickled bytes under ``unique_key``."""

    def unit(self, canonical_name: str) -> CheckpointUnit:
        for unit in self.units:
            if unit.canonical_name == canonical_name:
                return unit
        raise KeyError(canonical_name)

    def keys(self) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        """torch_dist key -> (global shape, dtype)."""
        out = {}
        for unit in self.units:
            for chunk in unit.chunks:
                out[chunk.key] = (chunk.global_shape, chunk.dtype)
        return out


@contextlib.contextmanager
def single_process_group() -> Iterator[None]:
    """For the block: a one-process gloo group and Megatron's parallel state at size 1, for
    model-free tools that need megatron-core's model classes, with megatron-core's CPU shims
    applied when there is no GPU.

    A group or parallel state that already exists is used as it is. What the block created is
    destroyed on exit and the shims are restored: the caller's process is left as it was (a group
    left behind would also break the caller's later ``fork()``-ed workers).
    """
    from megatron.core import parallel_state

    from megatron.minimax.platform.cpu_shims import cpu_shims
    from megatron.minimax.platform.parallel_state import destroy_model_parallel

    with cpu_shims():
        created_group = not torch.distributed.is_initialized()
        if created_group:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            torch.distributed.init_process_group(
                "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
            )
        created_state = not parallel_state.model_parallel_is_initialized()
        try:
            if created_state:
                parallel_state.initialize_model_parallel()
            yield
        finally:
            if created_state:
                destroy_model_parallel()
            if created_group:
                torch.distributed.destroy_process_group()


def model_class_of_keys(keys: Iterable[str]) -> str:
    """``"gpt"`` or ``"hybrid"``: the model class whose ``sharded_state_dict()`` wrote these
    torch_dist keys. A ``GPTModel`` stacks its decoder layers under ``decoder.layers.<name>``
    and has ``decoder.final_layernorm``; a ``HybridModel`` keys every layer
    ``decoder.layers.<i>.<name>`` and has ``decoder.final_norm``.

    Raises:
        ValueError: neither final norm is there.
    """
    keys = list(keys)
    if any(key.startswith("decoder.final_norm.") for key in keys):
        return "hybrid"
    if any(key.startswith("decoder.final_layernorm.") for key in keys):
        return "gpt"
    raise ValueError("neither decoder.final_layernorm nor decoder.final_norm is in the checkpoint")


def dist_checkpoint_layout(
    hf_config: Dict, dtype: torch.dtype, mtp_num_layers: Optional[int] = None, model: str = "gpt"
) -> DistCheckpointLayout:
    """The torch_dist layout of the MiniMax-M2 model described by ``hf_config``, stored in
    ``dtype`` (the router gate and expert bias are fp32 whatever ``dtype`` is), as a ``GPTModel``
    (``model="gpt"``) or a ``HybridModel`` (``"hybrid"``) saves it.

    Builds the model on the meta device (no memory for weights), so it is cheap for the 229B
    model. Needs a process group (see :func:`single_process_group`).
    """
    from megatron.minimax.models.conversion.model_weights import model_tensors
    from megatron.minimax.models.minimax_m2.hf_config import minimax_m2_config_from_hf
    from megatron.minimax.models.minimax_m2.hybrid_pattern import minimax_m2_hybrid_config
    from megatron.minimax.models.minimax_m2.model import (
        build_minimax_m2_hybrid_model,
        build_minimax_m2_model,
    )

    config, model_args = minimax_m2_config_from_hf(
        hf_config,
        mtp_num_layers=mtp_num_layers,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        use_cpu_initialization=True,
        perform_initialization=False,
        transformer_impl="local",
    )
    stage = dict(use_transformer_engine=False, pre_process=True, post_process=True)
    with torch.device("meta"):
        if model == "hybrid":
            config, pattern = minimax_m2_hybrid_config(config)
            model = build_minimax_m2_hybrid_model(config, model_args, pattern, **stage)
        else:
            model = build_minimax_m2_model(config, model_args, **stage)
    canonical = {mt.local_name: mt.canonical_name for mt in model_tensors(model)}
    units, objects = [], []
    for local_name, sharded in model.sharded_state_dict().items():
        if isinstance(sharded, ShardedObject):
            objects.append(sharded)
            continue
        if isinstance(sharded, ShardedTensorFactory):
            chunks = [_chunk_of(s) for s in nested_values(sharded.build())]
            data = sharded.data
        elif isinstance(sharded, ShardedTensor):
            chunks = [_chunk_of(sharded)]
            data = sharded.data
        else:
            raise TypeError(f"{local_name}: unexpected sharded entry {type(sharded).__name__}")
        units.append(
            CheckpointUnit(
                local_name=local_name,
                canonical_name=canonical[local_name],
                shape=tuple(data.shape),
                dtype=data.dtype,
                sharded=(
                    sharded.without_data() if isinstance(sharded, ShardedTensorFactory) else sharded
                ),
                chunks=chunks,
            )
        )
    return DistCheckpointLayout(units=units, objects=objects)
