# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The native patch series: each feature of this package as megatron-core edits, one commit each.

The table is data: a feature is a commit message, the edits it makes (each naming its file and
anchor), the upstream unit tests it carries into a Megatron-LM checkout, and optionally a
statement that shows a tree already has the change. The code the edits insert is lifted from this
package's sources (:mod:`~megatron.minimax.upstream.source_lifting`); only the few lines that
connect it to megatron-core's classes (the glue) are written here.

Order matters: later features use what earlier ones add.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Tuple

from megatron.minimax.upstream import source_lifting as lift
from megatron.minimax.upstream.source_anchor import Anchor
from megatron.minimax.upstream.source_edits import (
    EnsureImport,
    InsertAfter,
    InsertBefore,
    InsertLineAfter,
    NewFile,
    ReplaceStatement,
)

UPSTREAM_TESTS_DIR = Path(__file__).resolve().parents[3] / "tools" / "upstream" / "unit_tests"
"""Our unit tests written to Megatron-LM's conventions, laid out as its ``tests/unit_tests``."""

NEW_FILE_HEADER = "# Copyright (c) 2026 NVIDIA CORPORATION & AFFILIATES. All rights reserved.\n"
"""First line of files the series creates (Megatron-LM's copyright check requires it)."""

CONFIG = "megatron/core/transformer/transformer_config.py"
MAPPINGS = "megatron/core/tensor_parallel/mappings.py"
TP_INIT = "megatron/core/tensor_parallel/__init__.py"
NORM = "megatron/core/transformer/full_dim_qk_norm.py"
ATTENTION = "megatron/core/transformer/attention.py"
ROUTER = "megatron/core/transformer/moe/router.py"
OPTIMIZER = "megatron/core/optimizer/optimizer.py"
HYBRID_BLOCK = "megatron/core/models/hybrid/hybrid_block.py"

OUR_CONFIG = "transformer/transformer_config.py"
OUR_MAPPINGS = "tensor_parallel/mappings.py"
OUR_NORM = "transformer/full_dim_qk_norm.py"
OUR_ROUTER = "transformer/moe/fp32_router.py"
OUR_OPTIMIZER = "training/optimizer.py"

MODULE_RENAMES = {
    "megatron.minimax.tensor_parallel.mappings": "megatron.core.tensor_parallel.mappings"
}
"""Where the imports of lifted modules point upstream."""


@dataclass(frozen=True)
class Feature:
    """One commit of the series.

    Args:
        name: short identifier (``make_native.py --only``).
        subject: commit subject, imperative, as Megatron-LM's history writes them.
        body: commit message body: problem, change, tests.
        edits: builds the edits (lifting reads this package's files when called).
        tests: upstream unit tests to add, paths relative to ``tests/unit_tests``.
        already_upstream: ``(path, anchor)`` of a statement that shows a tree has this change
            from elsewhere (the feature is then skipped, not applied).
    """

    name: str
    subject: str
    body: str
    edits: Callable[[], tuple]
    tests: Tuple[str, ...] = ()
    already_upstream: Optional[Tuple[str, Anchor]] = field(default=None)

    def test_edits(self) -> tuple:
        """``NewFile`` edits adding this feature's upstream unit tests."""
        return tuple(
            NewFile(
                f"tests/unit_tests/{test}", (UPSTREAM_TESTS_DIR / test).read_text(encoding="utf-8")
            )
            for test in self.tests
        )


def _all_reduce_edits() -> tuple:
    return (
        InsertAfter(
            MAPPINGS,
            Anchor("", "class _ReduceFromModelParallelRegion(torch.autograd.Function):"),
            "\n\n" + lift.definition(OUR_MAPPINGS, "_AllReduceSumInBothDirections"),
        ),
        InsertAfter(
            MAPPINGS,
            Anchor("", "def reduce_from_tensor_model_parallel_region(input_, group=None):"),
            "\n\n" + lift.definition(OUR_MAPPINGS, "all_reduce_sum_in_both_directions"),
        ),
        InsertLineAfter(
            TP_INIT,
            Anchor("", "from .mappings import ("),
            "all_gather_last_dim_from_tensor_parallel_region,",
            "all_reduce_sum_in_both_directions,",
        ),
        InsertLineAfter(
            TP_INIT,
            Anchor("", "__all__ = ["),
            '"reduce_from_tensor_model_parallel_region",',
            '"all_reduce_sum_in_both_directions",',
        ),
    )


