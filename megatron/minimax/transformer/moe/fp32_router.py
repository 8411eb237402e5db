# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""A top-k router whose gate weight stays fp32 in a bf16/fp16 model.

MiniMax-M2 ships its router gate and ``e_score_correction_bias`` in fp32, and inference engines
route in fp32. Rounding the gate to bf16 changes which experts near-tied tokens pick, which widens
the train/inference gap. megatron-core casts the gate to ``params_dtype`` at construction and
``Float16Module`` casts every parameter to bf16; this router opts out of both dtype casts (device
moves still apply). DDP gives the fp32 weight its own fp32 gradient buffer, and the mixed-precision
optimizer steps it in place as an fp32 parameter.
"""

from typing import Callable

import torch

from megatron.core.transformer.moe.moe_utils import router_gating_linear
from megatron.core.transformer.moe.router import TopKRouter


class FP32TopKRouter(TopKRouter):
    """``TopKRouter`` with an fp32 gate weight (and bias), and fp32 routing buffers.

    Use it with ``moe_router_dtype='fp32'``. Besides the weight, the ``expert_bias`` buffer and the
    ``local_tokens_per_expert`` counters are kept fp32: a bf16 counter saturates at 256 increments
    per value step and stalls the expert-bias update at realistic token counts.
    """

    def reset_parameters(self):
        """Initialise like ``TopKRouter`` (same RNG draws) but keep the weight in fp32."""
        if self.config.perform_initialization:
            self.config.init_method(self.weight)
            if self.bias is not None:
                self.config.init_method(self.bias)
        setattr(self.weight, "sequence_parallel", self.config.sequence_parallel)
        if self.bias is not None:
            setattr(self.bias, "sequence_parallel", self.config.sequence_parallel)

    def _apply(self, fn: Callable, recurse: bool = True):
        # Float16Module calls module.bfloat16(), which reaches every tensor through _apply. Keep the
        # dtype of this module's own fp32 tensors (and their grads), but follow device moves.
        own_fp32 = [t for t in self._parameters.values() if t is not None]
        own_fp32 += [t for t in self._buffers.values() if t is not None]
        own_fp32 = [t for t in own_fp32 if t.dtype == torch.float32]
        keep = {id(t) for t in own_fp32}
        keep |= {id(t.grad) for t in own_fp32 if getattr(t, "grad", None) is not None}

        def keep_fp32(t):
            out = fn(t)
            if id(t) in keep and torch.is_tensor(out) and out.dtype != torch.float32:
                out = t.detach().to(device=out.device)
            return out

        return super()._apply(keep_fp32, recurse)

    def gating(self, input: torch.Tensor) -> torch.Tensor:
        """Router logits in fp32: both GEMM operands fp32, weight gradient fp32."""
        if self.config.moe_router_dtype != "fp32":
            return super().gating(input)
        if self.weight.device != input.device:
            self.weight.data = self.weight.data.to(device=input.device)
        if self.bias is not None and self.bias.device != input.device:
            self.bias.data = self.bias.data.to(device=input.device)
        return router_gating_linear(input.float(), self.weight, self.bias, torch.float32)
