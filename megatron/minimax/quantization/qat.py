# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Quantization-aware training with ``pretrain_gpt.py --modelopt-recipe RECIPE``.

The model trains with the recipe's fake quantizers in its forward (straight-through gradients),
so that the exported NVFP4/FP8 model loses less than one quantized after training. Two hooks of
megatron-training's ``pretrain()`` carry it, both wired by :func:`configure`:

* a **post-wrap hook** of the model config (it runs on the built, Float16Module- and
  DDP-wrapped model, before the checkpoint is loaded): when the checkpoint to load was itself
  saved during quantization-aware training, it inserts the recipe's quantizers and restores their
  settings from it (:func:`~megatron.minimax.quantization.checkpoint_state.restore_quantizers`),
  so that the load fills weights and trained amaxes alike;
* a wrapper of the **datasets provider** (``pretrain()`` calls it after the checkpoint is
  loaded and before the first step): on a model without quantizers it inserts them and
  calibrates them on the first ``--modelopt-calib-samples`` training samples, forward only.

Quantizers carry no parameters, so the optimizer built before them is unaffected. Checkpoints
saved during training hold the quantizer state (see :mod:`checkpoint_state`);
``tools/quantize_minimax_m2.py --load-dir`` exports them with the trained scales.

Not supported: virtual pipeline stages (modelopt's sharded quantizer state has no virtual-stage
form).
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch

from megatron.minimax.quantization.recipes import QuantizationRecipe, get_recipe

__all__ = ["QuantizationAwareTraining", "configure"]

logger = logging.getLogger(__name__)


def _checkpoint_to_load(args) -> Optional[Path]:
    """The torch_dist directory ``load_checkpoint`` will read (``--load``, else
    ``--pretrained-checkpoint``), or None when there is none yet."""
    for root in (getattr(args, "load", None), getattr(args, "pretrained_checkpoint", None)):
        if not root:
            continue
        tracker = Path(root) / "latest_checkpointed_iteration.txt"
        if getattr(args, "ckpt_step", None):
            return Path(root) / f"iter_{args.ckpt_step:07d}"
        if tracker.is_file():
            step = tracker.read_text().strip()
            return Path(root) / ("release" if step == "release" else f"iter_{int(step):07d}")
    return None


@dataclass
class QuantizationAwareTraining:
    """The quantizers of one training run."""

    recipe: QuantizationRecipe
    calib_samples: int
    """Training samples to calibrate on when starting from a model without quantizers."""
    checkpoint: Optional[Path] = None
    """The checkpoint the run loads (quantizers are restored from it when it has them)."""
    model: List[torch.nn.Module] = field(default_factory=list)
    restored: bool = False

    @classmethod
    def from_args(cls, args) -> Optional["QuantizationAwareTraining"]:
        """None without ``--modelopt-recipe``.

        Raises:
            ValueError: an unsupported combination (virtual pipeline, shapes the recipe cannot split).
        """
        if getattr(args, "modelopt_recipe", None) is None:
            return None
        recipe = get_recipe(args.modelopt_recipe)
        if args.virtual_pipeline_model_parallel_size is not None:
            raise ValueError("--modelopt-recipe does not support virtual pipeline stages")
        if args.modelopt_calib_samples < 1:
            raise ValueError(
                f"--modelopt-calib-samples must be >= 1, got {args.modelopt_calib_samples}"
            )
        from megatron.minimax.quantization.ptq import check_quantizable

        check_quantizable(
            recipe,
            hidden_size=args.hidden_size,
            expert_ffn_hidden_size=args.moe_ffn_hidden_size or args.ffn_hidden_size,
            attention_width=args.num_attention_heads * args.kv_channels,
            tp=args.tensor_model_parallel_size,
            etp=args.expert_tensor_parallel_size or args.tensor_model_parallel_size,
        )
        return cls(recipe, args.modelopt_calib_samples, _checkpoint_to_load(args))

    def restore_from_checkpoint(self, model: List[torch.nn.Module]) -> List[torch.nn.Module]:
        """Post-wrap hook: keeps the model; restores quantizers if the checkpoint has them."""
        from megatron.minimax.quantization.checkpoint_state import (
            has_quantizer_state,
            restore_quantizers,
        )

        self.model = list(model)
        if self.checkpoint is not None and (self.checkpoint / ".metadata").is_file():
            if has_quantizer_state(self.checkpoint):
                restore_quantizers(self.model[0], self.recipe, self.checkpoint)
                self.restored = True
                _log(f"{self.recipe.name}: quantizers restored from {self.checkpoint}")
        return model

    def calibrate_before_training(self, datasets_provider: Callable) -> Callable:
        """Wraps the datasets provider: after building the datasets, calibrates the quantizers
        on the first training samples unless they were restored."""

        def provider(train_val_test_num_samples, *args, **kwargs):
            datasets = datasets_provider(train_val_test_num_samples, *args, **kwargs)
            if not self.restored:
                self.calibrate(datasets[0])
            return datasets

        provider.is_distributed = getattr(datasets_provider, "is_distributed", False)
        return provider

    def calibrate(self, train_dataset) -> None:
        """Inserts and calibrates the quantizers on ``calib_samples`` training samples.
        Collective (every rank, with its data-parallel share of the samples)."""
        from megatron.core import mpu
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.training import get_args
        from megatron.training.datasets.data_samplers import build_pretraining_data_loader

        from megatron.minimax.quantization.calibration import (
            CalibrationReport,
            expert_token_counts,
            quantize_and_calibrate,
        )
        from megatron.minimax.training.gpt_step import forward_step

        args = get_args()
        per_step = args.micro_batch_size * mpu.get_data_parallel_world_size()
        num_microbatches = math.ceil(self.calib_samples / per_step)
        loader = build_pretraining_data_loader(train_dataset, 0) if train_dataset else None
        data = iter(loader) if loader is not None else None

        def forward_loop():
            for module in self.model:
                module.eval()
            with torch.no_grad():
                get_forward_backward_func()(
                    forward_step_func=forward_step,
                    data_iterator=data,
                    model=self.model,
                    num_microbatches=num_microbatches,
                    seq_length=args.seq_length,
                    micro_batch_size=args.micro_batch_size,
                    forward_only=True,
                )
            for module in self.model:
                module.train()

        quantize_and_calibrate(self.model[0], self.recipe, forward_loop)
        samples = num_microbatches * per_step
        report = CalibrationReport(
            num_sequences=samples,
            num_tokens=samples * args.seq_length,
            tokens_per_expert=expert_token_counts(self.model[0]),
        )
        _log(f"{self.recipe.name}: quantizers inserted; {report.summary()}")


def _log(message: str) -> None:
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        logger.info(message)
        print(f"> {message}", flush=True)


def configure(args, model_config, datasets_provider: Callable) -> Callable:
    """Wires ``--modelopt-recipe`` into ``pretrain()``: registers the post-wrap hook on
    ``model_config`` and returns the datasets provider to pass (unchanged without the flag).

    Raises:
        ValueError: see :meth:`QuantizationAwareTraining.from_args`.
    """
    training = QuantizationAwareTraining.from_args(args)
    if training is None:
        return datasets_provider
    model_config.post_wrap_hooks.append(training.restore_from_checkpoint)
    return training.calibrate_before_training(datasets_provider)
