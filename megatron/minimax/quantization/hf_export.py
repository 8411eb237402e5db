# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""HF-named quantized tensors of a live, sharded, modelopt-quantized MiniMax-M2 model.

The weights come from this project's parallel-aware exporter
(:func:`~megatron.minimax.models.minimax_m2.export.export_hf_weights`: TP pieces and EP experts
gathered, vocabulary padding stripped, released names, fp32 router). The quantizer amaxes travel
the same way: :func:`quantizer_amax_by_hf_name` gives each quantized weight a ``[rows, 2]`` proxy
holding its module's (weight amax, input amax) in every row, and runs it through the same
gathering and the same weight table, so each amax lands under the HF name of every tensor its
quantizer covers (``linear_qkv``'s under ``q_proj``, ``k_proj`` and ``v_proj``; an expert's
``linear_fc1``'s under ``w1`` and ``w3``). The maximum over the gathered proxies is the amax of the
whole tensor whatever the layout.

Per quantized HF weight ``<m>.weight`` the stream holds:

* NVFP4: ``<m>.weight`` uint8 ``[out, in/2]``, ``<m>.weight_scale`` float8_e4m3fn
  ``[out, in/16]``, ``<m>.weight_scale_2`` and ``<m>.input_scale`` fp32 scalars (see
  :mod:`nvfp4_format`); the tensors cut from one Megatron linear share ``weight_scale_2`` and
  ``input_scale``, as vLLM requires of the ``w1``/``w3`` and ``q``/``k``/``v`` it fuses.
* FP8: ``<m>.weight`` float8_e4m3fn, ``<m>.weight_scale`` and ``<m>.input_scale`` fp32 scalars.
  As in modelopt's HF export, ``q_proj``, ``k_proj`` and ``v_proj`` get a scale each (their own
  ``max |W|``, never above the calibrated amax of ``linear_qkv``), while ``w1`` and ``w3`` share
  one (transformers holds them as one ``gate_up_proj``).

Every other tensor is bf16, except the router gate and ``e_score_correction_bias`` (fp32).
Input scales are ``input amax / (6 * 448)`` (NVFP4) or ``/ 448`` (FP8).
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from megatron.minimax.models.conversion.mappings import FusedQKV
from megatron.minimax.models.conversion.model_weights import iter_hf_weights, unwrap_model
from megatron.minimax.models.minimax_m2.export import export_hf_weights
from megatron.minimax.models.minimax_m2.hf_config import GPTModelArgs, padded_vocab_size
from megatron.minimax.models.minimax_m2.weight_mapping import MINIMAX_M2_WEIGHTS, mapping_context
from megatron.minimax.quantization.fp8_per_tensor import quantize_fp8_per_tensor
from megatron.minimax.quantization.nvfp4_format import E2M1_MAX, E4M3_MAX, quantize_nvfp4
from megatron.minimax.quantization.recipes import QuantizationRecipe
from megatron.minimax.transformer.transformer_config import TransformerConfig

__all__ = [
    "QuantizerAmax",
    "export_quantized_hf_weights",
    "quantizer_amax_by_hf_name",
    "quantized_module_names",
]

WEIGHT_SUFFIX = ".weight"


@dataclass(frozen=True)
class QuantizerAmax:
    """The calibrated amaxes that quantize one HF weight."""

    weight: torch.Tensor
    """fp32 scalar: the weight quantizer's amax (whole tensor, all ranks' pieces)."""
    input: Optional[torch.Tensor]
    """fp32 scalar: the input quantizer's amax, None for weight-only quantization."""


def _chunks(model_chunks) -> List[torch.nn.Module]:
    if isinstance(model_chunks, torch.nn.Module):
        return [model_chunks]
    return list(model_chunks)


def _enabled_amax(quantizer) -> Optional[torch.Tensor]:
    if quantizer is None or not getattr(quantizer, "is_enabled", False):
        return None
    amax = getattr(quantizer, "amax", None)
    return None if amax is None else amax.detach().float().max()


