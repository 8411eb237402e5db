# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""A top-k router whose gate weight stays fp32 in a bf16/fp16 model (``moe_router_keep_in_fp32``).

MiniMax-M2 ships its router gate and ``e_score_correction_bias`` in fp32, and inference engines
route in fp32. Rounding the gate to bf16 changes which experts near-tied tokens pick, which widens
the train/inference gap. megatron-core 0.19 casts the gate to ``params_dtype`` at construction and
``Float16Module`` casts every parameter and buffer to bf16; this router opts out of both dtype casts
(device moves still apply). DDP gives the fp32 weight its own fp32 gradient buffer, and the
mixed-precision optimizer steps it in place as an fp32 parameter.

The specs use this class on stock megatron-core. ``_apply`` and ``_tensors_kept_in_fp32`` are also
the source of the native patch series, which adds them to megatron-core's ``Router``.
"""

import torch

from megatron.core.transformer.moe.moe_utils import router_gating_linear
from megatron.core.transformer.moe.router import TopKRouter


class FP32TopKRouter(TopKRouter):
    """``TopKRouter`` with an fp32 gate weight (and bias), and fp32 routing buffers.

    Use it with ``moe_router_keep_in_fp32=True`` (which needs ``moe_router_dtype='fp32'``). Besides
    the weight, the ``expert_bias`` buffer and the ``local_tokens_per_expert`` counters are kept
    fp32: a bf16 counter saturates at 256 increments per value step and stalls the expert-bias
    update at realistic token counts.
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

    def _tensors_kept_in_fp32(self) -> list[torch.Tensor]:
        """This module's own tensors that dtype conversions leave in fp32: its fp32 buffers
        (expert bias, token counters, which a bf16 copy would saturate) and, with
        ``moe_router_keep_in_fp32``, its fp32 gate weight and bias."""
        kept = [t for t in self._buffers.values() if t is not None and t.dtype == torch.float32]
        if self.config.moe_router_keep_in_fp32:
            kept += [
                t for t in self._parameters.values() if t is not None and t.dtype == torch.float32
            ]
        return kept

    def _apply(self, fn, recurse=True):
        # Float16Module converts the model with module.bfloat16()/half(), which reaches every
        # tensor through _apply. Keep the dtype of the tensors listed by _tensors_kept_in_fp32
        # (and of their grads), but follow device moves.
        kept = self._tensors_kept_in_fp32()
        keep = {id(t) for t in kept}
        keep |= {id(t.grad) for t in kept if getattr(t, "grad", None) is not None}

        def keep_fp32(t):
            out = fn(t)
            if id(t) in keep and torch.is_tensor(out) and out.dtype != torch.float32:
                out = t.detach().to(device=out.device)
            return out

        return super()._apply(keep_fp32, recurse)

    def gating(self, input: torch.Tensor) -> torch.Tensor:
        """Router logits in fp32: both GEMM operands fp32, weight gradient fp32."""
        if self.weight.device != input.device:
            self.weight.data = self.weight.data.to(device=input.device)
        if self.bias is not None and self.bias.device != input.device:
            self.bias.data = self.bias.data.to(device=input.device)
        return router_gating_linear(input.float(), self.weight, self.bias, torch.float32)
