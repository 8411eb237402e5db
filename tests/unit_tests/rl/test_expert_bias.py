# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Expert-bias policy: a frozen router's bias survives a training step, an unfrozen one moves.

One 2-process gloo launch (TP1, DP2): each step is a forward/backward through Megatron's DDP
followed by ``finalize_model_grads``, where megatron-core updates the expert bias.
"""

import pytest
import torch

from megatron.minimax.testing.distributed import run_in_processes

UPDATE_RATE = 1e-3
"""megatron-core's default ``moe_router_bias_update_rate``."""


def _biases(model_chunks):
    from megatron.minimax.rl import expert_bias_hf_tensors

    return expert_bias_hf_tensors(model_chunks)


def _worker(rank, world_size, hf_dir):
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2.parity import (
        ParallelLayout,
        build_from_hf,
        initialize_layout,
        next_token_loss,
    )
    from megatron.minimax.rl import freeze_expert_bias, is_expert_bias_frozen

    ckpt = HFCheckpoint(hf_dir)
    layout = ParallelLayout()
    initialize_layout(layout)
    loaded = build_from_hf(ckpt.config, lambda name: ckpt.get(name, torch.float32), layout)
    assert loaded.config.moe_router_bias_update_rate == UPDATE_RATE
    ddp = DistributedDataParallel(
        loaded.config,
        DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
        loaded.model,
    )
    ddp.train()
    generator = torch.Generator().manual_seed(100 + rank)  # different data on each DP rank

    def train_step():
        ddp.zero_grad_buffer()
        tokens = torch.randint(0, ckpt.config["vocab_size"], (2, 16), generator=generator)
        logits = ddp(tokens, torch.arange(16).expand_as(tokens), None)
        next_token_loss(logits[..., : ckpt.config["vocab_size"]], tokens).backward()
        finalize_model_grads([ddp])
        return _biases([ddp])

    out = {"loaded": _biases([ddp])}
    out["frozen_count"] = freeze_expert_bias([ddp])
    out["frozen_flag"] = is_expert_bias_frozen([ddp])
    out["after_frozen_step"] = train_step()
    freeze_expert_bias([ddp], frozen=False)
    out["after_unfrozen_step"] = train_step()
    # The command-line form of the policy: --moe-router-bias-update-rate 0.
    loaded.config.moe_router_bias_update_rate = 0.0
    out["after_rate_zero_step"] = train_step()
    return out


@pytest.fixture(scope="module")
def steps(tiny_bf16_checkpoint):
    return run_in_processes(_worker, 2, tiny_bf16_checkpoint)


@pytest.fixture(scope="module")
def released_biases(tiny_bf16_checkpoint):
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint

    ckpt = HFCheckpoint(tiny_bf16_checkpoint)
    names = [n for n in ckpt.tensor_names() if n.endswith("e_score_correction_bias")]
    return {name: ckpt.get(name, torch.float32) for name in names}


def _max_change(before, after):
    return max((after[name] - before[name]).abs().max().item() for name in before)


class TestExpertBiasPolicy:
    def test_hf_named_biases_are_the_released_fp32_tensors(self, steps, released_biases):
        loaded = steps[0]["loaded"]
        assert sorted(loaded) == sorted(released_biases) and len(loaded) == 4
        for name, bias in loaded.items():
            assert bias.dtype == torch.float32
            assert torch.equal(bias, released_biases[name])

    def test_freeze_marks_every_router(self, steps):
        assert steps[0]["frozen_count"] == 4 and steps[0]["frozen_flag"]

    def test_frozen_bias_is_unchanged_by_a_training_step(self, steps):
        for rank_out in steps:
            for name, bias in rank_out["loaded"].items():
                assert torch.equal(rank_out["after_frozen_step"][name], bias), name

    def test_unfrozen_bias_moves_by_the_update_rate(self, steps):
        before, after = steps[0]["after_frozen_step"], steps[0]["after_unfrozen_step"]
        assert _max_change(before, after) == pytest.approx(UPDATE_RATE, rel=1e-3)
        # Counts are all-reduced over DP: both ranks apply the same update.
        for name in after:
            assert torch.equal(after[name], steps[1]["after_unfrozen_step"][name])

    def test_update_rate_zero_keeps_the_bias(self, steps):
        before, after = steps[0]["after_unfrozen_step"], steps[0]["after_rate_zero_step"]
        for name in before:
            assert torch.equal(after[name], before[name]), name