def quantizer_amax_by_hf_name(
    model_chunks: Union[torch.nn.Module, Iterable[torch.nn.Module]],
    config: TransformerConfig,
    model_args: GPTModelArgs,
) -> Dict[str, QuantizerAmax]:
    """The weight and input amax of every quantized HF weight of this pipeline stage.

    Collective like :func:`export_hf_weights` (every rank of the stage's TP, ETP and EP groups).

    Raises:
        ValueError: if a weight quantizer is enabled but was never calibrated.
    """
    vocab = padded_vocab_size(model_args.vocab_size, config.tensor_model_parallel_size)
    ctx = mapping_context(config, model_args, vocab)
    out: Dict[str, QuantizerAmax] = {}
    for chunk in _chunks(model_chunks):
        owners = {}
        for name, module in unwrap_model(chunk).named_modules():
            weight = getattr(module, "weight", None)
            quantizer = getattr(module, "weight_quantizer", None)
            if isinstance(weight, torch.nn.Parameter) and getattr(quantizer, "is_enabled", False):
                if _enabled_amax(quantizer) is None:
                    raise ValueError(f"{name}: the weight quantizer has no amax (not calibrated)")
                owners[id(weight)] = module

        def proxy(tensor: torch.Tensor) -> Optional[torch.Tensor]:
            module = owners.get(id(tensor))
            if module is None:
                return None
            weight_amax = _enabled_amax(module.weight_quantizer)
            input_amax = _enabled_amax(getattr(module, "input_quantizer", None))
            pair = torch.stack([weight_amax, torch.zeros_like(weight_amax)])
            if input_amax is not None:
                pair[1] = input_amax
            return pair.to(tensor.device).expand(tensor.shape[0], 2).contiguous()

        for name, gathered in iter_hf_weights(
            chunk, ctx, MINIMAX_M2_WEIGHTS, tensor_of=proxy, skip_unmapped=_is_mtp
        ):
            weight_amax, input_amax = gathered.reshape(gathered.shape[0], -1, 2).amax(dim=(0, 1))
            out[name] = QuantizerAmax(
                weight=weight_amax.cpu(), input=input_amax.cpu() if input_amax > 0 else None
            )
    return out


def _is_mtp(canonical_name: str) -> bool:
    return canonical_name.startswith("mtp.")


def _scale_per_hf_tensor(name: str) -> bool:
    """FP8: whether ``name`` gets a scale of its own although Megatron fuses it with others."""
    mapping, _ = MINIMAX_M2_WEIGHTS.resolve_hf(name)
    return isinstance(mapping, FusedQKV)


def export_quantized_hf_weights(
    model_chunks: Union[torch.nn.Module, Iterable[torch.nn.Module]],
    config: TransformerConfig,
    model_args: GPTModelArgs,
    recipe: QuantizationRecipe,
) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yields ``(HF name, tensor)`` of this pipeline stage in the recipe's serving format (see the
    module docstring); tensors are on CPU.

    Collective like :func:`export_hf_weights`. The model must have been quantized with
    ``recipe`` (calibrated or restored from a checkpoint).

    Raises:
        ValueError: a quantized weight whose shape the format cannot hold, or a quantizer
            without amax.
    """
    chunks = _chunks(model_chunks)
    amax_by_name = quantizer_amax_by_hf_name(chunks, config, model_args)
    for name, tensor in export_hf_weights(chunks, config, model_args, dtype=torch.float32):
        # Quantised on the model's device (the GPU when there is one), handed over on CPU.
        for out_name, out in _quantized(name, tensor.detach(), amax_by_name.get(name), recipe):
            yield out_name, out.cpu()


def _quantized(
    name: str, tensor: torch.Tensor, amax: Optional[QuantizerAmax], recipe: QuantizationRecipe
) -> Iterator[Tuple[str, torch.Tensor]]:
    """The serving-format tensors of one exported HF tensor."""
    if amax is None:
        mapping, _ = MINIMAX_M2_WEIGHTS.resolve_hf(name)
        yield name, tensor.to(mapping.dtype or torch.bfloat16)
        return
    if not name.endswith(WEIGHT_SUFFIX) or tensor.dim() != 2:
        raise ValueError(f"{name}: shape {tuple(tensor.shape)} cannot be quantized")
    module = name[: -len(WEIGHT_SUFFIX)]
    if recipe.is_nvfp4:
        if tensor.shape[1] % recipe.group_size:
            raise ValueError(
                f"{name}: {tensor.shape[1]} input features are not a multiple of the NVFP4 "
                f"group size {recipe.group_size}"
            )
        packed = quantize_nvfp4(tensor, amax.weight, recipe.group_size)
        yield name, packed.weight
        yield module + ".weight_scale", packed.weight_scale
        yield module + ".weight_scale_2", packed.weight_scale_2
        input_divisor = E2M1_MAX * E4M3_MAX
    else:
        weight_amax = amax.weight
        if _scale_per_hf_tensor(name):
            weight_amax = torch.minimum(weight_amax, tensor.abs().max().cpu())
        values, scale = quantize_fp8_per_tensor(tensor, weight_amax)
        yield name, values
        yield module + ".weight_scale", scale
        input_divisor = E4M3_MAX
    if amax.input is not None:
        yield module + ".input_scale", amax.input.float() / input_divisor


def quantized_module_names(shapes: Mapping[str, Sequence[int]]) -> Tuple[List[str], List[str]]:
    """``(quantized, excluded)`` HF module names of an export, from its tensor names and shapes.

    A module is a 2-D ``<module>.weight`` (linear layers, embeddings; norms are 1-D); it is
    quantized when the export has its ``<module>.weight_scale``. The excluded ones are what
    ``exclude_modules`` lists.
    """
    modules = {
        name[: -len(WEIGHT_SUFFIX)]
        for name, shape in shapes.items()
        if name.endswith(WEIGHT_SUFFIX) and len(shape) == 2
    }
    quantized = sorted(m for m in modules if m + ".weight_scale" in shapes)
    return quantized, sorted(modules - set(quantized))
