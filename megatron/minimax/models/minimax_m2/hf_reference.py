# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The HF reference side of parity checks: ``transformers``' ``MiniMaxM2ForCausalLM`` in fp32.

Logits and gradients are reported under the released on-disk tensor names, so they compare
directly with the Megatron side exported through the weight table.
"""

import re
from typing import Dict

import torch

from megatron.minimax.models.minimax_m2.parity import next_token_loss

_GATE = re.compile(r"model\.layers\.(\d+)\.mlp\.gate\.weight\Z")
_EXPERTS = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)\Z")


@torch.no_grad()
def hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """fp32 logits ``[b, s, vocab]``."""
    return model(input_ids=tokens).logits.float()


def hf_gradients(model, tokens: torch.Tensor) -> tuple:
    """One backward of the mean next-token loss. Returns ``(loss, {on-disk name: gradient})``.

    transformers 5.x holds experts fused (``gate_up_proj[e] = cat(w1_e, w3_e)``,
    ``down_proj[e] = w2_e``) and the router as ``mlp.gate``; gradients are split back to the
    released per-expert names.
    """
    model.zero_grad(set_to_none=True)
    loss = next_token_loss(model(input_ids=tokens).logits, tokens)
    loss.backward()
    grads: Dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        grad = param.grad.detach().clone()
        gate = _GATE.match(name)
        experts = _EXPERTS.match(name)
        if gate:
            grads[f"model.layers.{gate.group(1)}.block_sparse_moe.gate.weight"] = grad
        elif experts:
            layer, kind = experts.groups()
            prefix = f"model.layers.{layer}.block_sparse_moe.experts"
            for e, g in enumerate(grad):
                if kind == "gate_up_proj":
                    w1, w3 = g.chunk(2, dim=0)
                    grads[f"{prefix}.{e}.w1.weight"] = w1
                    grads[f"{prefix}.{e}.w3.weight"] = w3
                else:
                    grads[f"{prefix}.{e}.w2.weight"] = g
        else:
            grads[name] = grad
    return loss.item(), grads
