# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Megatron MiniMax-M2 vs transformers' MiniMaxM2ForCausalLM, fp32, on the same weights.

Every layout runs in one 4-process gloo launch: logits of the global batch, then one training
step's gradients with each data-parallel rank fed its own share of that batch (through
megatron-core's pipeline schedule, DDP and ``finalize_model_grads``). The reference is HF on the
whole batch. The sequence length is prime, so sequence parallelism pads internally.
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
BATCH, SEQ_LENGTH = 4, 13  # 4 sequences: one per data-parallel rank at DP4; 13 is prime
LAYOUTS = [
    ParallelLayout(),  # DP4
    ParallelLayout(tp=2),  # sequence parallel, DP2
    ParallelLayout(ep=2),  # DP4, expert DP2
    ParallelLayout(pp=2),  # DP2, 2 micro-batches per rank through 1F1B
    ParallelLayout(pp=2, first_stage_layers=1),  # stages of 1 and 3 layers
    ParallelLayout(tp=2, ep=2, etp=1),  # DP2, expert DP1
]


def _tokens(vocab_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, vocab_size, (BATCH, SEQ_LENGTH), generator=generator)


def _worker(rank, world_size, hf_dir, layouts):
    from megatron.core import parallel_state

    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2.parity import (
        build_from_hf,
        data_parallel_share,
        initialize_layout,
        megatron_gradients,
        megatron_logits,
    )

    ckpt = HFCheckpoint(hf_dir)
    tokens = _tokens(ckpt.config["vocab_size"])
    out = {}
    for layout in layouts:
        initialize_layout(layout)
        read = lambda name: ckpt.get(name, torch.float32)  # noqa: E731
        logits = megatron_logits(build_from_hf(ckpt.config, read, layout), tokens)
        # A fresh model: a training step updates the expert bias.
        loss, grads = megatron_gradients(build_from_hf(ckpt.config, read, layout), tokens)
        # One rank per pipeline stage reports its stage's gradients (the same on its TP/DP peers).
        reports = (
            parallel_state.get_data_parallel_rank() == 0
            and parallel_state.get_tensor_model_parallel_rank() == 0
        )
        out[str(layout)] = {
            "logits": logits if rank == 0 else None,
            "loss": loss,
            "grads": grads if reports else {},
            "share": data_parallel_share(tokens),
        }
    return out


@pytest.fixture(scope="module")
def hf_model(tiny_bf16_checkpoint):
    return load_hf_reference_model(tiny_bf16_checkpoint)


@pytest.fixture(scope="module")
def tokens(hf_model):
    return _tokens(hf_model.config.vocab_size)


@pytest.fixture(scope="module")
def hf_reference(hf_model, tokens):
    loss, grads = hf_gradients(hf_model, tokens)
    return {"logits": hf_logits(hf_model, tokens), "loss": loss, "grads": grads}


@pytest.fixture(scope="module")
def megatron_by_layout(tiny_bf16_checkpoint):
    ranks = run_in_processes(_worker, WORLD_SIZE, tiny_bf16_checkpoint, LAYOUTS)
    out = {}
    for layout in LAYOUTS:
        results = [r[str(layout)] for r in ranks]
        grads = {}
        for result in results:
            overlap = set(grads) & set(result["grads"])
            assert not overlap, f"{layout}: two stages report {sorted(overlap)[:3]}"
            grads.update(result["grads"])
        out[str(layout)] = {
            "logits": results[0]["logits"],
            "losses": [r["loss"] for r in results],
            "grads": grads,
            "shares": [r["share"] for r in results],
        }
    return out


class TestLogitsParity:
    @pytest.mark.parametrize("layout", LAYOUTS, ids=str)
    def test_fp32_logits_and_loss_match_hf(self, megatron_by_layout, hf_reference, tokens, layout):
        logits = megatron_by_layout[str(layout)]["logits"]
        result = compare_logits(logits, hf_reference["logits"], tokens)
        assert result.max_abs_diff <= LOGITS_ATOL, result
        assert result.loss_diff <= LOSS_ATOL, result

    def test_reference_logits_are_not_trivial(self, hf_reference):
        # Parity at 1e-4 only means something if logits are O(1) and vary across the vocab.
        reference = hf_reference["logits"]
        assert reference.std() > 0.5
        assert reference.abs().max() > 2.0


