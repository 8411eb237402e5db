# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""HF <-> Megatron weight mappings and the MiniMax-M2 weight table."""

import dataclasses
from collections import Counter

import pytest
import torch

from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
from megatron.minimax.models.conversion.mappings import (
    FusedQKV,
    GatedFC1,
    MappingContext,
    Rename,
    VocabRows,
    WeightMappingTable,
)
from megatron.minimax.models.minimax_m2.weight_mapping import MINIMAX_M2_WEIGHTS

# 4 query heads in 2 groups, head_dim 1: every row is one head, so row order is head order.
TINY_CTX = MappingContext(
    num_attention_heads=4, num_query_groups=2, head_dim=1, vocab_size=5, padded_vocab_size=8
)
HIDDEN = 3


def _rows(*labels: float) -> torch.Tensor:
    """One row per label, each row ``[label, label + 0.1, label + 0.2]`` (distinct columns too)."""
    return torch.tensor([[label + 0.1 * c for c in range(HIDDEN)] for label in labels])


def _qkv():
    return FusedQKV("qkv", q="q", k="k", v="v")


def _tiny_qkv_weights():
    q = _rows(10, 11, 12, 13)  # q0..q3
    k = _rows(20, 21)  # k0, k1
    v = _rows(30, 31)  # v0, v1
    return q, k, v


class TestFusedQKV:
    def test_rows_are_interleaved_per_query_group(self):
        fused = _qkv().to_megatron(_tiny_qkv_weights(), TINY_CTX)
        # Group 0: q0, q1, k0, v0; group 1: q2, q3, k1, v1.
        assert torch.equal(fused, _rows(10, 11, 20, 30, 12, 13, 21, 31))

    def test_multi_row_heads_stay_contiguous(self):
        ctx = MappingContext(
            num_attention_heads=2, num_query_groups=1, head_dim=2, vocab_size=1, padded_vocab_size=1
        )
        q, k, v = _rows(10, 10.5, 11, 11.5), _rows(20, 20.5), _rows(30, 30.5)
        fused = _qkv().to_megatron((q, k, v), ctx)
        assert torch.equal(fused, _rows(10, 10.5, 11, 11.5, 20, 20.5, 30, 30.5))

    def test_round_trip(self):
        q, k, v = _tiny_qkv_weights()
        mapping = _qkv()
        back = mapping.to_hf(mapping.to_megatron((q, k, v), TINY_CTX), TINY_CTX)
        assert len(back) == 3
        for got, expected in zip(back, (q, k, v)):
            assert torch.equal(got, expected)

    def test_round_trip_with_gqa_and_larger_heads(self):
        ctx = MappingContext(
            num_attention_heads=8, num_query_groups=2, head_dim=4, vocab_size=1, padded_vocab_size=1
        )
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(n, 5, generator=gen) for n in (32, 8, 8))
        mapping = _qkv()
        fused = mapping.to_megatron((q, k, v), ctx)
        # Group 1 starts after 4 q heads + k + v of group 0: its first q head is HF head 4.
        assert torch.equal(fused[24:28], q[16:20])
        assert torch.equal(fused[40:44], k[4:8])
        assert torch.equal(fused[44:48], v[4:8])
        for got, expected in zip(mapping.to_hf(fused, ctx), (q, k, v)):
            assert torch.equal(got, expected)

    def test_tp_shards_hold_whole_groups(self):
        mapping = _qkv()
        fused = mapping.to_megatron(_tiny_qkv_weights(), TINY_CTX)
        assert torch.equal(mapping.shard(fused, 0, 0, 2), _rows(10, 11, 20, 30))
        assert torch.equal(mapping.shard(fused, 0, 1, 2), _rows(12, 13, 21, 31))
        # Each rank's shard is the fused tensor of that rank's own heads and group.
        q, k, v = _tiny_qkv_weights()
        half = MappingContext(
            num_attention_heads=2, num_query_groups=1, head_dim=1, vocab_size=5, padded_vocab_size=8
        )
        for rank in range(2):
            own = (q[2 * rank : 2 * rank + 2], k[rank : rank + 1], v[rank : rank + 1])
            local = mapping.to_megatron(own, half)
            assert torch.equal(mapping.shard(fused, 0, rank, 2), local)

    def test_shard_unshard_round_trip(self):
        mapping = _qkv()
        fused = mapping.to_megatron(_tiny_qkv_weights(), TINY_CTX)
        shards = [mapping.shard(fused, 0, rank, 2) for rank in range(2)]
        assert torch.equal(mapping.unshard(shards, 0), fused)

    def test_shard_refuses_indivisible_dimension(self):
        mapping = _qkv()
        fused = mapping.to_megatron(_tiny_qkv_weights(), TINY_CTX)
        with pytest.raises(ValueError, match="not divisible"):
            mapping.shard(fused, 0, 0, 3)

    def test_wrong_row_counts_are_refused(self):
        q, k, v = _tiny_qkv_weights()
        with pytest.raises(ValueError, match="expected"):
            _qkv().to_megatron((q[:3], k, v), TINY_CTX)


