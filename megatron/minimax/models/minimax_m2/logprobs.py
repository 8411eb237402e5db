# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Per-token log-probabilities of given sequences under the Megatron model, at any layout.

This is the train/inference mismatch check of RL: the rollout engine reports log p(token) for the
tokens it sampled, the trainer recomputes them, and the two must agree. Here the Megatron side is
computed from vocab-parallel logits without gathering the vocabulary on any rank:

    logprob = logit[target] - max - log(sum(exp(logit - max)))

with ``max`` and the sum of exponentials all-reduced over tensor parallelism and the target logit
read on the rank that owns it. Padded vocabulary rows (Megatron pads the output layer to a multiple
of the TP size times a divisor) are excluded from the softmax: a padded row is not a token, and
with imported weights its logit would still enter the partition function.

Every function that takes a :class:`~megatron.minimax.models.minimax_m2.parity.LoadedModel` is
collective over the default process group.
"""

import math
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torch.distributed

from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron.minimax.models.minimax_m2.parity import (
    LoadedModel,
    pad_for_sequence_parallel,
    position_ids,
)

LOGPROBS_ATOL = 1e-4
"""Max |Megatron - HF| fp32 log-probability difference the checks accept."""


def vocab_range(local_vocab_size: int, rank: int) -> tuple:
    """``[start, end)`` of the vocabulary rows held by TP ``rank`` (equal contiguous shards)."""
    return rank * local_vocab_size, (rank + 1) * local_vocab_size


@torch.no_grad()
def vocab_parallel_log_probs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    tp_group: Optional[torch.distributed.ProcessGroup] = None,
) -> torch.Tensor:
    """fp32 ``log_softmax(logits)[target]`` from vocab-parallel logits, padding excluded.

    megatron-core's ``vocab_parallel_cross_entropy`` computes the same statistic, but over every
    local row, padded ones included, and through an autograd function; scoring needs neither.

    Args:
        logits: ``[..., V/tp]`` this rank's shard of the (padded) vocabulary logits.
        targets: ``[...]`` int64 token ids in ``[0, vocab_size)``.
        vocab_size: the unpadded vocabulary size; rows at or beyond it are padding.
        tp_group: the tensor-parallel group the vocabulary is split over (None: one rank).

    Returns:
        ``[...]`` fp32 log-probabilities of ``targets``, identical on every rank of ``tp_group``.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree on the "
            "leading dimensions"
        )
    tp_size, tp_rank = 1, 0
    if tp_group is not None and torch.distributed.is_initialized():
        tp_size, tp_rank = tp_group.size(), tp_group.rank()
    local_vocab = logits.shape[-1]
    start, end = vocab_range(local_vocab, tp_rank)
    if vocab_size > local_vocab * tp_size:
        raise ValueError(f"vocab_size {vocab_size} exceeds the {local_vocab * tp_size} logit rows")

    logits = logits.float()
    if end > vocab_size:
        # Padding rows get probability 0: -inf logits drop out of both the max and the sum.
        logits = logits.clone()
        logits[..., max(vocab_size - start, 0) :] = -math.inf

    logits_max = logits.max(dim=-1).values  # [...]
    if tp_size > 1:
        torch.distributed.all_reduce(logits_max, op=torch.distributed.ReduceOp.MAX, group=tp_group)
    sum_exp = (logits - logits_max.unsqueeze(-1)).exp().sum(dim=-1)  # [...]

    owned = (targets >= start) & (targets < end)
    local_index = (targets - start).clamp(0, local_vocab - 1)
    target_logit = logits.gather(-1, local_index.unsqueeze(-1)).squeeze(-1)
    target_logit = torch.where(owned, target_logit, torch.zeros_like(target_logit))
    if tp_size > 1:
        # One all-reduce for both sums: [..., 2].
        both = torch.stack([sum_exp, target_logit], dim=-1)
        torch.distributed.all_reduce(both, group=tp_group)
        sum_exp, target_logit = both.unbind(-1)
    return target_logit - logits_max - sum_exp.log()


def log_probs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``[b, s-1]`` fp32 ``log p(tokens[:, t+1] | tokens[:, :t+1])`` from full ``[b, s, V]`` logits
    (the reference computation: ``log_softmax(logits.float())`` gathered at the next tokens)."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return log_probs.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def hf_log_probs(model, tokens: torch.Tensor) -> torch.Tensor:
    """``[b, s-1]`` fp32 next-token log-probabilities of transformers' model on ``tokens``."""
    return log_probs_from_logits(model(input_ids=tokens).logits, tokens)