def _full_dim_norm_edits() -> tuple:
    return (
        NewFile(
            NORM, lift.module_with(OUR_NORM, ["FullDimQKRMSNorm"], NEW_FILE_HEADER, MODULE_RENAMES)
        ),
    )


# Glue: SelfAttention takes the norm from the config instead of the spec for scope 'layer'.
_ATTENTION_CHOOSES_FULL_DIM_NORM = '''\
if self.config.qk_layernorm_scope == "layer":
    # One RMSNorm across all heads of the layer replaces the spec's per-head q/k norms
    # (GPT and hybrid specs alike); it sums its statistic over the layer's TP group.
    submodules = dataclasses.replace(
        submodules,
        q_layernorm=functools.partial(
            FullDimQKRMSNorm, projection="query", tp_group=self.pg_collection.tp
        ),
        k_layernorm=functools.partial(
            FullDimQKRMSNorm, projection="key", tp_group=self.pg_collection.tp
        ),
    )
'''


def _qk_layernorm_scope_edits() -> tuple:
    return (
        InsertAfter(
            CONFIG,
            Anchor("TransformerConfig", "qk_l2_norm: bool = False"),
            "\n" + lift.field(OUR_CONFIG, "TransformerConfig", "qk_layernorm_scope"),
        ),
        InsertAfter(
            CONFIG,
            Anchor(
                "TransformerConfig.__post_init__",
                "if self.multi_latent_attention and self.rotary_interleaved:",
            ),
            "\n"
            + lift.statements_checking(
                OUR_CONFIG, "TransformerConfig.__post_init__", "qk_layernorm_scope"
            ),
        ),
        InsertAfter(
            CONFIG,
            Anchor("TransformerConfig", "def __post_init__(self):"),
            "\n"
            + lift.definition(OUR_CONFIG, "TransformerConfig._validate_layer_scope_qk_layernorm"),
        ),
        EnsureImport(ATTENTION, Anchor("", "import copy"), "import dataclasses"),
        EnsureImport(ATTENTION, Anchor("", "import dataclasses"), "import functools"),
        EnsureImport(
            ATTENTION,
            Anchor(
                "",
                "from megatron.core.tensor_parallel.mappings import "
                "all_gather_last_dim_from_tensor_parallel_region",
            ),
            "from megatron.core.transformer.full_dim_qk_norm import FullDimQKRMSNorm",
        ),
        InsertBefore(
            ATTENTION,
            Anchor("SelfAttention.__init__", "if self.config.qk_l2_norm:"),
            _ATTENTION_CHOOSES_FULL_DIM_NORM + "\n",
        ),
    )


# Glue: the router's casts and gating honour moe_router_keep_in_fp32.
_KEEP_WEIGHT_FP32 = '''\
if not self.config.moe_router_keep_in_fp32:
    self.weight.data = self.weight.data.to(dtype=self.config.params_dtype)
'''
_KEEP_BIAS_FP32 = '''\
if not self.config.moe_router_keep_in_fp32:
    self.bias.data = self.bias.data.to(dtype=self.config.params_dtype)
'''
_FP32_GATING_INPUT = '''\
if self.config.moe_router_keep_in_fp32:
    # The weight is fp32 (see reset_parameters): give the GEMM fp32 operands on both sides.
    input = input.float()
'''


