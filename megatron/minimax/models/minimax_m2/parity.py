# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Megatron-vs-HF parity: build MiniMax-M2 at a parallel layout, load HF weights through the
weight table, and compare logits, loss and gradients with ``transformers``' model.

Used by ``tools/checkpoint/verify_minimax_m2.py``, the tests and the demo. Every function here
is collective over the default process group unless it says otherwise.
"""

import functools
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.distributed
import torch.nn.functional as F

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from megatron.minimax.models.conversion.mappings import MappingContext
from megatron.minimax.models.conversion.model_weights import iter_hf_weights, load_hf_weights
from megatron.minimax.models.minimax_m2.hf_config import (
    GPTModelArgs,
    load_hf_config,
    minimax_m2_config_from_hf,
    padded_vocab_size,
)
from megatron.minimax.models.minimax_m2.hybrid_pattern import minimax_m2_hybrid_config
from megatron.minimax.models.minimax_m2.model import (
    build_minimax_m2_hybrid_model,
    build_minimax_m2_model,
    pipeline_stage_layers,
)
from megatron.minimax.models.minimax_m2.weight_mapping import MINIMAX_M2_WEIGHTS, mapping_context
from megatron.minimax.transformer.transformer_config import TransformerConfig

LOGITS_ATOL = 1e-4
"""Max |Megatron - HF| fp32 logit difference the parity checks accept."""
LOSS_ATOL = 1e-5
"""Max |Megatron - HF| fp32 loss difference the parity checks accept."""
GRAD_RTOL = 1e-4
"""Max per-tensor gradient difference, relative to the tensor's largest HF gradient entry."""
MODEL_CLASSES = ("gpt", "hybrid")
"""The megatron-core model classes MiniMax-M2 is built as: ``GPTModel`` or ``HybridModel``."""


@dataclass(frozen=True)
class ParallelLayout:
    """A Megatron parallel layout; data parallelism takes the remaining ranks."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: Optional[int] = None
    sequence_parallel: Optional[bool] = None
    """Default: on whenever tp > 1 (megatron-core requires it to train MoE with TP)."""
    first_stage_layers: Optional[int] = None
    """Decoder layers on the first pipeline stage (uneven pipelines), else an even split."""
    last_stage_layers: Optional[int] = None
    """Decoder layers on the last pipeline stage (uneven pipelines), else an even split."""

    @property
    def expert_tp(self) -> int:
        return self.tp if self.etp is None else self.etp

    @property
    def sp(self) -> bool:
        return self.tp > 1 if self.sequence_parallel is None else self.sequence_parallel

    def __str__(self) -> str:
        parts = [f"TP{self.tp}"]
        if self.pp > 1:
            uneven = (self.first_stage_layers, self.last_stage_layers)
            stages = "" if uneven == (None, None) else f"[first={uneven[0]},last={uneven[1]}]"
            parts.append(f"PP{self.pp}{stages}")
        if self.ep > 1:
            parts.append(f"EP{self.ep}")
        if self.etp is not None and self.etp != self.tp:
            parts.append(f"ETP{self.etp}")
        if self.sp and self.tp > 1:
            parts.append("SP")
        return "x".join(parts)

    def config_overrides(self) -> Dict:
        """The ``TransformerConfig`` fields of this layout."""
        overrides = dict(
            tensor_model_parallel_size=self.tp,
            pipeline_model_parallel_size=self.pp,
            expert_model_parallel_size=self.ep,
            expert_tensor_parallel_size=self.expert_tp,
            sequence_parallel=self.sp,
        )
        if self.first_stage_layers is not None:
            overrides["num_layers_in_first_pipeline_stage"] = self.first_stage_layers
        if self.last_stage_layers is not None:
            overrides["num_layers_in_last_pipeline_stage"] = self.last_stage_layers
        return overrides

    def validate(self, world_size: int, hf: Dict, backend: Optional[str] = None) -> None:
        """Raise ``ValueError`` naming the violated constraint.

        Args:
            world_size: processes in the group.
            hf: the HF config.
            backend: the process group's backend, if known (``gloo`` has a limit of its own).
        """
        checks = [
            (hf["num_attention_heads"], self.tp, "num_attention_heads", "TP"),
            (hf["num_key_value_heads"], self.tp, "num_key_value_heads", "TP"),
            (hf["num_local_experts"], self.ep, "num_local_experts", "EP"),
            (hf["intermediate_size"], self.expert_tp, "intermediate_size", "ETP"),
        ]
        for total, parts, what, how in checks:
            if total % parts:
                raise ValueError(f"{how}={parts} does not divide {what}={total}")
        pipeline_stage_layers(
            hf["num_hidden_layers"], self.pp, self.first_stage_layers, self.last_stage_layers
        )
        model_parallel = self.tp * self.pp
        if world_size % model_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by TP*PP = {model_parallel}"
            )
        expert_parallel = self.ep * self.expert_tp * self.pp
        if world_size % expert_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by EP*ETP*PP = {expert_parallel}"
            )
        if backend == "gloo" and self.ep > 1 and self.expert_tp > 1 and self.sp:
            # The token dispatcher then all-gathers the routed tokens over the expert-TP group
            # in pieces of different sizes; gloo's all_gather needs equal sizes.
            raise ValueError(
                f"EP={self.ep} with ETP={self.expert_tp} and sequence parallelism cannot run on "
                "gloo (CPU): it all-gathers uneven token counts; use ETP=1 or no sequence "
                "parallelism"
            )


def initialize_layout(layout: ParallelLayout, seed: int = 1234) -> None:
    """(Re)initialise Megatron's model-parallel state for ``layout``."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        expert_model_parallel_size=layout.ep,
        expert_tensor_parallel_size=layout.expert_tp,
    )
    model_parallel_cuda_manual_seed(seed)


