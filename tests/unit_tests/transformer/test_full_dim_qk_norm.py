# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""FullDimQKRMSNorm against a single-device reference at TP=1/2/4, SP on and off.

The norm under test is the one models are built with: this package's on stock megatron-core, and
megatron-core's own where the native series made it native (``make test-native``).

Each case runs the norm on this rank's heads, reduces the weight gradient with megatron-core's
own ``_allreduce_non_tensor_model_parallel_grads`` (the rule that sums ``q_layernorm`` /
``k_layernorm`` / ``sequence_parallel`` gradients over TP), and compares forward output, input
gradient and weight gradient with a float64 full-width reference.
"""

import pytest
import torch

from megatron.minimax.testing.distributed import run_in_processes

SEQ, BATCH, HEADS, GROUPS, HEAD_DIM, EPS = 5, 2, 8, 4, 16, 1e-6
WORLD_SIZE = 4
FP32_TOL = 2e-6
# (TP, sequence parallel); megatron-core refuses SP without TP.
LAYOUTS = [(1, False), (2, False), (2, True), (4, False), (4, True)]


def _norm_module():
    """The module holding the FullDimQKRMSNorm that models use in this environment."""
    from megatron.minimax.native_core import megatron_core_is_native

    if megatron_core_is_native():
        import megatron.core.transformer.full_dim_qk_norm as qk
    else:
        import megatron.minimax.transformer.full_dim_qk_norm as qk
    return qk


def _reference(x, w, grad_out):
    """float64 full-width RMSNorm over the last two dims; returns (y, dx, dw)."""
    x = x.double().requires_grad_(True)
    w = w.double().requires_grad_(True)
    flat = x.flatten(-2)
    y = (w * flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + EPS)).view_as(x)
    y.backward(grad_out.double())
    return y.detach(), x.grad, w.grad


class _Container(torch.nn.Module):
    """Gives the norm the parameter name SelfAttention gives it, for Megatron's grad rule."""

    def __init__(self, norm, attr):
        super().__init__()
        from megatron.core.distributed import DistributedDataParallelConfig

        self.ddp_config = DistributedDataParallelConfig()
        self.self_attention = torch.nn.Module()
        setattr(self.self_attention, attr, norm)


def _run_case(tp, sp, projection, broken_all_reduce=False):
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.distributed.finalize_model_grads import (
        _allreduce_non_tensor_model_parallel_grads,
    )

    from megatron.minimax.transformer.transformer_config import TransformerConfig

    qk = _norm_module()
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    tp_group = parallel_state.get_tensor_model_parallel_group()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    config = TransformerConfig(
        num_layers=1,
        hidden_size=64,
        num_attention_heads=HEADS,
        num_query_groups=GROUPS,
        kv_channels=HEAD_DIM,
        normalization="RMSNorm",
        qk_layernorm=True,
        qk_layernorm_scope="layer",
        tensor_model_parallel_size=tp,
        sequence_parallel=sp,
        use_cpu_initialization=True,
    )
    heads = HEADS if projection == "query" else GROUPS
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(SEQ, BATCH, heads, HEAD_DIM, generator=gen) * 3.0
    w = torch.rand(heads * HEAD_DIM, generator=gen) + 0.5
    grad_out = torch.randn(SEQ, BATCH, heads, HEAD_DIM, generator=gen)
    ref_y, ref_dx, ref_dw = _reference(x, w, grad_out)

    norm = qk.FullDimQKRMSNorm(config, HEAD_DIM, EPS, projection=projection, tp_group=tp_group)
    with torch.no_grad():
        norm.weight.copy_(w)
    local = heads // tp
    heads_slice = slice(tp_rank * local, (tp_rank + 1) * local)
    x_local = x[:, :, heads_slice].clone().requires_grad_(True)

    if broken_all_reduce:
        # Prior art: a plain all_reduce, which has no backward through the statistic.
        def plain_all_reduce(partial, group):
            total = partial.detach().clone()
            dist.all_reduce(total, group=group)
            return partial + (total - partial.detach())

        original, qk.all_reduce_sum_in_both_directions = (
            qk.all_reduce_sum_in_both_directions,
            plain_all_reduce,
        )
    try:
        y_local = norm(x_local)
        y_local.backward(grad_out[:, :, heads_slice])
    finally:
        if broken_all_reduce:
            qk.all_reduce_sum_in_both_directions = original

    container = _Container(norm, "q_layernorm" if projection == "query" else "k_layernorm")
    norm.weight.main_grad = norm.weight.grad
    _allreduce_non_tensor_model_parallel_grads([container], config, tp_group)
    dw = norm.weight.main_grad

    return {
        "y": (y_local.detach().double() - ref_y[:, :, heads_slice]).abs().max().item(),
        "dx": (x_local.grad.double() - ref_dx[:, :, heads_slice]).abs().max().item(),
        "dw": ((dw.double() - ref_dw).abs().max() / ref_dw.abs().max()).item(),
        "sequence_parallel_tag": getattr(norm.weight, "sequence_parallel", False),
    }