def _router_keep_in_fp32_edits() -> tuple:
    return (
        InsertAfter(
            CONFIG,
            Anchor(
                "TransformerConfig", "moe_router_dtype: Optional[Literal['fp32', 'fp64']] = None"
            ),
            "\n" + lift.field(OUR_CONFIG, "TransformerConfig", "moe_router_keep_in_fp32"),
        ),
        InsertAfter(
            CONFIG,
            Anchor(
                "TransformerConfig.__post_init__",
                "if self.moe_router_enable_expert_bias and self.moe_router_score_function not in (",
            ),
            "\n"
            + lift.statements_checking(
                OUR_CONFIG, "TransformerConfig.__post_init__", "moe_router_keep_in_fp32"
            ),
        ),
        ReplaceStatement(
            ROUTER,
            Anchor(
                "Router.reset_parameters",
                "self.weight.data = self.weight.data.to(dtype=self.config.params_dtype)",
            ),
            _KEEP_WEIGHT_FP32,
        ),
        ReplaceStatement(
            ROUTER,
            Anchor(
                "Router.reset_parameters",
                "self.bias.data = self.bias.data.to(dtype=self.config.params_dtype)",
            ),
            _KEEP_BIAS_FP32,
        ),
        InsertAfter(
            ROUTER,
            Anchor("Router", "def reset_parameters(self):"),
            "\n"
            + lift.definition(OUR_ROUTER, "FP32TopKRouter._tensors_kept_in_fp32")
            + "\n\n"
            + lift.definition(OUR_ROUTER, "FP32TopKRouter._apply"),
        ),
        InsertBefore(
            ROUTER,
            Anchor(
                "Router.gating",
                "logits = router_gating_linear(input, self.weight, self.bias, router_dtype)",
            ),
            _FP32_GATING_INPUT,
        ),
    )


def _optimizer_edits() -> tuple:
    return (
        ReplaceStatement(
            OPTIMIZER,
            Anchor("Float16OptimizerWithFloat16Params", "def sharded_state_dict("),
            lift.definition(OUR_OPTIMIZER, "Float16OptimizerWithFloat16Params.sharded_state_dict"),
        ),
    )


_HYBRID_FINAL_NORM_FIELD = "final_norm: Union[ModuleSpec, type] = TENorm\n"
_HYBRID_FINAL_NORM_BUILD = '''\
self.final_norm = build_module(
    submodules.final_norm,
    config=self.config,
    hidden_size=self.config.hidden_size,
    eps=self.config.layernorm_epsilon,
)
'''


def _hybrid_final_norm_edits() -> tuple:
    return (
        InsertAfter(
            HYBRID_BLOCK,
            Anchor("HybridStackSubmodules", "moe_layer: Union[ModuleSpec, type] = IdentityOp"),
            _HYBRID_FINAL_NORM_FIELD,
        ),
        ReplaceStatement(
            HYBRID_BLOCK,
            Anchor("HybridStack.__init__", "self.final_norm = TENorm("),
            _HYBRID_FINAL_NORM_BUILD,
        ),
    )


