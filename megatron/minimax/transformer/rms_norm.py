# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Pure-PyTorch RMSNorm for the local (non-Transformer-Engine) spec, sequence-parallel capable."""

import torch

from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(MegatronModule):
    """``y = w * (x * rsqrt(mean(x ** 2) + eps))``, statistic in fp32, weight not zero-centred.

    megatron-core's local ``WrappedTorchNorm`` refuses sequence parallelism. Under sequence
    parallelism a norm sees only this rank's sequence shard, so its weight gradient is partial;
    the weight is tagged ``sequence_parallel`` and ``finalize_model_grads`` sums it over TP.

    Args:
        config: transformer config.
        hidden_size: normalised width.
        eps: epsilon added to the mean square.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **kwargs):
        super().__init__(config=config)
        if config.normalization != "RMSNorm":
            raise ValueError(f"RMSNorm built with normalization={config.normalization!r}.")
        if config.layernorm_zero_centered_gamma:
            raise ValueError("RMSNorm does not implement layernorm_zero_centered_gamma.")
        self.eps = eps
        self.weight = torch.nn.Parameter(
            torch.ones(
                hidden_size,
                dtype=config.params_dtype,
                device=None if config.use_cpu_initialization else torch.cuda.current_device(),
            )
        )
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise over the last dimension."""
        x_fp32 = x.float()
        normed = x_fp32 * torch.rsqrt(x_fp32.square().mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)
