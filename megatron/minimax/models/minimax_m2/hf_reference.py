# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The HF reference side of parity checks: ``transformers``' ``MiniMaxM2ForCausalLM`` in fp32.

Two ways to run it on exactly the checkpoint's weights (FP8 dequantised in fp32):

* :func:`load_hf_reference_model`: the whole model in memory (fp32: about 1 TB for the 229B
  release); needed for gradients (:func:`hf_gradients`).
* :func:`streamed_hf_logits`: logits computed layer by layer, each decoder layer's weights read
  from the checkpoint just before it runs and freed after, so host memory holds one decoder layer
  (14.7 GB in fp32 for the release) plus the embedding or ``lm_head``, whatever the depth. It
  runs transformers' own modules on the same inputs, so its logits are bit for bit those of the
  whole model.

Logits and gradients are reported under the released on-disk tensor names, so they compare
directly with the Megatron side exported through the weight table.
"""

import os
import re
from typing import Dict, List, Optional, Tuple, Union

import torch

from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
from megatron.minimax.models.minimax_m2.parity import next_token_loss

EXPERT_RE = re.compile(
    r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$"
)
ROUTER_RE = re.compile(
    r"^model\.layers\.(\d+)\.block_sparse_moe\.(gate\.weight|e_score_correction_bias)$"
)

_LAYER = re.compile(r"model\.layers\.(\d+)\.")
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
    from transformers import MiniMaxM2ForCausalLM

    with HFCheckpoint(hf_dir) as ckpt:
        config = _transformers_config(ckpt.config)
        # The random init is overwritten below; keep it from advancing the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            model = MiniMaxM2ForCausalLM(config)
        _check_partial_rope(model.model.rotary_emb, ckpt.config)
        state_dict = _to_transformers_layout(ckpt, ckpt.tensor_names(), ckpt.config, round_to)

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


def _transformers_config(config: dict):
    """transformers' config for a ``config.json``: eager attention and experts (the reference
    computation), no ``quantization_config`` (weights are dequantised on reading). The reference
    never generates, so token ids that ``config.json`` does not set stay unset (transformers'
    release defaults lie outside small test vocabularies)."""
    from transformers import MiniMaxM2Config

    config = dict(config)
    config.pop("quantization_config", None)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config.setdefault(key, None)
    return MiniMaxM2Config(**config, attn_implementation="eager", experts_implementation="eager")


def _check_partial_rope(rotary_emb, config: dict) -> None:
    """Raises if transformers did not turn ``rotary_dim`` into partial RoPE (older or future
    versions that ignore the legacy key would silently rotate the whole head)."""
    rotary_dim = config.get("rotary_dim", config["head_dim"])
    inv_freq = rotary_emb.inv_freq
    if inv_freq.numel() != rotary_dim // 2:
        raise RuntimeError(
            f"transformers built {inv_freq.numel()} RoPE frequencies but rotary_dim={rotary_dim} "
            f"needs {rotary_dim // 2}: this transformers version ignores rotary_dim (partial RoPE)"
        )


def _read(ckpt: HFCheckpoint, name: str, round_to: Optional[torch.dtype]) -> torch.Tensor:
    """An on-disk tensor in fp32, rounded to ``round_to`` and back unless it is the router's."""
    tensor = ckpt.get(name, torch.float32)
    if round_to is not None and not ROUTER_RE.match(name):
        tensor = tensor.to(round_to).to(torch.float32)
    return tensor


def _to_transformers_layout(
    ckpt: HFCheckpoint, names: List[str], config: dict, round_to: Optional[torch.dtype]
) -> Dict[str, torch.Tensor]:
    """On-disk tensors ``names`` -> transformers 5.x ``MiniMaxM2ForCausalLM`` state-dict entries
    (fp32). Experts are stacked into ``gate_up_proj``/``down_proj`` one at a time, so memory holds
    the stacks plus one expert matrix."""
    num_experts = config["num_local_experts"]
    experts: Dict[Tuple[int, str], Dict[int, str]] = {}
    out: Dict[str, torch.Tensor] = {}
    for name in names:
        router = ROUTER_RE.match(name)
        expert = EXPERT_RE.match(name)
        if router:
            layer, leaf = router.groups()
            out[f"model.layers.{layer}.mlp.{leaf}"] = _read(ckpt, name, round_to)
        elif expert:
            layer, e, which = expert.groups()
            experts.setdefault((int(layer), which), {})[int(e)] = name
        else:
            out[name] = _read(ckpt, name, round_to)

    for (layer, which), per_expert in sorted(experts.items()):
        if sorted(per_expert) != list(range(num_experts)):
            absent = sorted(set(range(num_experts)) - set(per_expert))
            extra = sorted(set(per_expert) - set(range(num_experts)))
            raise RuntimeError(
                f"{ckpt.path}: layer {layer} {which}: experts {absent} missing, {extra} unexpected "
                f"(num_local_experts={num_experts})"
            )
    for layer in sorted({layer for layer, _ in experts}):
        try:
            w1, w2, w3 = (experts[(layer, w)] for w in ("w1", "w2", "w3"))
        except KeyError as e:
            raise RuntimeError(f"{ckpt.path}: layer {layer} has no expert {e.args[0][1]}") from e
        gate_up = down = None
        for e in range(num_experts):
            gate, up, w2_e = (_read(ckpt, w[e], round_to) for w in (w1, w3, w2))
            if gate_up is None:
                gate_up = torch.empty(num_experts, 2 * gate.shape[0], gate.shape[1])
                down = torch.empty(num_experts, *w2_e.shape)
            gate_up[e] = torch.cat([gate, up], dim=0)
            down[e] = w2_e
        prefix = f"model.layers.{layer}.mlp.experts."
        out[prefix + "gate_up_proj"] = gate_up
        out[prefix + "down_proj"] = down
    return out