class TestGatedFC1:
    @staticmethod
    def _weights():
        gate = _rows(0, 1, 2, 3)
        up = _rows(100, 101, 102, 103)
        return gate, up

    def test_full_tensor_is_gate_then_up(self):
        gate, up = self._weights()
        full = GatedFC1("fc1", gate="w1", up="w3").to_megatron((gate, up), TINY_CTX)
        assert torch.equal(full, torch.cat([gate, up]))

    def test_rank_shard_is_cat_of_gate_and_up_slices(self):
        gate, up = self._weights()
        mapping = GatedFC1("fc1", gate="w1", up="w3")
        full = mapping.to_megatron((gate, up), TINY_CTX)
        for rank in range(2):
            rows = slice(2 * rank, 2 * rank + 2)
            expected = torch.cat([gate[rows], up[rows]])
            assert torch.equal(mapping.shard(full, 0, rank, 2), expected)
        # Explicitly: rank 1 holds gate rows 2, 3 then up rows 2, 3 (not a plain chunk).
        assert torch.equal(mapping.shard(full, 0, 1, 2), _rows(2, 3, 102, 103))
        assert not torch.equal(mapping.shard(full, 0, 1, 2), full.chunk(2)[1])

    @pytest.mark.parametrize("size", [1, 2, 4])
    def test_shard_unshard_round_trip(self, size):
        gate, up = self._weights()
        mapping = GatedFC1("fc1", gate="w1", up="w3")
        full = mapping.to_megatron((gate, up), TINY_CTX)
        shards = [mapping.shard(full, 0, rank, size) for rank in range(size)]
        assert torch.equal(mapping.unshard(shards, 0), full)

    def test_to_hf_round_trip(self):
        gate, up = self._weights()
        mapping = GatedFC1("fc1", gate="w1", up="w3")
        got_gate, got_up = mapping.to_hf(mapping.to_megatron((gate, up), TINY_CTX), TINY_CTX)
        assert torch.equal(got_gate, gate) and torch.equal(got_up, up)

    def test_shard_refuses_other_dimension(self):
        gate, up = self._weights()
        mapping = GatedFC1("fc1", gate="w1", up="w3")
        with pytest.raises(ValueError, match="dim 0"):
            mapping.shard(torch.cat([gate, up]), 1, 0, 1)

    def test_gate_up_shape_mismatch_is_refused(self):
        gate, up = self._weights()
        with pytest.raises(ValueError, match="gate"):
            GatedFC1("fc1", gate="w1", up="w3").to_megatron((gate, up[:3]), TINY_CTX)


class TestVocabRows:
    def test_pads_with_zero_rows(self):
        rows = _rows(1, 2, 3, 4, 5)
        padded = VocabRows("emb", "embed").to_megatron((rows,), TINY_CTX)
        assert padded.shape == (8, HIDDEN)
        assert torch.equal(padded[:5], rows)
        assert torch.equal(padded[5:], torch.zeros(3, HIDDEN))

    def test_to_hf_slices_padding_off(self):
        mapping = VocabRows("emb", "embed")
        rows = _rows(1, 2, 3, 4, 5)
        padded = mapping.to_megatron((rows,), TINY_CTX)
        padded[5:] = 7.0  # whatever the model learned in padding rows is dropped
        (back,) = mapping.to_hf(padded, TINY_CTX)
        assert torch.equal(back, rows)

    def test_no_padding_needed(self):
        ctx = MappingContext(
            num_attention_heads=1, num_query_groups=1, head_dim=1, vocab_size=5, padded_vocab_size=5
        )
        rows = _rows(1, 2, 3, 4, 5)
        assert torch.equal(VocabRows("emb", "embed").to_megatron((rows,), ctx), rows)

    def test_wrong_row_count_is_refused(self):
        with pytest.raises(ValueError, match="6 rows"):
            VocabRows("emb", "embed").to_megatron((_rows(1, 2, 3, 4, 5, 6),), TINY_CTX)


