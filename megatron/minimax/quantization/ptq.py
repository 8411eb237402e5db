# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Quantize a MiniMax-M2 model held by Megatron and write it in modelopt's HF serving format.

One collective function, :func:`quantize_to_hf`, behind ``tools/quantize_minimax_m2.py``: build the
model at the requested parallel layout, fill it (released HF weights through the weight table, a
Megatron torch_dist checkpoint resharded at load, or a quantization-aware-trained checkpoint with
its quantizers), calibrate unless the quantizers come trained, export through the parallel-aware
HF exporter and write the directory (one writer per pipeline stage).
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed

from megatron.minimax.quantization.calibration import CalibrationReport
from megatron.minimax.quantization.hf_writer import WriteStats
from megatron.minimax.quantization.nvfp4_format import NVFP4_GROUP_SIZE
from megatron.minimax.quantization.recipes import QuantizationRecipe

__all__ = [
    "QuantizeResult",
    "check_calibration_tokens",
    "check_quantizable",
    "check_quantizable_hf",
    "checkpoint_directory",
    "quantize_to_hf",
]

logger = logging.getLogger(__name__)


@dataclass
class QuantizeResult:
    """What :func:`quantize_to_hf` did (returned on every rank)."""

    source: str
    calibration: Optional[CalibrationReport] = None
    """None when the quantizers came trained from the checkpoint."""
    write: Optional[WriteStats] = None

    def summary(self) -> str:
        lines = []
        if self.calibration is None:
            lines.append(f"quantizers and their trained scales restored from {self.source}")
        else:
            lines.append(self.calibration.summary())
        if self.write is not None:
            lines.append(self.write.summary())
        return "\n".join(lines)


def check_quantizable(
    recipe: QuantizationRecipe,
    *,
    hidden_size: int,
    expert_ffn_hidden_size: int,
    attention_width: int,
    tp: int,
    etp: int,
) -> None:
    """Raises ``ValueError`` (one line) if the recipe's NVFP4 groups of 16 do not tile every
    quantized weight's input dimension, whole and on each tensor-parallel rank.

    Args:
        attention_width: attention heads x head dimension (``o_proj``'s input).
    """
    if not recipe.is_nvfp4:
        return
    group = recipe.group_size or NVFP4_GROUP_SIZE
    inputs = [
        ("hidden size (expert w1/w3 inputs)", hidden_size, 1),
        ("expert FFN size (w2 inputs)", expert_ffn_hidden_size, etp),
    ]
    if recipe.name == "nvfp4":
        inputs.append(("attention heads x head dim (o_proj inputs)", attention_width, tp))
    for what, size, parts in inputs:
        if size % (group * parts):
            split = f" / {parts} tensor-parallel ranks = {size / parts:g}" if parts > 1 else ""
            raise ValueError(
                f"{what} {size}{split} is not a multiple of the NVFP4 group size {group}"
            )


def check_quantizable_hf(hf_config: Dict, recipe: QuantizationRecipe, tp: int, etp: int) -> None:
    """:func:`check_quantizable` for a HF ``config.json``."""
    check_quantizable(
        recipe,
        hidden_size=hf_config["hidden_size"],
        expert_ffn_hidden_size=hf_config["intermediate_size"],
        attention_width=hf_config["num_attention_heads"] * hf_config["head_dim"],
        tp=tp,
        etp=etp,
    )


def checkpoint_directory(load_dir) -> Path:
    """The torch_dist directory of a Megatron checkpoint root or iteration directory.

    Raises:
        ValueError: if it is not a torch_dist checkpoint.
    """
    from megatron.minimax.models.minimax_m2.parity import resolve_dist_checkpoint_dir

    try:
        dist_dir = Path(resolve_dist_checkpoint_dir(load_dir))
    except ValueError as e:
        raise ValueError(f"{load_dir}/latest_checkpointed_iteration.txt: {e}") from None
    if not (dist_dir / ".metadata").is_file():
        raise ValueError(
            f"{load_dir}: not a Megatron torch_dist checkpoint (no {dist_dir}/.metadata)"
        )
    return dist_dir


def check_calibration_tokens(tokens: Optional[torch.Tensor], layout, source: str) -> None:
    """Raises ``ValueError`` (one line) when a model without trained quantizers lacks usable
    calibration tokens."""
    if tokens is None:
        raise ValueError(
            f"{source} holds no trained quantizers: calibration data is needed "
            "(--calib-data or --calib-tokens-file)"
        )
    if tokens.numel() == 0:
        raise ValueError("the calibration data holds no tokens")
    if layout.sp and tokens.shape[1] % layout.tp:
        raise ValueError(
            f"sequence parallelism needs the calibration sequence length ({tokens.shape[1]}) "
            f"divisible by TP ({layout.tp}); pass --no-sequence-parallel or another length"
        )


def _stage_writer(pp_rank: int) -> bool:
    """Whether this rank is the lowest rank of its pipeline stage (collective)."""
    if not torch.distributed.is_initialized():
        return True
    stages: List[int] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(stages, pp_rank)
    return torch.distributed.get_rank() == stages.index(pp_rank)


def _data_parallel_share(tokens: torch.Tensor, dp_rank: int, dp_size: int) -> torch.Tensor:
    """This data-parallel rank's sequences: ``ceil(n / dp)`` each, the last ranks repeating
    sequences from the start when ``n`` does not divide (repeats change no maximum)."""
    per_rank = math.ceil(tokens.shape[0] / dp_size)
    index = [(dp_rank * per_rank + i) % tokens.shape[0] for i in range(per_rank)]
    return tokens[index]