@dataclass
class LoadedModel:
    """A model chunk built at a layout and filled with HF weights."""

    model: Union[GPTModel, HybridModel]
    config: TransformerConfig
    model_args: GPTModelArgs
    ctx: MappingContext
    layout: ParallelLayout
    hybrid_layer_pattern: Optional[str] = None
    """The pattern of a ``HybridModel``; None for a ``GPTModel``."""


def build_from_hf(
    hf_config: Dict,
    read_hf_tensor: Optional[Callable[[str], torch.Tensor]],
    layout: ParallelLayout,
    *,
    params_dtype: torch.dtype = torch.float32,
    use_transformer_engine: bool = False,
    model: str = "gpt",
    read_hf_slice: Optional[Callable[[str, int, int, int], torch.Tensor]] = None,
    **config_overrides,
) -> LoadedModel:
    """Build this rank's MiniMax-M2 chunk at ``layout`` (already initialised) and load weights.

    Args:
        hf_config: HF ``config.json`` contents.
        read_hf_tensor: full HF tensor by on-disk name, or None to keep the initial weights.
        layout: the current parallel layout.
        params_dtype: model dtype (the router gate and bias stay fp32 regardless).
        use_transformer_engine: TE spec (GPU only) instead of the local spec.
        model: ``"gpt"`` (``GPTModel``) or ``"hybrid"`` (``HybridModel``, pattern ``*E`` per
            layer); the same weights either way.
        read_hf_slice: ``read_hf_slice(name, dim, start, stop)``, part of an HF tensor; when
            given, tensor-parallel pieces are read as parts (see ``load_hf_weights``).
        config_overrides: other ``TransformerConfig`` fields.
    """
    if model not in MODEL_CLASSES:
        raise ValueError(f"model must be one of {MODEL_CLASSES}, got {model!r}")
    overrides = dict(
        layout.config_overrides(),
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        pipeline_dtype=params_dtype,
        use_cpu_initialization=True,
        transformer_impl="transformer_engine" if use_transformer_engine else "local",
    )
    overrides.update(config_overrides)
    config, model_args = minimax_m2_config_from_hf(hf_config, **overrides)
    pattern = None
    if model == "hybrid":
        config, pattern = minimax_m2_hybrid_config(config)
        core_model = build_minimax_m2_hybrid_model(
            config, model_args, pattern, use_transformer_engine=use_transformer_engine
        )
    else:
        core_model = build_minimax_m2_model(
            config, model_args, use_transformer_engine=use_transformer_engine
        )
    if torch.cuda.is_available():
        core_model = core_model.cuda()
    padded = padded_vocab_size(model_args.vocab_size, layout.tp)
    ctx = mapping_context(config, model_args, padded)
    if read_hf_tensor is not None:
        load_hf_weights(
            core_model, read_hf_tensor, ctx, MINIMAX_M2_WEIGHTS, read_hf_slice=read_hf_slice
        )
    return LoadedModel(core_model, config, model_args, ctx, layout, pattern)


