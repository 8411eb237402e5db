# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Autograd-aware collectives that megatron-core's ``tensor_parallel/mappings.py`` lacks.

Upstream this lands beside ``reduce_from_tensor_model_parallel_region``
(``tools/upstream/make_native.py`` lifts the class and function below into it).
"""

import torch
import torch.distributed


class _AllReduceSumInBothDirections(torch.autograd.Function):
    """Sum over a process group in forward, and sum the incoming gradient in backward.

    ``reduce_from_tensor_model_parallel_region`` passes the gradient through unchanged, which is
    right when each rank's output is consumed only on that rank. When the reduced value is consumed
    on every rank (a statistic shared by all ranks' shards), d(loss)/d(partial) is the sum of every
    rank's d(loss)/d(total), so the backward must all-reduce too.
    """

    @staticmethod
    def forward(ctx, partial: torch.Tensor, group) -> torch.Tensor:
        """All-reduce (sum) a copy of ``partial`` over ``group``."""
        ctx.group = group
        total = partial.clone()
        torch.distributed.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        """All-reduce (sum) the gradient of the total over the same group."""
        grad_partial = grad_total.contiguous().clone()
        torch.distributed.all_reduce(grad_partial, group=ctx.group)
        return grad_partial, None


def all_reduce_sum_in_both_directions(partial: torch.Tensor, group) -> torch.Tensor:
    """Autograd-correct sum of ``partial`` over ``group``: all-reduce in forward and backward.

    Args:
        partial: this rank's share of the sum.
        group: the process group to sum over.
    """
    return _AllReduceSumInBothDirections.apply(partial, group)