def megatron_log_probs(
    loaded: LoadedModel, tokens: torch.Tensor, micro_batch_size: Optional[int] = None
) -> torch.Tensor:
    """``[b, s-1]`` fp32 next-token log-probabilities of the whole (pipelined) model.

    The batch runs through megatron-core's forward-only pipeline schedule in micro-batches; the
    last pipeline stage turns its vocab-parallel logits into log-probabilities, which are then
    broadcast to every stage. Any sequence length works with sequence parallelism (the padding of
    :func:`~megatron.minimax.models.minimax_m2.parity.pad_for_sequence_parallel` is never
    scored). Collective over the default process group.

    Args:
        loaded: this rank's model chunk at the current layout.
        tokens: ``[b, s]`` int64 token ids, the same on every rank.
        micro_batch_size: sequences per forward pass (default: the whole batch). Bounds the
            ``[micro_batch, s, V/tp]`` fp32 logits held at once.

    Returns:
        ``[b, s-1]`` fp32 on CPU, on every rank.
    """
    model, config = loaded.model, loaded.config
    batch, seq = tokens.shape
    if seq < 2:
        raise ValueError(f"need at least 2 tokens per sequence to score one, got {seq}")
    micro_batch_size = micro_batch_size or batch
    if batch % micro_batch_size:
        raise ValueError(f"micro_batch_size {micro_batch_size} does not divide the batch {batch}")
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    padded = pad_for_sequence_parallel(tokens, loaded.layout)
    vocab = loaded.model_args.vocab_size
    tp_group = parallel_state.get_tensor_model_parallel_group()

    def forward_step(data_iterator, model_chunk):
        micro_batch = next(data_iterator)
        output = model_chunk(micro_batch, position_ids(micro_batch), None)

        def score(logits_local, non_loss_data=False):
            # [mb, s_padded, V/tp] -> [mb, s-1]
            return vocab_parallel_log_probs(
                logits_local[:, : seq - 1], micro_batch[:, 1:seq], vocab, tp_group
            )

        return output, score

    model.eval()
    with torch.no_grad():
        collected: List[torch.Tensor] = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(padded.split(micro_batch_size)),
            model=[model],
            num_microbatches=batch // micro_batch_size,
            seq_length=padded.shape[1],
            micro_batch_size=micro_batch_size,
            forward_only=True,
            collect_non_loss_data=True,
        )
    log_probs = torch.zeros(batch, seq - 1, dtype=torch.float32, device=device)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        log_probs.copy_(torch.cat(collected))
    torch.distributed.broadcast(
        log_probs,
        src=parallel_state.get_pipeline_model_parallel_last_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )
    return log_probs.cpu()


def scored_positions(mask: Optional[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """``[b, s-1]`` bool: which log-probabilities are scored.

    A token mask (``loss_mask``/``response_mask``, ``[b, s]``, as RL frameworks store them) marks
    the tokens whose probability counts; ``logprobs[:, t]`` is the probability of
    ``tokens[:, t+1]``, so it is scored where ``mask[:, t+1]`` is set. Without a mask every
    position is scored.
    """
    if mask is None:
        return torch.ones(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    if mask.shape != tokens.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} differs from tokens {tuple(tokens.shape)}"
        )
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask values must be 0 or 1")
    return mask[:, 1:].bool()


@dataclass
class LogProbComparison:
    """Megatron vs reference log-probabilities over the scored positions."""

    max_abs_diff: float
    mean_abs_diff: float
    kl_k3: float
    """Mean of ``exp(d) - 1 - d`` with ``d = logp_megatron - logp_reference``: the k3 estimator
    of KL(reference || Megatron) for tokens sampled from the reference (the rollout policy)."""
    num_scored: int

    def ok(self, atol: float = LOGPROBS_ATOL) -> bool:
        return self.max_abs_diff <= atol

    def as_dict(self) -> dict:
        return asdict(self)


def compare_log_probs(
    megatron: torch.Tensor, reference: torch.Tensor, scored: Optional[torch.Tensor] = None
) -> LogProbComparison:
    """Compare ``[b, s-1]`` log-probabilities on the ``scored`` positions (default: all)."""
    if megatron.shape != reference.shape:
        raise ValueError(
            f"log-prob shapes differ: {tuple(megatron.shape)} vs {tuple(reference.shape)}"
        )
    if scored is None:
        scored = torch.ones_like(megatron, dtype=torch.bool)
    if not scored.any():
        raise ValueError("no position is scored: the mask selects no token after the first")
    delta = (megatron.double() - reference.double())[scored]
    return LogProbComparison(
        max_abs_diff=delta.abs().max().item(),
        mean_abs_diff=delta.abs().mean().item(),
        kl_k3=(delta.exp() - 1 - delta).mean().item(),
        num_scored=int(scored.sum()),
    )