def _check_recipe_matches(model, recipe: QuantizationRecipe, source: str) -> None:
    from modelopt.torch.quantization.nn import TensorQuantizer

    expected = (2, 1) if recipe.is_nvfp4 else (4, 3)
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and module.is_enabled:
            num_bits = module.num_bits
            if (tuple(num_bits) if isinstance(num_bits, (list, tuple)) else num_bits) != expected:
                raise ValueError(
                    f"{source}: {name} was trained as a {module.num_bits}-bit quantizer, not "
                    f"with the {recipe.name} recipe; pass the recipe the model was trained with"
                )


def quantize_to_hf(
    hf_config: Dict,
    recipe: QuantizationRecipe,
    layout,
    save_dir: Path,
    *,
    hf_weights: Optional[Callable[[str], torch.Tensor]] = None,
    load_dir: Optional[Path] = None,
    calibration_tokens: Optional[torch.Tensor] = None,
    calib_batch_size: int = 4,
    reference_dir: Optional[Path] = None,
    params_dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = 5 * 10**9,
    overwrite: bool = False,
    progress: bool = False,
) -> QuantizeResult:
    """Quantizes and writes the HF directory. Collective over the default process group.

    Args:
        hf_config: the model's HF ``config.json``.
        recipe: the quantization recipe.
        layout: a :class:`~megatron.minimax.models.minimax_m2.parity.ParallelLayout` (validated).
        save_dir: output directory.
        hf_weights: full HF tensor by on-disk name (the weights), or None with ``load_dir``.
        load_dir: a Megatron torch_dist checkpoint (root or iteration directory) saved by a
            GPTModel or a HybridModel (detected from its keys); if it holds quantizer state
            (quantization-aware training), its scales are exported as trained.
        calibration_tokens: int64 ``[samples, seq]`` (e.g. from
            :func:`~megatron.minimax.quantization.calibration_data.load_calibration_tokens`);
            not needed for a checkpoint with trained quantizers.
        calib_batch_size: sequences per calibration forward on each data-parallel rank.
        reference_dir: directory whose tokenizer, chat template, ... files are copied.
        params_dtype: model dtype for loading and calibration (the router stays fp32).
        max_shard_bytes: largest safetensors shard.
        overwrite: replace an existing ``save_dir``.
        progress: progress bars on stderr (rank 0).

    Raises:
        ValueError: bad input (one line); also ``CheckpointError``, a ``ValueError``.
    """
    from megatron.core import parallel_state

    from megatron.minimax.models.minimax_m2 import parity
    from megatron.minimax.quantization.calibration import (
        expert_token_counts,
        forward_only,
        quantize_and_calibrate,
    )
    from megatron.minimax.quantization.checkpoint_state import (
        has_quantizer_state,
        load_quantized_model,
    )
    from megatron.minimax.quantization.hf_export import export_quantized_hf_weights
    from megatron.minimax.quantization.hf_writer import write_quantized_checkpoint

    if (hf_weights is None) == (load_dir is None):
        raise ValueError("give exactly one of the HF weights and a Megatron checkpoint")
    check_quantizable_hf(hf_config, recipe, layout.tp, layout.expert_tp)
    dist_dir = None if load_dir is None else checkpoint_directory(load_dir)
    trained = dist_dir is not None and has_quantizer_state(dist_dir)
    source = str(dist_dir if dist_dir is not None else "the HF weights")
    tokens = calibration_tokens
    if not trained:
        check_calibration_tokens(tokens, layout, source)

    # The class that saved the checkpoint (GPTModel or HybridModel, from its keys) restores it:
    # quantizer state is keyed by that class's module names.
    model = "gpt" if dist_dir is None else parity.checkpoint_model_class(dist_dir)
    parity.initialize_layout(layout)
    if trained:
        loaded = parity.build_from_hf(
            hf_config, None, layout, params_dtype=params_dtype, model=model
        )
        load_quantized_model(loaded.model, recipe, dist_dir)
        _check_recipe_matches(loaded.model, recipe, source)
    elif load_dir is not None:
        loaded = parity.build_from_dist_checkpoint(
            hf_config, load_dir, layout, params_dtype=params_dtype, model=model
        )
    else:
        loaded = parity.build_from_hf(hf_config, hf_weights, layout, params_dtype=params_dtype)

    report = None
    if not trained:
        dp_rank = parallel_state.get_data_parallel_rank()
        dp_size = parallel_state.get_data_parallel_world_size()
        share = _data_parallel_share(tokens, dp_rank, dp_size)
        batches = list(share.split(calib_batch_size))
        bar = None
        if progress and torch.distributed.get_rank() == 0:
            from tqdm import tqdm

            bar = tqdm(total=share.numel(), unit="tok", desc="calibrate", dynamic_ncols=True)
        try:
            quantize_and_calibrate(
                loaded.model,
                recipe,
                lambda: forward_only(
                    [loaded.model], batches, bar.update if bar is not None else None
                ),
            )
        finally:
            if bar is not None:
                bar.close()
        report = CalibrationReport(
            num_sequences=tokens.shape[0],
            num_tokens=tokens.numel(),
            tokens_per_expert=expert_token_counts(loaded.model),
        )

    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    writer = _stage_writer(pp_rank)
    stream = export_quantized_hf_weights(loaded.model, loaded.config, loaded.model_args, recipe)
    stats = write_quantized_checkpoint(
        stream,
        save_dir,
        hf_config,
        reference_dir,
        recipe,
        is_stage_writer=writer,
        stage=pp_rank,
        max_shard_bytes=max_shard_bytes,
        overwrite=overwrite,
        progress=progress,
    )
    return QuantizeResult(source=source, calibration=report, write=stats)
