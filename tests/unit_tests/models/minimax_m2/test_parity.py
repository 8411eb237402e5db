# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Megatron MiniMax-M2 vs transformers' MiniMaxM2ForCausalLM, fp32, on the same weights.

Layouts run in one 4-process gloo launch each (logits) / (gradients).
"""

import pytest
import torch

from megatron.minimax.models.minimax_m2.hf_reference import (
    hf_gradients,
    hf_logits,
    load_hf_reference_model,
)
from megatron.minimax.models.minimax_m2.parity import (
    GRAD_RTOL,
    LOGITS_ATOL,
    LOSS_ATOL,
    ParallelLayout,
    compare_gradients,
    compare_logits,
)
from megatron.minimax.testing.distributed import run_in_processes

WORLD_SIZE = 4
LOGITS_LAYOUTS = [
    ParallelLayout(),
    ParallelLayout(tp=2),
    ParallelLayout(ep=2),
    ParallelLayout(pp=2),
    ParallelLayout(tp=2, ep=2, etp=1),
]
GRADIENT_LAYOUTS = [ParallelLayout(), ParallelLayout(tp=2, sequence_parallel=True)]


def _tokens(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))


def _reader(hf_dir):
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint

    ckpt = HFCheckpoint(hf_dir)
    return ckpt.config, lambda name: ckpt.get(name, torch.float32)


def _logits_worker(rank, world_size, hf_dir, layouts):
    from megatron.minimax.models.minimax_m2.parity import (
        build_from_hf,
        initialize_layout,
        megatron_logits,
    )

    hf_config, read = _reader(hf_dir)
    tokens = _tokens(hf_config["vocab_size"])
    out = {}
    for layout in layouts:
        initialize_layout(layout)
        logits = megatron_logits(build_from_hf(hf_config, read, layout), tokens)
        out[str(layout)] = logits if rank == 0 else None
    return out


def _gradient_worker(rank, world_size, hf_dir, layouts):
    from megatron.minimax.models.minimax_m2.parity import (
        build_from_hf,
        initialize_layout,
        megatron_gradients,
    )

    hf_config, read = _reader(hf_dir)
    tokens = _tokens(hf_config["vocab_size"])
    out = {}
    for layout in layouts:
        initialize_layout(layout)
        loss, grads = megatron_gradients(build_from_hf(hf_config, read, layout), tokens)
        out[str(layout)] = (loss, grads) if rank == 0 else None
    return out


@pytest.fixture(scope="module")
def hf_model(tiny_bf16_checkpoint):
    return load_hf_reference_model(tiny_bf16_checkpoint)


@pytest.fixture(scope="module")
def tokens(hf_model):
    return _tokens(hf_model.config.vocab_size)


@pytest.fixture(scope="module")
def megatron_logits_by_layout(tiny_bf16_checkpoint):
    return run_in_processes(_logits_worker, WORLD_SIZE, tiny_bf16_checkpoint, LOGITS_LAYOUTS)[0]


@pytest.fixture(scope="module")
def megatron_grads_by_layout(tiny_bf16_checkpoint):
    return run_in_processes(_gradient_worker, WORLD_SIZE, tiny_bf16_checkpoint, GRADIENT_LAYOUTS)[0]


class TestLogitsParity:
    @pytest.mark.parametrize("layout", LOGITS_LAYOUTS, ids=str)
    def test_fp32_logits_and_loss_match_hf(self, megatron_logits_by_layout, hf_model, tokens, layout):
        reference = hf_logits(hf_model, tokens)
        result = compare_logits(megatron_logits_by_layout[str(layout)], reference, tokens)
        assert result.max_abs_diff <= LOGITS_ATOL, result
        assert result.loss_diff <= LOSS_ATOL, result

    def test_reference_logits_are_not_trivial(self, hf_model, tokens):
        # Parity at 1e-4 only means something if logits are O(1) and vary across the vocab.
        reference = hf_logits(hf_model, tokens)
        assert reference.std() > 0.5
        assert reference.abs().max() > 2.0


class TestGradientParity:
    @pytest.mark.parametrize("layout", GRADIENT_LAYOUTS, ids=str)
    def test_every_gradient_matches_hf(self, megatron_grads_by_layout, hf_model, tokens, layout):
        loss, grads = megatron_grads_by_layout[str(layout)]
        ref_loss, ref_grads = hf_gradients(hf_model, tokens)
        assert abs(loss - ref_loss) <= LOSS_ATOL
        errors = compare_gradients(grads, ref_grads)
        worst = max(errors, key=errors.get)
        assert errors[worst] <= GRAD_RTOL, (worst, errors[worst])
        # Every parameter of the HF model is covered, including q_norm/k_norm and the router.
        assert any(".q_norm." in n for n in errors) and any(".gate.weight" in n for n in errors)


def test_gloo_refuses_expert_tp_with_ep_and_sequence_parallel():
    # That combination all-gathers uneven token counts over the expert-TP group; gloo's
    # all_gather needs equal sizes, so it is refused up front instead of failing mid-forward.
    hf = dict(
        num_attention_heads=8,
        num_key_value_heads=4,
        num_local_experts=8,
        intermediate_size=64,
        num_hidden_layers=4,
    )
    layout = ParallelLayout(tp=2, ep=2)
    layout.validate(4, hf)
    layout.validate(4, hf, backend="nccl")
    with pytest.raises(ValueError, match="EP=2 with ETP=2 and sequence parallelism cannot run"):
        layout.validate(4, hf, backend="gloo")
    ParallelLayout(tp=2, ep=2, etp=1).validate(4, hf, backend="gloo")
    ParallelLayout(tp=2, ep=2, sequence_parallel=False).validate(4, hf, backend="gloo")
    ParallelLayout(ep=2, etp=2).validate(4, hf, backend="gloo")