class TestGradientParity:
    @pytest.mark.parametrize("layout", LAYOUTS, ids=str)
    def test_every_gradient_matches_hf_on_the_whole_batch(
        self, megatron_by_layout, hf_reference, layout
    ):
        result = megatron_by_layout[str(layout)]
        for loss in result["losses"]:
            assert abs(loss - hf_reference["loss"]) <= LOSS_ATOL
        # Names must match exactly: every HF parameter, from every pipeline stage, exactly once.
        errors = compare_gradients(result["grads"], hf_reference["grads"])
        worst = max(errors, key=errors.get)
        assert errors[worst] <= GRAD_RTOL, (worst, errors[worst])
        assert any(".q_norm." in n for n in errors) and any(".gate.weight" in n for n in errors)

    @pytest.mark.parametrize("layout", LAYOUTS, ids=str)
    def test_data_parallel_ranks_see_different_tokens(self, megatron_by_layout, tokens, layout):
        # A gradient left out of the data-parallel reduction would then differ from HF's.
        shares = megatron_by_layout[str(layout)]["shares"]
        data_parallel = WORLD_SIZE // (layout.tp * layout.pp)
        distinct = {tuple(s.flatten().tolist()): s for s in shares}
        assert len(distinct) == data_parallel
        # ... and together they are the whole batch, each sequence once.
        rows = sorted(row for share in distinct.values() for row in share.tolist())
        assert rows == sorted(tokens.tolist())

    def test_a_single_rank_share_gives_other_gradients(self, hf_model, hf_reference, tokens):
        # The check above has teeth: HF's gradient on one rank's share is far from the whole
        # batch's.
        _, share_grads = hf_gradients(hf_model, tokens[:1])
        errors = compare_gradients(share_grads, hf_reference["grads"])
        assert max(errors.values()) > 100 * GRAD_RTOL


HF_SIZES = dict(
    num_attention_heads=8,
    num_key_value_heads=4,
    num_local_experts=8,
    intermediate_size=64,
    num_hidden_layers=4,
)
"""The config.json entries ParallelLayout.validate reads."""


def test_gloo_refuses_expert_tp_with_ep_and_sequence_parallel():
    hf = HF_SIZES
    # That combination all-gathers uneven token counts over the expert-TP group; gloo's
    # all_gather needs equal sizes, so it is refused up front instead of failing mid-forward.
    layout = ParallelLayout(tp=2, ep=2)
    layout.validate(4, hf)
    layout.validate(4, hf, backend="nccl")
    with pytest.raises(ValueError, match="EP=2 with ETP=2 and sequence parallelism cannot run"):
        layout.validate(4, hf, backend="gloo")
    ParallelLayout(tp=2, ep=2, etp=1).validate(4, hf, backend="gloo")
    ParallelLayout(tp=2, ep=2, sequence_parallel=False).validate(4, hf, backend="gloo")
    ParallelLayout(ep=2, etp=2).validate(4, hf, backend="gloo")


@pytest.mark.parametrize(
    "layout, message",
    [
        (ParallelLayout(pp=3), "--pp 3 does not divide num_layers 4"),
        (ParallelLayout(pp=3, first_stage_layers=3), "does not split evenly"),
        (ParallelLayout(pp=1, last_stage_layers=2), "need --pp >= 2"),
    ],
)
def test_impossible_pipeline_splits_are_refused(layout, message):
    hf = HF_SIZES
    with pytest.raises(ValueError, match=message):
        layout.validate(12, hf)
    ParallelLayout(pp=3, first_stage_layers=2, last_stage_layers=1).validate(3, hf)