def _all_cases(rank, world_size):
    results = {"module": _norm_module().__name__}
    for tp, sp in LAYOUTS:
        for projection in ("query", "key"):
            results[(tp, sp, projection)] = _run_case(tp, sp, projection)
    for tp in (2, 4):
        results[("broken", tp)] = _run_case(tp, False, "query", broken_all_reduce=True)
    return results


def _count_forward_bytes(rank, world_size):
    """Bytes handed to collectives by one layer's q-norm and k-norm forward at TP=4."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron.minimax.transformer.transformer_config import TransformerConfig

    qk = _norm_module()
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world_size)
    config = TransformerConfig(
        num_layers=1,
        hidden_size=64,
        num_attention_heads=HEADS,
        num_query_groups=GROUPS,
        kv_channels=HEAD_DIM,
        normalization="RMSNorm",
        qk_layernorm=True,
        qk_layernorm_scope="layer",
        tensor_model_parallel_size=world_size,
        sequence_parallel=True,
        use_cpu_initialization=True,
    )
    tp_group = parallel_state.get_tensor_model_parallel_group()
    q_norm = qk.FullDimQKRMSNorm(config, HEAD_DIM, EPS, projection="query", tp_group=tp_group)
    k_norm = qk.FullDimQKRMSNorm(config, HEAD_DIM, EPS, projection="key", tp_group=tp_group)
    sent = {"bytes": 0, "calls": 0}
    collectives = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor")
    originals = {name: getattr(dist, name) for name in collectives}

    def counting(name):
        def wrapper(tensor, *args, **kwargs):
            sent["bytes"] += tensor.numel() * tensor.element_size()
            sent["calls"] += 1
            return originals[name](tensor, *args, **kwargs)

        return wrapper

    for name in collectives:
        setattr(dist, name, counting(name))
    try:
        q = torch.randn(SEQ, BATCH, HEADS // world_size, HEAD_DIM)
        k = torch.randn(SEQ, BATCH, GROUPS // world_size, HEAD_DIM)
        with torch.no_grad():
            q_norm(q)
            k_norm(k)
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return {"bytes_per_token": sent["bytes"] / (SEQ * BATCH), "calls": sent["calls"]}


@pytest.fixture(scope="module")
def case_results():
    return run_in_processes(_all_cases, WORLD_SIZE)


class TestFullDimQKRMSNorm:
    @pytest.mark.parametrize(("tp", "sp"), LAYOUTS)
    @pytest.mark.parametrize("projection", ["query", "key"])
    def test_forward_dx_dw_match_single_device_reference(self, case_results, tp, sp, projection):
        for rank, results in enumerate(case_results):
            r = results[(tp, sp, projection)]
            assert r["y"] <= FP32_TOL, (rank, r)
            assert r["dx"] <= FP32_TOL, (rank, r)
            assert r["dw"] <= FP32_TOL, (rank, r)

    def test_weight_is_not_tagged_sequence_parallel(self, case_results):
        # A sequence_parallel tag would add a second TP sum of an already complete gradient.
        assert not any(
            r["sequence_parallel_tag"]
            for results in case_results
            for key, r in results.items()
            if key != "module" and key[0] != "broken"
        )

    def test_the_norm_under_test_is_the_live_one(self, case_results):
        from megatron.minimax.native_core import megatron_core_is_native

        expected = (
            "megatron.core.transformer.full_dim_qk_norm"
            if megatron_core_is_native()
            else "megatron.minimax.transformer.full_dim_qk_norm"
        )
        assert {results["module"] for results in case_results} == {expected}

    @pytest.mark.parametrize("tp", [2, 4])
    def test_non_differentiable_all_reduce_is_caught(self, case_results, tp):
        # The same checks flag the prior-art bug: forward right, dX wrong.
        r = case_results[0][("broken", tp)]
        assert r["y"] <= FP32_TOL
        assert r["dx"] > 1e-2

    def test_forward_sends_at_most_16_bytes_per_token_per_layer_at_tp4(self):
        counts = run_in_processes(_count_forward_bytes, WORLD_SIZE)
        for c in counts:
            # One fp32 statistic per token for Q and one for K.
            assert c["bytes_per_token"] == 8.0
            assert c["bytes_per_token"] <= 16
            assert c["calls"] == 2
