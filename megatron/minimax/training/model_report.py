# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Parameter counts and per-rank training memory of a MiniMax-M2 model, from the model itself.

Every number comes from a model that ``pretrain_gpt.py``'s (or ``pretrain_hybrid.py``'s) builder
constructs on the meta device: the flags of
:func:`~megatron.minimax.training.minimax_m2_flags.minimax_m2_training_flags` are parsed with the
training parser into a ``GPTModelConfig`` (``HybridModelConfig``) and built by
:class:`~megatron.minimax.training.model_builder.GPTModelBuilder`
(:class:`~megatron.minimax.training.hybrid_model_builder.HybridModelBuilder`), with
``perform_initialization=False`` and every allocation on ``meta`` (no storage, no compute). Both
classes hold the same parameters; the report says which one it built.

* Totals and active parameters: the whole model, built at world size 1.
* Per-rank memory: one pipeline stage's model chunk, built as a rank of the requested layout
  inside a *fake* process group (``torch.distributed``'s ``fake`` backend, as megatron-training's
  ``--fake-process-group``), so tensor, expert and pipeline sharding and the vocabulary padding
  are megatron's own. Ranks of one pipeline stage hold equal shares; the first, a middle and the
  last stage are built.

Byte accounting per rank (bf16 training with the distributed optimizer, Adam):

* weights: each parameter at its dtype: bf16 (2 bytes), except the fp32 router gate (4 bytes;
  ``--moe-router-dtype fp32``).
* gradients: the DDP gradient buffer holds this rank's full gradients in fp32 (4 bytes;
  ``--accumulate-allreduce-grads-in-fp32``, and always for fp32 parameters). The distributed
  optimizer reduce-scatters inside that buffer; it does not shrink it.
* optimizer states, sharded over the data-parallel replicas of each parameter (dense parameters:
  DP = GPUs / (TP x PP); expert parameters: expert DP = GPUs / (ETP x EP x PP)): an fp32 main copy
  of each bf16 parameter plus fp32 Adam ``exp_avg`` and ``exp_avg_sq``: 12 bytes / DP; an fp32
  parameter is its own main copy: 8 bytes / DP.

Not included: activations, the MoE dispatch buffers, CUDA/NCCL workspaces, and the distributed
optimizer's bucket padding. The router ``expert_bias`` (an fp32 buffer, not a parameter; no
gradient, no optimizer state) is counted in the weights.
"""

import contextlib
import dataclasses
import math
import resource
import time
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed

from megatron.core import parallel_state
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron.minimax.models.minimax_m2.hf_config import load_hf_config, minimax_m2_config_from_hf
from megatron.minimax.platform.cpu_shims import NoOpStream
from megatron.minimax.platform.parallel_state import destroy_model_parallel
from megatron.minimax.training.minimax_m2_flags import (
    Layout,
    check_layout,
    config_from_command,
    minimax_m2_training_flags,
    padded_vocab_size_of,
    required_run_flags,
)

GIB = 1024**3

GRAD_BYTES = 4
"""fp32 gradient buffer (``--accumulate-allreduce-grads-in-fp32``)."""

ADAM_STATE_BYTES = 8
"""fp32 ``exp_avg`` + ``exp_avg_sq``."""

MAIN_PARAM_BYTES = 4
"""fp32 main copy of a bf16 parameter."""


@dataclasses.dataclass(frozen=True)
class TrainingLayout:
    """A parallel layout on ``num_gpus`` GPUs, with the micro-batch shape."""

    layout: Layout
    num_gpus: int
    seq_length: int
    micro_batch_size: int

    @property
    def data_parallel_size(self) -> int:
        return self.num_gpus // (self.layout.tp * self.layout.pp)

    @property
    def expert_data_parallel_size(self) -> int:
        return self.num_gpus // (self.layout.expert_tp * self.layout.ep * self.layout.pp)


@contextlib.contextmanager
def _allocate_on_meta() -> Iterator[None]:
    """Every tensor the model creates lands on ``meta``, including those megatron-core places
    explicitly on ``torch.cuda.current_device()`` (router buffers, rotary frequencies)."""
    from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher

    saved = torch.cuda.current_device, torch.cuda.Stream
    # The dispatcher caches its side stream on the class; the stand-in must not outlive the build.
    saved_stream = MoEAlltoAllTokenDispatcher.cuda_dtoh_stream
    torch.cuda.current_device = lambda: torch.device("meta")
    if not torch.cuda.is_available():
        torch.cuda.Stream = NoOpStream
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.cuda.current_device, torch.cuda.Stream = saved
        MoEAlltoAllTokenDispatcher.cuda_dtoh_stream = saved_stream


@contextlib.contextmanager
def _fake_rank(rank: int, layout: Layout, world_size: int) -> Iterator[ProcessGroupCollection]:
    """This process as ``rank`` of ``world_size`` in a fake process group, with Megatron's
    model-parallel groups for ``layout``. No communication can happen, and none is needed to
    build a model with ``perform_initialization=False``."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if torch.distributed.is_initialized():
        raise RuntimeError("the model report needs a process without torch.distributed")
    torch.distributed.init_process_group(
        "fake", store=FakeStore(), rank=rank, world_size=world_size
    )
    try:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=layout.tp,
            pipeline_model_parallel_size=layout.pp,
            expert_model_parallel_size=layout.ep,
            expert_tensor_parallel_size=layout.expert_tp,
            create_gloo_process_groups=False,
        )
        yield ProcessGroupCollection.use_mpu_process_groups()
    finally:
        destroy_model_parallel()
        torch.distributed.destroy_process_group()


