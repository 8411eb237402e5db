# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Insert a recipe's quantizers into a Megatron model and calibrate them (post-training
quantization), and report which experts the calibration tokens reached.

Calibration is modelopt's ``max`` algorithm on the model's own forward (any TP/PP/EP/ETP layout,
through megatron-core's pipeline schedule): weight amaxes come from the weights, input amaxes from
the activations of the calibration tokens, synchronised over data-, expert- and tensor-parallel
ranks by modelopt. Routing is not changed for calibration: each token reaches the experts the
router picks, so what is calibrated is what serving sees. An expert that no token reached still
has both scales: its weight's, and the input scale its layer's experts share (see
:mod:`quant_experts`); the report names such experts.
"""

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.distributed

from megatron.minimax.models.conversion.model_weights import unwrap_model
from megatron.minimax.quantization.recipes import QuantizationRecipe

__all__ = [
    "CalibrationReport",
    "expert_token_counts",
    "forward_only",
    "insert_quantizers",
    "quantize_and_calibrate",
]

logger = logging.getLogger(__name__)


@dataclass
class CalibrationReport:
    """What a calibration saw."""

    num_sequences: int = 0
    num_tokens: int = 0
    tokens_per_expert: Dict[int, List[int]] = field(default_factory=dict)
    """Global layer number (0-based) -> tokens each of its experts processed (summed over
    data-parallel ranks)."""

    def experts_without_tokens(self) -> Dict[int, List[int]]:
        """Layer -> the experts that processed no calibration token."""
        out = {}
        for layer, counts in sorted(self.tokens_per_expert.items()):
            idle = [expert for expert, count in enumerate(counts) if count == 0]
            if idle:
                out[layer] = idle
        return out

    def summary(self) -> str:
        lines = [f"calibrated on {self.num_sequences} sequences ({self.num_tokens} tokens)"]
        idle = self.experts_without_tokens()
        if not self.tokens_per_expert:
            return lines[0]
        if not idle:
            fewest = min(min(c) for c in self.tokens_per_expert.values())
            lines.append(
                f"every expert of every layer processed calibration tokens (at least {fewest})"
            )
            return "\n".join(lines)
        count = sum(len(e) for e in idle.values())
        where = "; ".join(f"layer {layer}: {experts}" for layer, experts in list(idle.items())[:8])
        lines.append(
            f"{count} experts processed no calibration token ({where}"
            f"{'; ...' if len(idle) > 8 else ''}): their weight scales come from their own "
            "weights, their input scales are the ones all experts of their layer share"
        )
        return "\n".join(lines)


def quantizer_backend(recipe: QuantizationRecipe) -> Optional[str]:
    """The modelopt quant backend for the recipe on this machine: the CPU NVFP4 backend
    (registered here) without CUDA, else modelopt's own kernels (None)."""
    if not recipe.is_nvfp4 or torch.cuda.is_available():
        return None
    from megatron.minimax.quantization.nvfp4_cpu_backend import register_nvfp4_cpu_backend

    return register_nvfp4_cpu_backend()


def _quantize_config(recipe: QuantizationRecipe, algorithm: Optional[str] = "max") -> Dict:
    from megatron.minimax.quantization.quant_experts import register_quant_experts

    register_quant_experts()
    config = recipe.modelopt_config(quantizer_backend(recipe))
    config["algorithm"] = algorithm
    return config


def use_local_kernels(model: torch.nn.Module) -> None:
    """Points NVFP4 quantizers restored from a checkpoint at this machine's kernels (a checkpoint
    written on a CPU machine names the CPU backend)."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    from megatron.minimax.quantization.nvfp4_cpu_backend import (
        NVFP4_CPU_BACKEND,
        register_nvfp4_cpu_backend,
    )

    local = None if torch.cuda.is_available() else register_nvfp4_cpu_backend()
    for module in unwrap_model(model).modules():
        if isinstance(module, TensorQuantizer) and module.num_bits == (2, 1):
            if module.backend in (None, NVFP4_CPU_BACKEND):
                module.backend = local


def insert_quantizers(model: torch.nn.Module, recipe: QuantizationRecipe) -> torch.nn.Module:
    """The recipe's quantizers, uncalibrated (to be filled from a checkpoint)."""
    import modelopt.torch.quantization as mtq

    return mtq.quantize(unwrap_model(model), _quantize_config(recipe, algorithm=None))


def quantize_and_calibrate(
    model: torch.nn.Module, recipe: QuantizationRecipe, forward_loop: Callable[[], None]
) -> torch.nn.Module:
    """Inserts the recipe's quantizers into this rank's model chunk and calibrates them.

    Collective: every rank calls it at once, each with its own chunk; ``forward_loop()`` runs the
    calibration forwards through the whole (pipelined) model.
    """
    import modelopt.torch.quantization as mtq

    gpt = unwrap_model(model)
    return mtq.quantize(gpt, _quantize_config(recipe), lambda _: forward_loop())


def _quant_experts(gpt) -> Iterable:
    from megatron.minimax.quantization.quant_experts import QuantSequentialExperts

    layers = list(gpt.decoder.layers) if hasattr(gpt, "decoder") else []
    for layer in layers:
        experts = getattr(layer.mlp, "experts", None)
        if isinstance(experts, QuantSequentialExperts):
            yield layer.layer_number - 1, experts


def reset_expert_token_counts(model: torch.nn.Module) -> None:
    for _, experts in _quant_experts(unwrap_model(model)):
        experts.reset_calibration_tokens()


def expert_token_counts(model: torch.nn.Module) -> Dict[int, List[int]]:
    """Global layer -> tokens per expert since the last reset, for every layer of the model.

    Collective over all ranks (counts are summed over expert-data-parallel ranks, gathered over
    expert-parallel ranks, and the pipeline stages' layers merged).
    """
    local: Dict[int, List[int]] = {}
    for layer, experts in _quant_experts(unwrap_model(model)):
        counts = experts.calibration_tokens.clone()
        if experts.dp_group is not None and experts.dp_group.size() > 1:
            torch.distributed.all_reduce(counts, group=experts.dp_group)
        pieces = [counts]
        if experts.ep_group is not None and experts.ep_group.size() > 1:
            pieces = [torch.empty_like(counts) for _ in range(experts.ep_group.size())]
            torch.distributed.all_gather(pieces, counts, group=experts.ep_group)
        local[layer] = torch.cat(pieces).tolist()
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return local
    everyone: List[Dict[int, List[int]]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, local)
    merged: Dict[int, List[int]] = {}
    for counts in everyone:
        merged.update(counts)
    return dict(sorted(merged.items()))


def forward_only(
    model_chunks: Sequence[torch.nn.Module],
    batches: Iterable[torch.Tensor],
    on_batch: Optional[Callable[[int], None]] = None,
) -> None:
    """Runs ``[batch, seq]`` token batches through the (pipelined) model, discarding the output.

    Collective: every rank iterates the same number of batches of the same shape (the pipeline
    stages exchange activations; data-parallel ranks may hold different tokens).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    device = next(model_chunks[0].parameters()).device

    def forward_step(data_iterator, model_chunk):
        tokens = next(data_iterator)
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)

        def discard(output_tensor, non_loss_data=False):
            return None

        return model_chunk(tokens, positions, None), discard

    for chunk in model_chunks:
        chunk.eval()
    with torch.no_grad():
        for batch in batches:
            batch = batch.to(device)
            get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=iter([batch]),
                model=list(model_chunks),
                num_microbatches=1,
                seq_length=batch.shape[1],
                micro_batch_size=batch.shape[0],
                forward_only=True,
                collect_non_loss_data=True,
            )
            if on_batch is not None:
                on_batch(batch.numel())
