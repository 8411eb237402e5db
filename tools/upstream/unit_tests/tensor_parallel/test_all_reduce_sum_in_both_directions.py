# Copyright (c) 2026 NVIDIA CORPORATION & AFFILIATES. All rights reserved.

import torch

import megatron.core.parallel_state as ps
from megatron.core.tensor_parallel import (
    all_reduce_sum_in_both_directions,
    reduce_from_tensor_model_parallel_region,
)
from tests.unit_tests.test_utilities import Utils


class TestAllReduceSumInBothDirections:
    def setup_method(self, method):
        Utils.initialize_model_parallel(tensor_model_parallel_size=Utils.world_size)

    def teardown_method(self, method):
        Utils.destroy_model_parallel()

    def _partial(self):
        rank = ps.get_tensor_model_parallel_rank()
        # Rank r holds r + 1; each rank then uses the total with its own weight r + 1.
        partial = torch.full((4,), float(rank + 1), device="cuda", requires_grad=True)
        weight = float(rank + 1)
        return partial, weight

    def test_forward_sums_and_backward_sums_the_gradient(self):
        group = ps.get_tensor_model_parallel_group()
        size = ps.get_tensor_model_parallel_world_size()
        partial, weight = self._partial()
        total = all_reduce_sum_in_both_directions(partial, group)
        expected = size * (size + 1) / 2
        assert torch.equal(total, torch.full_like(total, expected))
        (total * weight).sum().backward()
        # d(sum_s w_s * total) / d(partial_r) = sum_s w_s on every rank.
        assert torch.equal(partial.grad, torch.full_like(partial, expected))

    def test_reduce_from_region_keeps_only_this_ranks_gradient(self):
        # The contrast: reduce_from_tensor_model_parallel_region passes the gradient through.
        partial, weight = self._partial()
        total = reduce_from_tensor_model_parallel_region(partial.clone())
        total.retain_grad()
        (total * weight).sum().backward()
        assert torch.equal(partial.grad, torch.full_like(partial, weight))
