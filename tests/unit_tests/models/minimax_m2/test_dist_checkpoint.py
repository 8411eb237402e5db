# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""torch_dist checkpoints of the MiniMax-M2 model reshard across layouts, the full-dimension QK
norm weights and the fp32 router included."""

import pytest
import torch

from megatron.minimax.models.minimax_m2.parity import ParallelLayout
from megatron.minimax.testing.distributed import run_in_processes

WORLD_SIZE = 4
SAVE_LAYOUT = ParallelLayout(tp=2, ep=2, etp=1)
LOAD_LAYOUTS = [
    ParallelLayout(),
    ParallelLayout(tp=4),
    ParallelLayout(pp=2, ep=2),
    ParallelLayout(ep=4),
]


def _reshard_worker(rank, world_size, hf_dir, ckpt_dir):
    from megatron.core import dist_checkpointing

    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.conversion.model_weights import model_tensors
    from megatron.minimax.models.minimax_m2.parity import build_from_hf, initialize_layout

    hf = HFCheckpoint(hf_dir)

    def read(name):
        return hf.get(name, torch.float32)

    def poisoned(name):
        # A distinct value per tensor, so a load that leaves anything untouched is visible.
        return torch.full(hf.shape(name), float(len(name)), dtype=torch.float32)

    initialize_layout(SAVE_LAYOUT)
    saved = build_from_hf(hf.config, read, SAVE_LAYOUT).model
    dist_checkpointing.save(saved.sharded_state_dict(), ckpt_dir)
    metadata = {}
    if rank == 0:
        from torch.distributed.checkpoint import FileSystemReader

        for key, md in FileSystemReader(ckpt_dir).read_metadata().state_dict_metadata.items():
            if hasattr(md, "size"):
                metadata[key] = (tuple(md.size), md.properties.dtype)

    results = {}
    for layout in LOAD_LAYOUTS:
        initialize_layout(layout, seed=99)
        reference = build_from_hf(hf.config, read, layout).model
        target = build_from_hf(hf.config, poisoned, layout).model
        state = dist_checkpointing.load(target.sharded_state_dict(), ckpt_dir)
        missing, unexpected = target.load_state_dict(state, strict=False)
        mismatched = [
            a.canonical_name
            for a, b in zip(model_tensors(target), model_tensors(reference))
            if a.tensor.dtype != b.tensor.dtype or not torch.equal(a.tensor, b.tensor)
        ]
        results[str(layout)] = {
            "mismatched": mismatched,
            "missing": [k for k in missing if not k.endswith("_extra_state")],
            "unexpected": list(unexpected),
            "num_tensors": len(model_tensors(target)),
        }
    return {"metadata": metadata, "loads": results}


@pytest.fixture(scope="module")
def reshard_results(tiny_bf16_checkpoint, tmp_path_factory):
    ckpt_dir = tmp_path_factory.mktemp("torch_dist")
    return run_in_processes(_reshard_worker, WORLD_SIZE, tiny_bf16_checkpoint, str(ckpt_dir))


class TestDistCheckpointResharding:
    @pytest.mark.parametrize("layout", LOAD_LAYOUTS, ids=str)
    def test_load_at_other_layout_restores_every_tensor(self, reshard_results, layout):
        for rank, result in enumerate(reshard_results):
            loaded = result["loads"][str(layout)]
            assert loaded["num_tensors"] > 0
            assert loaded["mismatched"] == [], (rank, loaded["mismatched"][:5])
            assert loaded["missing"] == [] and loaded["unexpected"] == []

    def test_qk_norm_weights_are_stored_full_width_and_router_fp32(self, reshard_results):
        metadata = reshard_results[0]["metadata"]
        layers, heads, groups, head_dim, experts, hidden = 4, 8, 4, 16, 8, 64
        assert metadata["decoder.layers.self_attention.q_layernorm.weight"][0] == (
            layers,
            heads * head_dim,
        )
        assert metadata["decoder.layers.self_attention.k_layernorm.weight"][0] == (
            layers,
            groups * head_dim,
        )
        assert metadata["decoder.layers.mlp.router.weight"] == (
            (layers, experts, hidden),
            torch.float32,
        )
        assert metadata["decoder.layers.mlp.router.expert_bias"] == (
            (layers, experts),
            torch.float32,
        )