def resolve_dist_checkpoint_dir(load_dir) -> str:
    """The torch_dist directory of a Megatron checkpoint root (``latest_checkpointed_iteration.txt``
    naming ``release`` or an iteration), or ``load_dir`` itself if it is one."""
    import os

    tracker = os.path.join(load_dir, "latest_checkpointed_iteration.txt")
    if not os.path.exists(tracker):
        return str(load_dir)
    with open(tracker) as f:
        step = f.read().strip()
    name = "release" if step == "release" else f"iter_{int(step):07d}"
    return os.path.join(load_dir, name)


def dist_checkpoint_dtype(load_dir) -> torch.dtype:
    """dtype of the embedding in a torch_dist checkpoint (the dtype it was converted to)."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(resolve_dist_checkpoint_dir(load_dir)).read_metadata()
    return metadata.state_dict_metadata["embedding.word_embeddings.weight"].properties.dtype


def build_from_dist_checkpoint(
    hf_config: Dict,
    load_dir,
    layout: ParallelLayout,
    *,
    params_dtype: torch.dtype = torch.float32,
    model: str = "gpt",
    **config_overrides,
) -> LoadedModel:
    """Build this rank's chunk at ``layout`` and load a torch_dist checkpoint into it (megatron-core
    reshards at load). Values are cast to ``params_dtype`` (the router stays fp32).

    A ``HybridModel`` loads checkpoints saved by hybrid runs as they are, and checkpoints in the
    GPT layout (``convert_minimax_m2.py hf-to-mcore``, GPT training runs) through megatron-core's
    load-time translation (``gpt_checkpoint_interop``).
    """
    from megatron.core import dist_checkpointing

    loaded = build_from_hf(
        hf_config, None, layout, params_dtype=params_dtype, model=model, **config_overrides
    )
    sharded = loaded.model.sharded_state_dict()
    if model == "hybrid" and checkpoint_model_class(load_dir) == "gpt":
        from megatron.core.dist_checkpointing.gpt_checkpoint_interop import (
            gpt_compatible_layer_maps,
            retarget_sharded_state_dict_to_gpt_checkpoint,
        )

        retarget_sharded_state_dict_to_gpt_checkpoint(
            sharded, gpt_compatible_layer_maps(loaded.hybrid_layer_pattern)
        )
    state = dist_checkpointing.load(sharded, resolve_dist_checkpoint_dir(load_dir))
    # The load also returns the checkpoint's common (non-tensor) state, e.g. checkpoint_version.
    state = {k: v for k, v in state.items() if k in sharded}
    missing, unexpected = loaded.model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ValueError(
            f"{load_dir}: checkpoint lacks {missing[:5]}, has unexpected {unexpected[:5]}"
        )
    return loaded


def checkpoint_model_class(load_dir) -> str:
    """``"gpt"`` or ``"hybrid"``: the layout a torch_dist checkpoint was saved in, from its
    metadata (:func:`~megatron.minimax.checkpoint.dist_checkpoint_layout.model_class_of_keys`)."""
    from torch.distributed.checkpoint import FileSystemReader

    from megatron.minimax.checkpoint.dist_checkpoint_layout import model_class_of_keys

    reader = FileSystemReader(resolve_dist_checkpoint_dir(load_dir))
    try:
        return model_class_of_keys(reader.read_metadata().state_dict_metadata)
    except ValueError as e:
        raise ValueError(f"{load_dir}: {e}") from None


def reference_rounding(load_dir) -> Optional[torch.dtype]:
    """The dtype an fp32 HF reference must be rounded to so that it holds exactly the weights of
    the torch_dist checkpoint ``load_dir`` (None for an fp32 checkpoint).

    Raises:
        ValueError: if ``load_dir`` is not a Megatron torch_dist checkpoint.
    """
    from megatron.core.dist_checkpointing.core import check_is_distributed_checkpoint

    if not check_is_distributed_checkpoint(resolve_dist_checkpoint_dir(load_dir)):
        raise ValueError(f"{load_dir}: not a Megatron torch_dist checkpoint")
    stored = dist_checkpoint_dtype(load_dir)
    return None if stored == torch.float32 else stored


def build_for_comparison(
    hf_config: Dict,
    read_hf_tensor: Callable[[str], torch.Tensor],
    layout: ParallelLayout,
    load_dir=None,
    model: str = "gpt",
    read_hf_slice: Optional[Callable[[str, int, int, int], torch.Tensor]] = None,
) -> Tuple[LoadedModel, Optional[torch.dtype]]:
    """What the parity tools compare against an fp32 HF reference: the model at ``layout``
    (initialised here) built by :func:`build_from_dist_checkpoint` when ``load_dir`` is given,
    else by :func:`build_from_hf`; and the dtype the reference must be rounded to so that it
    holds the same weights (:func:`reference_rounding`; None when built from HF).

    Raises:
        ValueError: ``load_dir`` is not a torch_dist checkpoint, or it does not fit the model.
    """
    if load_dir is None:
        initialize_layout(layout)
        return (
            build_from_hf(
                hf_config, read_hf_tensor, layout, model=model, read_hf_slice=read_hf_slice
            ),
            None,
        )
    rounding = reference_rounding(load_dir)
    initialize_layout(layout)
    return build_from_dist_checkpoint(hf_config, load_dir, layout, model=model), rounding


def _gather_vocab(logits_local: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[b, s, V/tp] vocab-parallel logits -> [b, s, vocab_size] (autograd-correct)."""
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    return gather_from_tensor_model_parallel_region(logits_local)[..., :vocab_size]