@torch.no_grad()
def streamed_hf_logits(
    hf_dir: Union[str, os.PathLike], tokens: torch.Tensor, round_to: Optional[torch.dtype] = None
) -> torch.Tensor:
    """fp32 logits ``[b, s, vocab]`` of transformers' ``MiniMaxM2ForCausalLM`` on ``tokens``,
    computed one decoder layer at a time (bounded host memory; see the module docstring).

    Each step reads one part of the checkpoint (FP8 dequantised per tensor, experts stacked one
    at a time), builds the transformers module for it on the ``meta`` device and assigns the
    weights, runs it, and drops it: the embedding, then each decoder layer (eval mode, eager
    attention and experts, the model's causal mask and rotary embeddings), then the final norm
    and ``lm_head``. The logits equal :func:`hf_logits` of :func:`load_hf_reference_model` on the
    same arguments, bit for bit.

    Args:
        hf_dir: checkpoint directory.
        tokens: ``[b, s]`` int64 token ids.
        round_to: as for :func:`load_hf_reference_model`.

    Raises:
        RuntimeError: if transformers ignores ``rotary_dim`` or the checkpoint and the model do not
            match one to one (missing or unused tensors).
    """
    from transformers.masking_utils import create_causal_mask
    from transformers.models.minimax_m2.modeling_minimax_m2 import (
        MiniMaxM2DecoderLayer,
        MiniMaxM2RMSNorm,
        MiniMaxM2RotaryEmbedding,
    )

    with HFCheckpoint(hf_dir) as ckpt:
        config = _transformers_config(ckpt.config)
        num_layers = config.num_hidden_layers
        layer_names: Dict[int, List[str]] = {}
        top_names = []
        for name in ckpt.tensor_names():
            m = _LAYER.match(name)
            if m and int(m.group(1)) < num_layers:
                layer_names.setdefault(int(m.group(1)), []).append(name)
            else:
                top_names.append(name)
        top = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
        if set(top_names) != top:
            raise RuntimeError(
                f"{hf_dir}: checkpoint does not match MiniMaxM2ForCausalLM: missing "
                f"{sorted(top - set(top_names))}, unused {sorted(set(top_names) - top)}"
            )

        rotary_emb = MiniMaxM2RotaryEmbedding(config=config)
        _check_partial_rope(rotary_emb, ckpt.config)
        hidden = torch.nn.functional.embedding(
            tokens, _read(ckpt, "model.embed_tokens.weight", round_to)
        )
        position_ids = torch.arange(tokens.shape[1]).unsqueeze(0)
        causal_mask = create_causal_mask(
            config=config,
            inputs_embeds=hidden,
            attention_mask=None,
            cache=None,
            position_ids=position_ids,
        )
        position_embeddings = rotary_emb(hidden, position_ids=position_ids)

        for index in range(num_layers):
            prefix = f"model.layers.{index}."
            state = _to_transformers_layout(ckpt, layer_names.get(index, []), ckpt.config, round_to)
            with torch.device("meta"):
                layer = MiniMaxM2DecoderLayer(config, index)
            try:
                layer.load_state_dict(
                    {name[len(prefix) :]: t for name, t in state.items()}, assign=True
                )
            except RuntimeError as e:
                detail = " ".join(str(e).split())  # one line
                raise RuntimeError(
                    f"{hf_dir}: layer {index} does not match MiniMaxM2ForCausalLM: {detail}"
                ) from None
            del state
            hidden = layer.eval()(
                hidden,
                attention_mask=causal_mask,
                position_ids=position_ids,
                cache=None,
                use_cache=None,
                position_embeddings=position_embeddings,
            )
            del layer

        norm = MiniMaxM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        norm.weight.data = _read(ckpt, "model.norm.weight", round_to)
        hidden = norm(hidden)
        return torch.nn.functional.linear(hidden, _read(ckpt, "lm_head.weight", round_to)).float()