class TestRename:
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
    def test_keeps_tensor_and_dtype(self, dtype):
        mapping = Rename("a", "b")
        tensor = torch.arange(6, dtype=dtype).reshape(2, 3)
        out = mapping.to_megatron((tensor,), TINY_CTX)
        assert out.dtype == dtype and torch.equal(out, tensor)
        (back,) = mapping.to_hf(out, TINY_CTX)
        assert back.dtype == dtype and torch.equal(back, tensor)

    def test_router_mappings_pin_fp32(self):
        gate, _ = MINIMAX_M2_WEIGHTS.resolve_hf("model.layers.0.block_sparse_moe.gate.weight")
        bias, _ = MINIMAX_M2_WEIGHTS.resolve_hf(
            "model.layers.0.block_sparse_moe.e_score_correction_bias"
        )
        norm, _ = MINIMAX_M2_WEIGHTS.resolve_hf("model.layers.0.input_layernorm.weight")
        assert gate.dtype == torch.float32 and bias.dtype == torch.float32
        assert norm.dtype is None

    def test_stored_dtype(self):
        assert Rename("a", "b", fp8=True).stored_dtype(True) == torch.float8_e4m3fn
        assert Rename("a", "b", fp8=True).stored_dtype(False) == torch.bfloat16
        assert Rename("a", "b", dtype=torch.float32).stored_dtype(True) == torch.float32
        assert Rename("a", "b").stored_dtype(True, default=torch.float16) == torch.float16
        with pytest.raises(ValueError, match="fixed dtype"):
            Rename("a", "b", dtype=torch.float32, fp8=True)

    def test_plain_shard_is_a_chunk(self):
        tensor = torch.arange(12.0).reshape(4, 3)
        mapping = Rename("a", "b")
        assert torch.equal(mapping.shard(tensor, 1, 2, 3), tensor[:, 2:3])
        shards = [mapping.shard(tensor, 0, r, 2) for r in range(2)]
        assert torch.equal(mapping.unshard(shards, 0), tensor)


