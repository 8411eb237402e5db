# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Full-dimension QK RMSNorm: one RMSNorm over all heads of a layer's query (or key).

MiniMax-M2 (``qk_norm_type: per_layer``) and OLMo-2 normalise the whole projected query
(``num_attention_heads * kv_channels`` features) and the whole projected key
(``num_query_groups * kv_channels``) with one RMS statistic per token, before RoPE:

    y = w * x * rsqrt(mean(x ** 2) + eps)          (statistic in fp32)

Under tensor parallelism each rank holds a contiguous block of heads. Only the per-token partial
sum of squares crosses ranks: one fp32 scalar per token, summed with an all-reduce that also
all-reduces the gradient of the statistic in backward (every rank's output depends on every rank's
input through it). Activations are never gathered.

The weight is the full ``[heads * kv_channels]`` vector, replicated on every TP rank; each rank
multiplies by its own slice. Its gradient is therefore non-zero only on the rank's slice, and
``finalize_model_grads`` (which sums over TP the gradients of parameters named
``q_layernorm``/``k_layernorm``) assembles the exact full gradient on every rank. The weight is
deliberately not tagged ``sequence_parallel``: with sequence parallelism the input has already been
all-gathered along the sequence by ``linear_qkv``, so the gradient is complete per rank and a
second TP reduction would scale it.
"""

from typing import Literal, Optional

import torch
import torch.distributed

from megatron.core import parallel_state
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron.minimax.tensor_parallel.mappings import all_reduce_sum_in_both_directions


class FullDimQKRMSNorm(MegatronModule):
    """RMSNorm across all query (or key) heads of one attention layer, exact under TP.

    It fills ``SelfAttention``'s ``q_layernorm``/``k_layernorm`` when
    ``config.qk_layernorm_scope == 'layer'``. ``SelfAttention`` passes ``hidden_size=kv_channels``
    as to any q/k norm; the full width is derived from ``config``.

    Args:
        config: transformer config.
        hidden_size: per-head width (``kv_channels``).
        eps: epsilon added to the mean square.
        projection: 'query' or 'key': which projection's heads this norm covers.
        tp_group: the attention layer's tensor-parallel group. May be None only when
            ``config.tensor_model_parallel_size`` is 1.
    """

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-6,
        projection: Literal["query", "key"] = "query",
        tp_group: Optional[torch.distributed.ProcessGroup] = None,
    ):
        super().__init__(config=config)
        if projection not in ("query", "key"):
            raise ValueError(f"projection must be 'query' or 'key', got {projection!r}.")
        if tp_group is None and config.tensor_model_parallel_size > 1:
            raise ValueError(
                f"FullDimQKRMSNorm({projection}) needs the tensor-parallel group: "
                f"tensor_model_parallel_size is {config.tensor_model_parallel_size}."
            )
        self.tp_group = tp_group
        self.tp_size = torch.distributed.get_world_size(tp_group) if tp_group is not None else 1
        self.tp_rank = torch.distributed.get_rank(tp_group) if tp_group is not None else 0

        num_heads = (
            config.num_attention_heads
            if projection == "query"
            else (config.num_query_groups or config.num_attention_heads)
        )
        if num_heads % self.tp_size != 0:
            raise ValueError(
                f"FullDimQKRMSNorm({projection}): {num_heads} heads are not divisible by the "
                f"tensor-parallel size {self.tp_size}."
            )
        self.projection = projection
        self.head_dim = hidden_size
        self.num_heads_per_partition = num_heads // self.tp_size
        self.full_dim = num_heads * hidden_size
        self.eps = eps
        self.weight = torch.nn.Parameter(
            torch.ones(
                self.full_dim,
                dtype=config.params_dtype,
                device=None if config.use_cpu_initialization else torch.cuda.current_device(),
            )
        )

    def _local_weight(self) -> torch.Tensor:
        width = self.num_heads_per_partition * self.head_dim
        local = self.weight.narrow(0, self.tp_rank * width, width)
        return local.view(self.num_heads_per_partition, self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``[..., heads_per_partition, head_dim]`` (``[sq, b, np, hn]``
        or packed ``[t, np, hn]``) over all heads of all TP ranks."""
        if x.shape[-2:] != (self.num_heads_per_partition, self.head_dim):
            raise ValueError(
                f"FullDimQKRMSNorm({self.projection}) expects [..., "
                f"{self.num_heads_per_partition}, {self.head_dim}], got {tuple(x.shape)}."
            )
        x_fp32 = x.float()
        # [..., 1, 1]: this rank's share of the per-token sum of squares.
        sum_sq = x_fp32.square().sum(dim=(-2, -1), keepdim=True)
        if self.tp_size > 1:
            sum_sq = all_reduce_sum_in_both_directions(sum_sq, self.tp_group)
        normed = x_fp32 * torch.rsqrt(sum_sq / self.full_dim + self.eps)
        # Same rounding order as the HF reference: normalise in fp32, cast, then scale.
        return self._local_weight() * normed.to(x.dtype)


# Spec builders for stock megatron-core 0.19, whose SelfAttention builds q/k norms from the spec
# with (config, hidden_size, eps) only: they take the global tensor-parallel group. Where
# megatron-core has qk_layernorm_scope natively, SelfAttention builds FullDimQKRMSNorm itself,
# with its own group.


def FullDimQRMSNorm(*, config: TransformerConfig, hidden_size: int, eps: float = 1e-6):
    """``LayerNormBuilder`` for ``SelfAttentionSubmodules.q_layernorm``."""
    return FullDimQKRMSNorm(
        config=config,
        hidden_size=hidden_size,
        eps=eps,
        projection="query",
        tp_group=parallel_state.get_tensor_model_parallel_group(check_initialized=False),
    )


def FullDimKRMSNorm(*, config: TransformerConfig, hidden_size: int, eps: float = 1e-6):
    """``LayerNormBuilder`` for ``SelfAttentionSubmodules.k_layernorm``."""
    return FullDimQKRMSNorm(
        config=config,
        hidden_size=hidden_size,
        eps=eps,
        projection="key",
        tp_group=parallel_state.get_tensor_model_parallel_group(check_initialized=False),
    )