def position_ids(tokens: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` positions ``0..s-1`` of a batch of sequences."""
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)


def pad_for_sequence_parallel(tokens: torch.Tensor, layout: ParallelLayout) -> torch.Tensor:
    """``tokens`` ``[b, s]`` padded at the end to a multiple of the TP size when sequence
    parallelism splits the sequence over TP ranks (else returned as is).

    The padding tokens come after every real one, so under causal attention they change no
    real position's output; callers cut outputs back to the first ``s`` positions (logits,
    losses and log-probabilities never see the padding). MoE routing is dropless, so the extra
    tokens take no expert capacity from real ones.
    """
    length = tokens.shape[1]
    if not (layout.sp and layout.tp > 1) or length % layout.tp == 0:
        return tokens
    pad = layout.tp - length % layout.tp
    return torch.nn.functional.pad(tokens, (0, pad), value=0)


def megatron_logits(loaded: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """fp32 logits ``[b, s, vocab]`` of the whole (pipelined) model, returned on every rank.

    Any sequence length works with sequence parallelism (see :func:`pad_for_sequence_parallel`).
    """
    model = loaded.model
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    length = tokens.shape[1]
    padded = pad_for_sequence_parallel(tokens, loaded.layout)
    vocab = loaded.model_args.vocab_size

    def forward_step(data_iterator, model_chunk):
        batch = next(data_iterator)
        output = model_chunk(batch, position_ids(batch), None)

        def keep_logits(output_tensor, non_loss_data=False):
            return _gather_vocab(output_tensor, vocab)[:, :length].float()

        return output, keep_logits

    model.eval()
    with torch.no_grad():
        collected = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter([padded]),
            model=[model],
            num_microbatches=1,
            seq_length=padded.shape[1],
            micro_batch_size=padded.shape[0],
            forward_only=True,
            collect_non_loss_data=True,
        )
    logits = torch.zeros(*tokens.shape, vocab, dtype=torch.float32, device=device)
    last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    if last_stage:
        logits.copy_(collected[0])
    # Every rank of the last stage holds the full logits; send them to the other stages.
    src = parallel_state.get_pipeline_model_parallel_last_rank()
    torch.distributed.broadcast(
        logits, src=src, group=parallel_state.get_pipeline_model_parallel_group()
    )
    return logits.cpu()


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``tokens[:, 1:]`` from ``logits[:, :-1]`` (fp32)."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1)
    )


def data_parallel_share(tokens: torch.Tensor) -> torch.Tensor:
    """This data-parallel rank's contiguous share of a global batch ``[B, s]`` (``B / DP``
    sequences; every rank of a model-parallel group gets the same share).

    Raises:
        ValueError: the data-parallel size does not divide ``B``.
    """
    size = parallel_state.get_data_parallel_world_size()
    rank = parallel_state.get_data_parallel_rank()
    if tokens.shape[0] % size:
        raise ValueError(
            f"the batch of {tokens.shape[0]} sequences does not split over {size} data-parallel "
            "ranks"
        )
    return tokens.chunk(size)[rank]


def megatron_gradients(
    loaded: LoadedModel, tokens: torch.Tensor, micro_batch_size: int = 1
) -> Tuple[float, Dict[str, torch.Tensor]]:
    """The training gradient path on a global batch: every parameter's gradient of the mean
    next-token loss over ``tokens``, as HF-named full tensors.

    ``tokens`` ``[B, s]`` is the same on every rank. Each data-parallel rank takes its own share
    (:func:`data_parallel_share`) and runs it in micro-batches of ``micro_batch_size`` through
    megatron-core's pipeline schedule (forward and backward; 1F1B with pipeline parallelism);
    Megatron's DDP and ``finalize_model_grads`` then reduce over data-, tensor-, sequence- and
    expert-data-parallel ranks. With equal token counts per sequence that is the gradient of
    the mean loss over the whole batch, which is what an HF model computes on all of ``tokens``.

    Returns:
        ``(loss, gradients)``: the mean loss over the whole batch (on every rank) and the
        HF-named gradients of this rank's pipeline stage (the same on every rank of the stage).
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed import finalize_model_grads

    share = data_parallel_share(tokens)
    if share.shape[0] % micro_batch_size:
        raise ValueError(
            f"micro_batch_size {micro_batch_size} does not divide the {share.shape[0]} sequences "
            "of a data-parallel rank"
        )
    config = loaded.config
    ddp = DistributedDataParallel(
        config,
        DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
        loaded.model,
    )
    ddp.train()
    ddp.zero_grad_buffer()
    device = next(ddp.parameters()).device
    micro_batches = [
        (micro_batch, pad_for_sequence_parallel(micro_batch, loaded.layout))
        for micro_batch in share.to(device).split(micro_batch_size)
    ]
    vocab = loaded.model_args.vocab_size

    def forward_step(data_iterator, model_chunk):
        micro_batch, padded = next(data_iterator)
        output = model_chunk(padded, position_ids(padded), None)

        def loss_func(logits_local):
            logits = _gather_vocab(logits_local, vocab)[:, : micro_batch.shape[1]]
            loss = next_token_loss(logits, micro_batch)
            # A copy: the schedule divides the returned loss in place by the micro-batch count.
            return loss, {"loss": loss.detach().clone()}

        return output, loss_func

    saved = config.finalize_model_grads_func, config.no_sync_func, config.grad_scale_func
    config.finalize_model_grads_func, config.no_sync_func = finalize_model_grads, ddp.no_sync
    config.grad_scale_func = None
    try:
        reported = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(micro_batches),
            model=[ddp],
            num_microbatches=len(micro_batches),
            seq_length=micro_batches[0][1].shape[1],
            micro_batch_size=micro_batch_size,
            forward_only=False,
        )
    finally:
        config.finalize_model_grads_func, config.no_sync_func, config.grad_scale_func = saved

    # Mean over micro-batches, then over data-parallel ranks, then sent to every stage.
    loss = torch.zeros(1, dtype=torch.float64, device=device)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        loss += torch.stack([r["loss"].double() for r in reported]).mean()
    torch.distributed.all_reduce(loss, group=parallel_state.get_data_parallel_group())
    loss /= parallel_state.get_data_parallel_world_size()
    torch.distributed.broadcast(
        loss,
        src=parallel_state.get_pipeline_model_parallel_last_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )

    def grad_of(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            return None  # buffers (router.expert_bias) have no gradient
        return tensor.main_grad

    grads = {
        name: g.cpu()
        for name, g in iter_hf_weights(ddp, loaded.ctx, MINIMAX_M2_WEIGHTS, tensor_of=grad_of)
    }
    return loss.item(), grads


@dataclass
class LogitsComparison:
    """Megatron vs reference logits and next-token loss."""

    max_abs_diff: float
    max_rel_diff: float
    """max |Δ| / max |reference|."""
    megatron_loss: float
    reference_loss: float

    @property
    def loss_diff(self) -> float:
        return abs(self.megatron_loss - self.reference_loss)

    def ok(self, logits_atol: float = LOGITS_ATOL, loss_atol: float = LOSS_ATOL) -> bool:
        return self.max_abs_diff <= logits_atol and self.loss_diff <= loss_atol

    def as_dict(self) -> Dict:
        return {**asdict(self), "loss_diff": self.loss_diff}


def compare_logits(
    megatron: torch.Tensor, reference: torch.Tensor, tokens: torch.Tensor
) -> LogitsComparison:
    """Compare two ``[b, s, vocab]`` fp32 logits tensors on the same tokens."""
    if megatron.shape != reference.shape:
        raise ValueError(
            f"logits shapes differ: {tuple(megatron.shape)} vs {tuple(reference.shape)}"
        )
    diff = (megatron.double() - reference.double()).abs()
    return LogitsComparison(
        max_abs_diff=diff.max().item(),
        max_rel_diff=(diff.max() / reference.double().abs().max()).item(),
        megatron_loss=next_token_loss(megatron, tokens).item(),
        reference_loss=next_token_loss(reference, tokens).item(),
    )


def compare_gradients(
    megatron: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor]
) -> Dict[str, float]:
    """Per HF name, max |Δ| / max |reference| of the gradients. Names must match exactly."""
    if set(megatron) != set(reference):
        missing = sorted(set(reference) - set(megatron))
        extra = sorted(set(megatron) - set(reference))
        raise ValueError(f"gradient names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    out = {}
    for name, ref in reference.items():
        got = megatron[name]
        if got.shape != ref.shape:
            raise ValueError(f"{name}: gradient shape {tuple(got.shape)} vs {tuple(ref.shape)}")
        scale = ref.double().abs().max().clamp_min(1e-30)
        out[name] = ((got.double() - ref.double()).abs().max() / scale).item()
    return out