SERIES: Tuple[Feature, ...] = (
    Feature(
        name="all-reduce-both-directions",
        subject="tensor_parallel: add all_reduce_sum_in_both_directions",
        body="""\
reduce_from_tensor_model_parallel_region all-reduces in forward and passes the
gradient through unchanged in backward. That is right when each rank consumes
its own copy of the sum, and wrong when the sum is a statistic every rank uses
for different shards (a norm over all heads of a tensor-parallel layer): then
d(loss)/d(partial) is the sum of every rank's d(loss)/d(total).

all_reduce_sum_in_both_directions(partial, group) all-reduces in forward and
all-reduces the incoming gradient in backward. The next commit uses it.""",
        edits=_all_reduce_edits,
        tests=("tensor_parallel/test_all_reduce_sum_in_both_directions.py",),
    ),
    Feature(
        name="full-dim-qk-norm",
        subject="transformer: add FullDimQKRMSNorm, one RMSNorm across all q (or k) heads",
        body="""\
MiniMax-M2 (qk_norm_type "per_layer") and OLMo-2 normalise the whole projected
query (num_attention_heads * kv_channels features) and the whole projected key
(num_query_groups * kv_channels) with one RMS statistic per token, before RoPE.
Megatron's q/k norms are per head.

Under tensor parallelism each rank keeps its own heads: only the per-token
partial sum of squares crosses ranks (one fp32 scalar per token, summed with
all_reduce_sum_in_both_directions so that the input gradient is exact).
Activations are never gathered: at TP=4 with MiniMax-M2's shapes that is 8
bytes per token per layer in forward instead of ~10.7 KB for a gather-based
norm. The weight is the full vector, replicated on every TP rank, each rank
using its slice; finalize_model_grads' existing q_layernorm/k_layernorm TP sum
then yields the exact full gradient on every rank, and the checkpoint tensor is
identical to the HF q_norm/k_norm weight (resharding needs nothing).""",
        edits=_full_dim_norm_edits,
        tests=("transformer/test_full_dim_qk_norm.py",),
    ),
    Feature(
        name="qk-layernorm-scope",
        subject="transformer: add TransformerConfig.qk_layernorm_scope ('head' | 'layer')",
        body="""\
qk_layernorm_scope='layer' makes SelfAttention build FullDimQKRMSNorm for q and
k (one norm over all heads of the layer) instead of the spec's per-head norms,
and hands it the layer's tensor-parallel group. Because the choice is made in
SelfAttention from the config, every spec gets it: the GPT local and TE specs,
MTP layers (which reuse the decoder's layer spec) and hybrid attention layers.
The default 'head' leaves every model unchanged.

__post_init__ checks the option against the rest of the config: it needs
qk_layernorm=True and RMSNorm, excludes qk_l2_norm, zero-centred gamma and MLA,
and needs heads and query groups divisible by TP (with fewer KV heads than TP
ranks the key statistic would count replicated heads). --qk-layernorm-scope
comes from ArgumentGroupFactory like every other field.""",
        edits=_qk_layernorm_scope_edits,
        tests=("transformer/test_qk_layernorm_scope.py",),
    ),
    Feature(
        name="router-keep-in-fp32",
        subject="moe: add moe_router_keep_in_fp32 to keep the router gate fp32 in bf16 models",
        body="""\
moe_router_dtype='fp32' runs the gating GEMM's output in fp32, but the gate
weight itself is cast to params_dtype at construction and again by
Float16Module, and its gradient is rounded to bf16. A model released with an
fp32 gate (MiniMax-M2) then trains with a different router than the one it is
served with: near-tied experts flip.

moe_router_keep_in_fp32=True (requires moe_router_dtype='fp32') keeps the gate
weight and bias fp32: reset_parameters skips the cast, Router._apply leaves the
router's fp32 tensors alone under dtype conversions (device moves still
apply), and gating feeds the GEMM an fp32 input, so the weight gradient is fp32.
DDP gives the fp32 weight its own buffer and the mixed-precision optimizer
steps it in place. It is a separate field because it changes the checkpoint
dtype of the gate and the optimizer state layout of existing fp32-router runs.

Router._apply also keeps the router's fp32 buffers (expert bias, token
counters) fp32 for every router: a bf16 local_tokens_per_expert saturates at
256 increments per value step and stalls the expert-bias update.""",
        edits=_router_keep_in_fp32_edits,
        tests=("transformer/moe/test_router_keep_in_fp32.py",),
    ),
    Feature(
        name="float16-optimizer-fp32-params",
        subject="optimizer: map optimizer states of fp32 params in a float16 model correctly",
        body="""\
Float16OptimizerWithFloat16Params.sharded_state_dict mapped optimizer-state ids
to model parameters by enumerating the float16 parameters only, while torch
numbers states over all parameters of param_groups, where fp32 parameters
(optimized in place) sit between the fp32 main copies. Every id after the first
fp32 parameter pointed at the wrong tensor: the save failed with a shape
assertion or, with matching shapes, wrote states under the wrong keys.

Build the map in the optimizer's own order, mapping each main copy back to its
model parameter and each fp32 parameter to itself, and convert
fp32_from_fp16_params with the ids of main copies only. With no fp32 parameter
the result is unchanged.""",
        edits=_optimizer_edits,
        tests=("optimizer/test_float16_optimizer_fp32_params.py",),
        already_upstream=(
            OPTIMIZER,
            Anchor(
                "Float16OptimizerWithFloat16Params.sharded_state_dict",
                "def model_params_in_optimizer_order():",
            ),
        ),
    ),
    Feature(
        name="hybrid-final-norm-spec",
        subject="hybrid: build HybridStack's final norm from its spec",
        body="""\
HybridStack built its final norm as TENorm unconditionally, so a hybrid model
could not be built without Transformer Engine even with a local layer spec.
HybridStackSubmodules gets a final_norm field (default TENorm, so existing
specs are unchanged) and HybridStack builds it with build_module.""",
        edits=_hybrid_final_norm_edits,
        tests=("models/test_hybrid_final_norm_spec.py",),
    ),
)