def _model_config(
    hf_config, layout: Layout, mtp_num_layers: Optional[int], world_size: int, model: str = "gpt"
):
    """The ``GPTModelConfig`` (``HybridModelConfig``) pretrain_gpt.py (pretrain_hybrid.py) builds
    from the generated flags, plus bf16, and configured for a storage-free build."""
    flags, config, model_args = minimax_m2_training_flags(
        hf_config, layout, mtp_num_layers=mtp_num_layers, model=model
    )
    argv = required_run_flags(model_args) + " ".join(flags).split() + ["--bf16"]
    _, model_config = config_from_command(argv, world_size, model)
    transformer = model_config.transformer
    transformer.use_cpu_initialization = True
    transformer.perform_initialization = False
    transformer.gradient_accumulation_fusion = False  # a kernel choice (Apex), no parameters
    # Meta tensors cannot go through Transformer Engine modules; the local spec has the same
    # parameters (TEGroupedMLP and SequentialMLP share their state-dict layout).
    transformer.transformer_impl = "local"
    return model_config


def build_meta_model(model_config, layout: Layout, rank: int, world_size: int):
    """Build ``rank``'s model chunk on the meta device; returns ``(model, pp_rank, seconds)``."""
    start = time.perf_counter()
    with _fake_rank(rank, layout, world_size) as pg_collection, _allocate_on_meta():
        pp_rank = parallel_state.get_pipeline_model_parallel_rank()
        model = model_config.get_builder_cls()(model_config).build_model(pg_collection)
    return model, pp_rank, time.perf_counter() - start


def _is_expert(name: str) -> bool:
    return ".mlp.experts." in name


def _check_on_meta(model: torch.nn.Module) -> None:
    off_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not t.is_meta]
    if off_meta:
        raise RuntimeError(f"tensors with storage in the meta build: {off_meta[:5]}")


