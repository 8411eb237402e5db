# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Expert-bias policy for RL and fine-tuning: the bias stays frozen unless you opt in.

What the bias is. MiniMax-M2 routes each token to the top-8 experts of
``sigmoid(gate(x)) + e_score_correction_bias`` and weights them by the unbiased scores. In
Megatron the bias is the fp32 buffer ``mlp.router.expert_bias`` of every ``TopKRouter``
(``--moe-router-enable-expert-bias``). It only changes *which* experts a token uses.

What megatron-core 0.19.2 does with it. ``finalize_model_grads`` ends every training step with
``_update_router_expert_bias``: the per-expert token counts of the step are all-reduced over
TP x DP x CP and each bias entry moves by ``moe_router_bias_update_rate`` (default 1e-3) towards
balance, ``bias += rate * sign(mean_load - load)``. Routers in eval mode, and routers whose
``frozen_expert_bias`` attribute is True, are skipped.

Decision: during RL the bias stays frozen by default. The rollout engine (SGLang, vLLM) routes
with the bias it was given at the last weight update. If training also updates it, the same
tokens are routed differently in rollout and in training, a train/inference mismatch that grows
with every step (up to ``steps * rate`` per entry), and the bias must then be pushed to the engine
at every refit. The balancing it buys is a pre-training concern; a short RL run on a narrow prompt
distribution would tune it to that distribution's load.

How to freeze:

* ``--moe-router-bias-update-rate 0`` on the command line, for frameworks that only take flags
  (slime, miles, megatron-training): ``bias + 0 * sign(...)`` leaves every entry bit-identical. The
  token-count all-reduce still runs (one ``[layers, experts]`` fp32 tensor per step).
* :func:`freeze_expert_bias` on the built model chunks, where a framework gives access to them:
  megatron-core then skips the update and its all-reduce.

Opt-in alternative: keep updating (``--moe-router-bias-update-rate 1e-3``, or unfreeze) and push
``e_score_correction_bias`` to the rollout engine with the weights on every refit. It is part of
the HF export (fp32, ``model.layers.N.block_sparse_moe.e_score_correction_bias``); send it in fp32,
since a bf16 bias changes near-tied expert choices. :func:`expert_bias_hf_tensors` returns this
rank's biases under those names.
"""

from typing import Dict, Iterable, Iterator

import torch

from megatron.core.transformer.moe.router import TopKRouter

from megatron.minimax.models.conversion.model_weights import model_tensors
from megatron.minimax.models.minimax_m2.weight_mapping import MINIMAX_M2_WEIGHTS

EXPERT_BIAS_SUFFIX = "mlp.router.expert_bias"


def _routers_with_bias(model_chunks: Iterable[torch.nn.Module]) -> Iterator[TopKRouter]:
    for chunk in model_chunks:
        for module in chunk.modules():
            if isinstance(module, TopKRouter) and getattr(module, "expert_bias", None) is not None:
                yield module


def freeze_expert_bias(model_chunks: Iterable[torch.nn.Module], frozen: bool = True) -> int:
    """Stop (or, with ``frozen=False``, resume) the per-step expert-bias update of every router.

    Sets ``TopKRouter.frozen_expert_bias``, which megatron-core's ``finalize_model_grads`` reads
    before updating the bias. MTP-layer routers are included.

    Call it on every rank with the same ``frozen``, before the next ``finalize_model_grads``: the
    update all-reduces the token counts of the unfrozen routers over TP x DP x CP, so ranks that
    disagree would all-reduce tensors of different sizes.

    Args:
        model_chunks: this rank's model chunks (wrapped or not: DDP, Float16Module).
        frozen: True to freeze, False to let the bias update again.

    Returns:
        The number of routers changed (0 when expert bias is disabled).
    """
    count = 0
    for router in _routers_with_bias(model_chunks):
        router.frozen_expert_bias = frozen
        count += 1
    return count


def is_expert_bias_frozen(model_chunks: Iterable[torch.nn.Module]) -> bool:
    """True when every router with an expert bias is frozen (vacuously true without any)."""
    return all(router.frozen_expert_bias for router in _routers_with_bias(model_chunks))


def expert_bias_hf_tensors(model_chunks: Iterable[torch.nn.Module]) -> Dict[str, torch.Tensor]:
    """This rank's decoder-layer expert biases under their HF names, fp32 copies.

    The bias is replicated over TP and EP, so every rank of a pipeline stage returns the same
    tensors for that stage's layers; no communication. MTP-layer biases are left out (the released
    checkpoints have none to update).

    Args:
        model_chunks: this rank's model chunks (wrapped or not).

    Returns:
        ``{"model.layers.N.block_sparse_moe.e_score_correction_bias": fp32 [num_experts]}``.
    """
    out = {}
    for chunk in model_chunks:
        for mt in model_tensors(chunk):
            name = mt.canonical_name
            if not (name.startswith("decoder.layers.") and name.endswith(EXPERT_BIAS_SUFFIX)):
                continue
            mapping, fields = MINIMAX_M2_WEIGHTS.resolve_megatron(name)
            (hf_name,) = mapping.hf_names(**fields)
            out[hf_name] = mt.tensor.detach().to(torch.float32).clone()
    return out
