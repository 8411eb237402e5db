# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The HF reference side of parity checks: ``transformers``' ``MiniMaxM2ForCausalLM`` in fp32.

Logits and gradients are reported under the released on-disk tensor names, so they compare
directly with the Megatron side exported through the weight table.
"""

import os
import re
from typing import Dict, Optional, Tuple, Union

import torch

from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
from megatron.minimax.models.minimax_m2.parity import next_token_loss

EXPERT_RE = re.compile(
    r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$"
)
ROUTER_RE = re.compile(
    r"^model\.layers\.(\d+)\.block_sparse_moe\.(gate\.weight|e_score_correction_bias)$"
)

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


def load_hf_reference_model(
    hf_dir: Union[str, os.PathLike],
    dtype: torch.dtype = torch.float32,
    round_to: Optional[torch.dtype] = None,
):
    """Loads a MiniMax-M2 directory into transformers' ``MiniMaxM2ForCausalLM`` (eval mode).

    The model is built from the directory's ``config.json`` (without ``quantization_config``) with
    eager attention and eager experts, and filled with weights read through :class:`HFCheckpoint`
    (FP8 dequantised in fp32), converted from the on-disk naming to transformers' in-memory layout:
    ``block_sparse_moe.gate.weight -> mlp.gate.weight``, ``block_sparse_moe.e_score_correction_bias
    -> mlp.e_score_correction_bias``, ``experts.gate_up_proj[e] = cat(w1_e, w3_e)``,
    ``experts.down_proj[e] = w2_e``; other names are unchanged.

    Router ``gate.weight`` and ``e_score_correction_bias`` stay fp32 whatever ``dtype`` is (a bf16
    bias changes near-tied expert choices, see the architecture notes, section 2.4).

    Args:
        hf_dir: checkpoint directory.
        dtype: dtype of all other parameters (fp32 by default, the golden-logit setting).
        round_to: if given (e.g. ``torch.bfloat16``), every tensor except the router gate and bias
            is rounded to this dtype and back to fp32 before loading: exactly the weights a
            Megatron model in that dtype holds after import.

    Returns:
        The model, on CPU, in eval mode.

    Raises:
        RuntimeError: if transformers ignores ``rotary_dim`` (partial RoPE) or the checkpoint and
            the model do not match one to one (missing or unused tensors).
    """
    from transformers import MiniMaxM2Config, MiniMaxM2ForCausalLM

    with HFCheckpoint(hf_dir) as ckpt:
        config_dict = dict(ckpt.config)
        config_dict.pop("quantization_config", None)
        config = MiniMaxM2Config(
            **config_dict, attn_implementation="eager", experts_implementation="eager"
        )
        # The random init is overwritten below; keep it from advancing the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            model = MiniMaxM2ForCausalLM(config)
        _check_partial_rope(model, config_dict)
        state_dict = _to_transformers_layout(ckpt, config_dict, round_to)

    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{hf_dir}: checkpoint does not match MiniMaxM2ForCausalLM: missing {sorted(missing)}, "
            f"unused {sorted(unexpected)}"
        )

    if dtype != torch.float32:
        for name, param in model.named_parameters():
            if not name.endswith(".mlp.gate.weight"):
                param.data = param.data.to(dtype)
    model.config.dtype = dtype
    return model.eval()


def _check_partial_rope(model, config: dict) -> None:
    """Raises if transformers did not turn ``rotary_dim`` into partial RoPE (older or future
    versions that ignore the legacy key would silently rotate the whole head)."""
    rotary_dim = config.get("rotary_dim", config["head_dim"])
    inv_freq = model.model.rotary_emb.inv_freq
    if inv_freq.numel() != rotary_dim // 2:
        raise RuntimeError(
            f"transformers built {inv_freq.numel()} RoPE frequencies but rotary_dim={rotary_dim} "
            f"needs {rotary_dim // 2}: this transformers version ignores rotary_dim (partial RoPE)"
        )


def _to_transformers_layout(
    ckpt: HFCheckpoint, config: dict, round_to: Optional[torch.dtype]
) -> Dict[str, torch.Tensor]:
    """On-disk tensors -> transformers 5.x ``MiniMaxM2ForCausalLM`` state dict (fp32)."""
    num_experts = config["num_local_experts"]
    experts: Dict[Tuple[int, str], Dict[int, torch.Tensor]] = {}
    out: Dict[str, torch.Tensor] = {}
    for name in ckpt.tensor_names():
        tensor = ckpt.get(name, torch.float32)
        router = ROUTER_RE.match(name)
        if router:
            layer, leaf = router.groups()
            out[f"model.layers.{layer}.mlp.{leaf}"] = tensor
            continue
        if round_to is not None:
            tensor = tensor.to(round_to).to(torch.float32)
        expert = EXPERT_RE.match(name)
        if expert:
            layer, e, which = expert.groups()
            experts.setdefault((int(layer), which), {})[int(e)] = tensor
        else:
            out[name] = tensor

    for (layer, which), per_expert in sorted(experts.items()):
        if sorted(per_expert) != list(range(num_experts)):
            absent = sorted(set(range(num_experts)) - set(per_expert))
            extra = sorted(set(per_expert) - set(range(num_experts)))
            raise RuntimeError(
                f"{ckpt.path}: layer {layer} {which}: experts {absent} missing, {extra} unexpected "
                f"(num_local_experts={num_experts})"
            )
    layers = sorted({layer for layer, _ in experts})
    for layer in layers:
        prefix = f"model.layers.{layer}.mlp.experts."
        try:
            w1, w2, w3 = (experts[(layer, w)] for w in ("w1", "w2", "w3"))
        except KeyError as e:
            raise RuntimeError(f"{ckpt.path}: layer {layer} has no expert {e.args[0][1]}") from e
        out[prefix + "gate_up_proj"] = torch.stack(
            [torch.cat([w1[e], w3[e]], dim=0) for e in range(num_experts)]
        )
        out[prefix + "down_proj"] = torch.stack([w2[e] for e in range(num_experts)])
    return out