def count_parameters(model: torch.nn.Module, config) -> Dict[str, int]:
    """Total and per-token active parameters of a whole (world size 1) model.

    Active: every decoder-layer parameter except the routed experts, of which ``moe_router_topk``
    of ``num_moe_experts`` run per token; the output layer (lm_head) runs for every token; the
    embedding is a row lookup and is listed separately.
    """
    _check_on_meta(model)
    groups = {"embedding": 0, "decoder_layers": 0, "experts": 0, "final_norm": 0, "lm_head": 0}
    groups["mtp"] = 0
    for name, param in model.named_parameters():
        if name.startswith("embedding."):
            groups["embedding"] += param.numel()
        elif name.startswith("output_layer."):
            groups["lm_head"] += param.numel()
        elif name.startswith(("decoder.final_layernorm.", "decoder.final_norm.")):
            groups["final_norm"] += param.numel()
        elif name.startswith("mtp."):
            groups["mtp"] += param.numel()
        elif _is_expert(name):
            groups["experts"] += param.numel()
        elif name.startswith("decoder.layers."):
            groups["decoder_layers"] += param.numel()
        else:
            raise RuntimeError(f"unclassified parameter {name}")
    expert_bias = sum(b.numel() for n, b in model.named_buffers() if n.endswith("expert_bias"))
    total = sum(groups.values())
    active_experts = 0
    if config.num_moe_experts:
        active_experts = groups["experts"] * config.moe_router_topk // config.num_moe_experts
    active_layers = groups["decoder_layers"] + active_experts
    return {
        "total": total,
        "total_with_expert_bias": total + expert_bias,
        "embedding": groups["embedding"],
        "lm_head": groups["lm_head"],
        "decoder_layers": groups["decoder_layers"] + groups["experts"],
        "routed_experts": groups["experts"],
        "final_norm": groups["final_norm"],
        "mtp": groups["mtp"],
        "expert_bias_buffer_elements": expert_bias,
        "active_decoder_layers": active_layers,
        "active_decoder_layers_and_lm_head": (
            active_layers + groups["final_norm"] + groups["lm_head"]
        ),
    }


def rank_memory(model: torch.nn.Module, training: TrainingLayout) -> Dict[str, Any]:
    """Bytes of weights, gradients and distributed-optimizer states on one rank of a stage."""
    _check_on_meta(model)
    dp, expert_dp = training.data_parallel_size, training.expert_data_parallel_size
    params = weights = grads = optimizer = 0.0
    expert_params = fp32_params = 0
    for name, param in model.named_parameters():
        n = param.numel()
        replicas = expert_dp if _is_expert(name) else dp
        params += n
        weights += n * param.element_size()
        grads += n * GRAD_BYTES
        if param.dtype == torch.float32:
            fp32_params += n
            optimizer += n * ADAM_STATE_BYTES / replicas
        else:
            optimizer += n * (MAIN_PARAM_BYTES + ADAM_STATE_BYTES) / replicas
        if _is_expert(name):
            expert_params += n
    weights += sum(
        buffer.numel() * buffer.element_size()
        for name, buffer in model.named_buffers()
        if name.endswith("expert_bias")
    )
    total = weights + grads + optimizer
    return {
        "parameters": int(params),
        "expert_parameters": expert_params,
        "fp32_parameters": fp32_params,
        "weights_bytes": int(weights),
        "gradients_bytes": int(grads),
        "optimizer_bytes": int(math.ceil(optimizer)),
        "total_bytes": int(math.ceil(total)),
        "weights_gib": round(weights / GIB, 3),
        "gradients_gib": round(grads / GIB, 3),
        "optimizer_gib": round(optimizer / GIB, 3),
        "total_gib": round(total / GIB, 3),
    }