class TestWeightMappingTable:
    def test_resolves_megatron_expert_name(self):
        name = "decoder.layers.3.mlp.experts.local_experts.5.linear_fc1.weight"
        mapping, fields = MINIMAX_M2_WEIGHTS.resolve_megatron(name)
        assert isinstance(mapping, GatedFC1)
        assert fields == {"layer": 3, "expert": 5}
        assert mapping.hf_names(**fields) == (
            "model.layers.3.block_sparse_moe.experts.5.w1.weight",
            "model.layers.3.block_sparse_moe.experts.5.w3.weight",
        )
        assert mapping.megatron_name(**fields) == name

    @pytest.mark.parametrize("which", ["w1", "w3"])
    def test_resolves_hf_expert_name_to_the_same_mapping(self, which):
        mapping, fields = MINIMAX_M2_WEIGHTS.resolve_hf(
            f"model.layers.12.block_sparse_moe.experts.255.{which}.weight"
        )
        assert isinstance(mapping, GatedFC1)
        assert fields == {"layer": 12, "expert": 255}
        assert mapping.megatron_name(**fields) == (
            "decoder.layers.12.mlp.experts.local_experts.255.linear_fc1.weight"
        )

    @pytest.mark.parametrize(
        "megatron, hf",
        [
            ("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
            ("output_layer.weight", "lm_head.weight"),
            ("decoder.final_layernorm.weight", "model.norm.weight"),
            ("decoder.layers.0.input_layernorm.weight", "model.layers.0.input_layernorm.weight"),
            (
                "decoder.layers.7.self_attention.q_layernorm.weight",
                "model.layers.7.self_attn.q_norm.weight",
            ),
            (
                "decoder.layers.7.self_attention.k_layernorm.weight",
                "model.layers.7.self_attn.k_norm.weight",
            ),
            (
                "decoder.layers.7.self_attention.linear_proj.weight",
                "model.layers.7.self_attn.o_proj.weight",
            ),
            (
                "decoder.layers.7.pre_mlp_layernorm.weight",
                "model.layers.7.post_attention_layernorm.weight",
            ),
            ("decoder.layers.7.mlp.router.weight", "model.layers.7.block_sparse_moe.gate.weight"),
            (
                "decoder.layers.7.mlp.router.expert_bias",
                "model.layers.7.block_sparse_moe.e_score_correction_bias",
            ),
            (
                "decoder.layers.7.mlp.experts.local_experts.2.linear_fc2.weight",
                "model.layers.7.block_sparse_moe.experts.2.w2.weight",
            ),
        ],
    )
    def test_one_to_one_names_resolve_both_ways(self, megatron, hf):
        mapping, fields = MINIMAX_M2_WEIGHTS.resolve_megatron(megatron)
        assert mapping.hf_names(**fields) == (hf,)
        back, back_fields = MINIMAX_M2_WEIGHTS.resolve_hf(hf)
        assert back is mapping and back_fields == fields

    def test_qkv_resolves_to_three_hf_tensors(self):
        mapping, fields = MINIMAX_M2_WEIGHTS.resolve_megatron(
            "decoder.layers.0.self_attention.linear_qkv.weight"
        )
        assert isinstance(mapping, FusedQKV)
        assert mapping.hf_names(**fields) == tuple(
            f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"
        )

    @pytest.mark.parametrize(
        "name",
        [
            "decoder.layers.0.self_attention.linear_qkv.bias",
            "decoder.layers.0.input_layernorm.weight.extra",
            "module.decoder.layers.0.input_layernorm.weight",
            "decoder.layers.x.input_layernorm.weight",
            "mtp.layers.0.enorm.weight",
        ],
    )
    def test_unknown_megatron_name_raises_key_error(self, name):
        with pytest.raises(KeyError, match="no HF mapping"):
            MINIMAX_M2_WEIGHTS.resolve_megatron(name)

    @pytest.mark.parametrize(
        "name",
        [
            # transformers' in-memory names, not the on-disk names
            "model.layers.0.mlp.gate.weight",
            "model.layers.0.mlp.experts.gate_up_proj",
            "model.layers.0.self_attn.q_proj.weight_scale_inv",
            "model.layers.62.input_layernorm.weight.bias",
        ],
    )
    def test_unknown_hf_name_raises_key_error(self, name):
        with pytest.raises(KeyError, match="no Megatron mapping"):
            MINIMAX_M2_WEIGHTS.resolve_hf(name)

    def test_mismatched_pattern_fields_are_refused(self):
        with pytest.raises(ValueError, match="fields"):
            Rename("decoder.layers.{layer}.input_layernorm.weight", "model.norm.weight")
        with pytest.raises(ValueError, match="fields"):
            GatedFC1(
                "decoder.layers.{layer}.mlp.experts.local_experts.{expert}.linear_fc1.weight",
                gate="model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight",
                up="model.layers.{layer}.block_sparse_moe.experts.0.w3.weight",
            )

    def test_table_order_and_fields_of_expand(self):
        table = WeightMappingTable(
            [
                Rename("g", "G"),
                Rename("l.{layer}", "L.{layer}"),
                Rename("e.{layer}.{expert}", "E.{layer}.{expert}"),
            ]
        )
        expanded = [(m.megatron_name(**f), f) for m, f in table.expand(2, 2)]
        assert expanded == [
            ("g", {}),
            ("l.0", {"layer": 0}),
            ("l.1", {"layer": 1}),
            ("e.0.0", {"layer": 0, "expert": 0}),
            ("e.0.1", {"layer": 0, "expert": 1}),
            ("e.1.0", {"layer": 1, "expert": 0}),
            ("e.1.1", {"layer": 1, "expert": 1}),
        ]


@pytest.fixture(scope="module")
def checkpoint_names(tiny_bf16_checkpoint):
    """(config, on-disk tensor names) of the tiny release-format checkpoint."""
    with HFCheckpoint(tiny_bf16_checkpoint) as ckpt:
        return ckpt.config, ckpt.tensor_names()


class TestMinimaxM2TableExhaustive:
    def test_expand_covers_every_checkpoint_tensor_exactly_once(self, checkpoint_names):
        config, names = checkpoint_names
        expanded = MINIMAX_M2_WEIGHTS.expand(
            config["num_hidden_layers"], config["num_local_experts"]
        )
        hf_names = [n for mapping, fields in expanded for n in mapping.hf_names(**fields)]
        duplicates = [n for n, count in Counter(hf_names).items() if count > 1]
        assert duplicates == []
        assert set(hf_names) - set(names) == set()  # nothing the checkpoint lacks
        assert set(names) - set(hf_names) == set()  # nothing the table misses
        # 4 layers x (4 norms + 4 projections + gate + bias + 8 experts x 3) + embed, norm, head.
        assert len(hf_names) == len(names) == 4 * (4 + 4 + 2 + 8 * 3) + 3

    def test_every_checkpoint_tensor_resolves_back_to_its_expansion(self, checkpoint_names):
        config, names = checkpoint_names
        expanded = MINIMAX_M2_WEIGHTS.expand(
            config["num_hidden_layers"], config["num_local_experts"]
        )
        owner = {}
        for mapping, fields in expanded:
            for n in mapping.hf_names(**fields):
                owner[n] = (mapping, fields)
        for name in names:
            mapping, fields = MINIMAX_M2_WEIGHTS.resolve_hf(name)
            assert owner[name][0] is mapping and owner[name][1] == fields

    def test_megatron_names_are_unique_and_resolve(self, checkpoint_names):
        config, _ = checkpoint_names
        expanded = MINIMAX_M2_WEIGHTS.expand(
            config["num_hidden_layers"], config["num_local_experts"]
        )
        megatron_names = [m.megatron_name(**f) for m, f in expanded]
        assert len(set(megatron_names)) == len(megatron_names)
        for (mapping, fields), name in zip(expanded, megatron_names):
            assert MINIMAX_M2_WEIGHTS.resolve_megatron(name) == (mapping, fields)


class TestShardFromHFParts:
    """A rank's piece from the parts of the HF tensors its mapping names (what it reads at
    training start) equals the same rank's share of the full tensor."""

    CTX = MappingContext(
        num_attention_heads=8, num_query_groups=4, head_dim=3, vocab_size=13, padded_vocab_size=16
    )

    @staticmethod
    def _hf_tensors(mapping, ctx, hidden=8):
        gen = torch.Generator().manual_seed(0)
        if isinstance(mapping, FusedQKV):
            kv_rows = ctx.num_query_groups * ctx.head_dim
            rows = [ctx.num_attention_heads * ctx.head_dim, kv_rows, kv_rows]
        elif isinstance(mapping, VocabRows):
            rows = [ctx.vocab_size]
        elif isinstance(mapping, GatedFC1):
            rows = [8, 8]
        else:
            rows = [8]
        return [torch.randn(r, hidden, generator=gen) for r in rows]

    @pytest.mark.parametrize("size", [1, 2, 4])
    @pytest.mark.parametrize(
        "mapping, dim",
        [
            (FusedQKV("qkv", q="q", k="k", v="v"), 0),
            (GatedFC1("fc1", gate="g", up="u"), 0),
            (VocabRows("emb", "e"), 0),
            (Rename("proj", "o"), 1),
            (Rename("proj", "o"), 0),
        ],
        ids=["qkv", "fc1", "vocab", "row-parallel", "column-parallel"],
    )
    def test_piece_from_parts_equals_share_of_full(self, mapping, dim, size):
        hf = self._hf_tensors(mapping, self.CTX)
        full = mapping.to_megatron(hf, self.CTX)
        for rank in range(size):
            expected = mapping.shard(full, dim, rank, size)
            ranges = mapping.hf_ranges(self.CTX, dim, rank, size, tuple(expected.shape))
            parts = [t.narrow(dim, a, b - a) for t, (a, b) in zip(hf, ranges)]
            piece = mapping.shard_from_hf(parts, self.CTX, dim, rank, size)
            assert torch.equal(piece, expected), (rank, size)
            # Each part is a strict share of its HF tensor when the tensor is split.
            if size > 1:
                assert all(b - a < t.shape[dim] for t, (a, b) in zip(hf, ranges))

    def test_vocab_rank_of_padding_only_reads_nothing(self):
        ctx = dataclasses.replace(self.CTX, vocab_size=5)
        mapping = VocabRows("emb", "e")
        ((start, stop),) = mapping.hf_ranges(ctx, 0, 3, 4, (4, 2))
        assert start == stop == 5
        piece = mapping.shard_from_hf([torch.zeros(0, 2)], ctx, 0, 3, 4)
        assert torch.equal(piece, torch.zeros(4, 2))