def _stage_ranks(training: TrainingLayout) -> List[int]:
    """One global rank per pipeline stage to build: first, one middle, last. Megatron's rank
    order is tp-cp-ep-dp-pp, so stage s holds ranks ``[s * n, (s + 1) * n)``, n = GPUs / PP."""
    pp = training.layout.pp
    per_stage = training.num_gpus // pp
    stages = sorted({0, pp // 2, pp - 1}) if pp > 2 else list(range(pp))
    return [stage * per_stage for stage in stages]


def minimax_m2_model_report(
    hf_config,
    layout: Layout,
    num_gpus: Optional[int] = None,
    seq_length: int = 4096,
    micro_batch_size: int = 1,
    mtp_num_layers: Optional[int] = None,
    model: str = "gpt",
) -> Dict[str, Any]:
    """Parameter counts and per-rank memory (see the module docstring) as a JSON-ready dict, of
    the model built as a ``GPTModel`` (``model="gpt"``) or a ``HybridModel`` (``"hybrid"``).

    Raises:
        ValueError: an unsupported config or an impossible layout, naming the constraint.
    """
    hf = load_hf_config(hf_config)
    config, model_args = minimax_m2_config_from_hf(hf, mtp_num_layers=mtp_num_layers)
    num_gpus = layout.min_world_size if num_gpus is None else num_gpus
    check_layout(config, model_args.vocab_size, layout, num_gpus=num_gpus)
    if seq_length < 1 or micro_batch_size < 1:
        raise ValueError("--seq-length and --micro-batch-size must be >= 1")
    if seq_length > model_args.max_sequence_length:
        raise ValueError(
            f"--seq-length {seq_length} exceeds max_position_embeddings "
            f"{model_args.max_sequence_length}"
        )
    if layout.tp > 1 and seq_length % layout.tp:
        raise ValueError(
            f"--tp {layout.tp} does not divide --seq-length {seq_length} (sequence parallelism)"
        )
    training = TrainingLayout(layout, num_gpus, seq_length, micro_batch_size)

    start = time.perf_counter()
    whole_config = _model_config(hf, Layout(), mtp_num_layers, 1, model)
    whole, _, whole_build_s = build_meta_model(whole_config, Layout(), rank=0, world_size=1)
    counts = count_parameters(whole, whole_config.transformer)
    model_class = type(whole).__name__
    del whole

    stage_config = _model_config(hf, layout, mtp_num_layers, num_gpus, model)
    stages = []
    for rank in _stage_ranks(training):
        model, pp_rank, _ = build_meta_model(stage_config, layout, rank=rank, world_size=num_gpus)
        stages.append({"pp_rank": pp_rank, **rank_memory(model, training)})
        del model
    peak = max(stages, key=lambda s: s["total_bytes"])

    return {
        "model": {
            "class": model_class,
            "hybrid_layer_pattern": getattr(stage_config, "hybrid_layer_pattern", None),
            "num_layers": config.num_layers,
            "hidden_size": config.hidden_size,
            "num_moe_experts": config.num_moe_experts,
            "moe_router_topk": config.moe_router_topk,
            "vocab_size": model_args.vocab_size,
            "padded_vocab_size": padded_vocab_size_of(stage_config),
            "mtp_num_layers": mtp_num_layers or 0,
        },
        "parameters": counts,
        "parameters_billions": {
            "total": round(counts["total"] / 1e9, 3),
            "active_decoder_layers": round(counts["active_decoder_layers"] / 1e9, 3),
            "active_decoder_layers_and_lm_head": round(
                counts["active_decoder_layers_and_lm_head"] / 1e9, 3
            ),
        },
        "layout": {
            "tp": layout.tp,
            "pp": layout.pp,
            "ep": layout.ep,
            "etp": layout.expert_tp,
            "num_gpus": num_gpus,
            "dp": training.data_parallel_size,
            "expert_dp": training.expert_data_parallel_size,
            "sequence_parallel": layout.tp > 1,
            "seq_length": seq_length,
            "micro_batch_size": micro_batch_size,
            "tokens_per_micro_batch": seq_length * micro_batch_size,
        },
        "per_rank_memory": {"stages": stages, "max_total_gib": peak["total_gib"]},
        "byte_accounting": {
            "weights": "parameter dtype: bf16 = 2 bytes, fp32 router gate = 4 bytes; plus the "
            "fp32 expert_bias buffers",
            "gradients": f"{GRAD_BYTES} bytes per local parameter (fp32 DDP buffer, not sharded)",
            "optimizer": f"distributed optimizer, Adam: bf16 parameter {MAIN_PARAM_BYTES} (fp32 "
            f"main) + {ADAM_STATE_BYTES} (exp_avg, exp_avg_sq) bytes, fp32 parameter "
            f"{ADAM_STATE_BYTES} bytes; divided by DP (dense) or expert DP (experts)",
            "not_included": "activations, MoE dispatch buffers, CUDA/NCCL workspaces, "
            "optimizer bucket padding",
        },
        "build": {
            "device": "meta",
            "whole_model_build_seconds": round(whole_build_s, 2),
            "total_seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        },
    }
