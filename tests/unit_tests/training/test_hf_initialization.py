# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""``pretrain_gpt.py --load-hf-dir``: training straight from the released FP8 checkpoint.

One 2-process launch runs pretrain_gpt.py's training path (``training_harness``) at TP2 with
sequence parallelism and at EP2, each: from the tiny FP8 release with ``--load-hf-dir`` (two
steps, saving after the first with megatron-training's ``save_checkpoint``), from the same
release converted to torch_dist with ``--load`` (one step), and resumed from the saved
checkpoint (one step).
"""

import os

import pytest
import torch

from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
from megatron.minimax.models.minimax_m2.weight_mapping import MINIMAX_M2_WEIGHTS
from megatron.minimax.testing.distributed import run_in_processes
from megatron.minimax.testing.tiny_checkpoint import tiny_hf_config
from megatron.minimax.training.minimax_m2_flags import Layout, minimax_m2_training_flags

from training_harness import CPU_RUN_ARGS, run_train_steps, setup_training, teardown_training

WORLD_SIZE = 2
LAYOUTS = {"TP2xSP": Layout(tp=2), "EP2": Layout(ep=2)}
RUN_ARGS = [a for a in CPU_RUN_ARGS] + ["--bf16", "--lr", "3e-3", "--min-lr", "3e-3"]


def _argv(layout: Layout):
    flags, _, _ = minimax_m2_training_flags(tiny_hf_config(), layout)
    # The model flags come last: they set the checkpoint's vocabulary.
    return RUN_ARGS + " ".join(flags).split()


def _one_batch(args):
    """The same micro-batches at every step and in every run (one global batch, repeated)."""
    import itertools

    from training_harness import train_iterator

    data = train_iterator(args)
    if data is None:  # TP rank > 0 receives the batch by broadcast
        return None
    num_microbatches = args.global_batch_size // (args.micro_batch_size * args.data_parallel_size)
    return itertools.cycle([next(data) for _ in range(num_microbatches)])


def _param(model, name):
    from megatron.core.utils import unwrap_model

    return dict(unwrap_model(model[0]).named_parameters())[name].detach().clone()


def _worker(rank, world_size, hf_dir, converted_dir, save_root):
    from megatron.core import parallel_state
    from megatron.training.checkpointing import save_checkpoint

    out = {}
    for label, layout in LAYOUTS.items():
        argv = _argv(layout)
        save_dir = os.path.join(save_root, label)
        probe = "decoder.layers.1.mlp.router.weight"

        # 1. From the HF release: two steps, saved after the first.
        args, model, optimizer, scheduler, hook = setup_training(
            argv + ["--load-hf-dir", str(hf_dir), "--save", save_dir, "--save-interval", "1"],
            world_size,
            return_hf_initialization=True,
        )
        result = {
            "report": hook.report,
            "ep_rank": parallel_state.get_expert_model_parallel_rank(),
            "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
            "router_dtype": _param(model, probe).dtype,
        }
        data = _one_batch(args)
        result["hf_losses"] = run_train_steps(args, model, optimizer, scheduler, data, 1)
        save_checkpoint(1, model, optimizer, scheduler, num_floating_point_operations_so_far=0)
        result["saved_probe"] = _param(model, probe)
        result["hf_losses"] += run_train_steps(args, model, optimizer, scheduler, data, 1)
        teardown_training()

        # 2. From the converted checkpoint (bf16 torch_dist, release layout): one step.
        args, model, optimizer, scheduler = setup_training(
            argv + ["--load", str(converted_dir), "--finetune", "--no-load-optim"], world_size
        )
        result["converted_losses"] = run_train_steps(
            args, model, optimizer, scheduler, _one_batch(args), 1
        )
        teardown_training()

        # 3. --load of the saved checkpoint resumes (and --load-hf-dir is not read).
        args, model, optimizer, scheduler, hook = setup_training(
            argv + ["--load-hf-dir", str(hf_dir), "--load", save_dir],
            world_size,
            return_hf_initialization=True,
        )
        result["resumed_iteration"] = args.iteration
        result["resumed_hook"] = hook
        result["resumed_probe"] = _param(model, probe)
        result["resumed_losses"] = run_train_steps(
            args, model, optimizer, scheduler, _one_batch(args), 1
        )
        teardown_training()
        out[label] = result
    return out


@pytest.fixture(scope="module")
def runs(tiny_fp8_checkpoint, converted_fp8_checkpoint, tmp_path_factory):
    save_root = tmp_path_factory.mktemp("hf_initialization")
    ranks = run_in_processes(
        _worker, WORLD_SIZE, tiny_fp8_checkpoint, converted_fp8_checkpoint, str(save_root)
    )
    return ranks, save_root


@pytest.fixture(scope="module")
def checkpoint_bytes(tiny_fp8_checkpoint):
    """HF name -> on-disk bytes (with scales); and the names of expert tensors."""
    with HFCheckpoint(tiny_fp8_checkpoint) as ckpt:
        sizes = {name: ckpt.nbytes(name) for name in ckpt.tensor_names()}
    experts = {n for n in sizes if "expert" in MINIMAX_M2_WEIGHTS.resolve_hf(n)[0].fields()}
    return sizes, experts


@pytest.mark.parametrize("label", list(LAYOUTS))
class TestLoadHFDir:
    def test_first_loss_equals_the_converted_checkpoints(self, runs, label):
        ranks, _ = runs
        for rank in ranks:
            result = rank[label]
            assert result["hf_losses"][0] == result["converted_losses"][0], result
            assert 6.0 < result["hf_losses"][0] < 8.0  # ln(1001) = 6.9 for random weights

    def test_router_stays_fp32(self, runs, label):
        ranks, _ = runs
        assert all(rank[label]["router_dtype"] == torch.float32 for rank in ranks)

    def test_resumes_from_the_saved_torch_dist_checkpoint(self, runs, label):
        ranks, save_root = runs
        directory = save_root / label
        assert (directory / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
        assert (directory / "iter_0000001" / ".metadata").is_file()
        assert (
            '"sharded_backend": "torch_dist"'
            in (directory / "iter_0000001" / "metadata.json").read_text()
        )
        for rank in ranks:
            result = rank[label]
            assert result["resumed_iteration"] == 1
            assert result["resumed_hook"] is None  # the HF directory was not read
            assert torch.equal(result["resumed_probe"], result["saved_probe"])
            # Weights and optimizer state restored: the second step is the same step.
            assert result["resumed_losses"][0] == result["hf_losses"][1]


class TestBytesRead:
    def test_each_ep_rank_reads_its_half_of_the_experts(self, runs, checkpoint_bytes):
        ranks, _ = runs
        sizes, experts = checkpoint_bytes
        expert_total = sum(sizes[n] for n in experts)
        read_by_rank = []
        for rank in ranks:
            report = rank["EP2"]["report"]
            read = report.bytes_by_tensor
            read_by_rank.append({n for n in read if n in experts})
            assert sum(read[n] for n in read if n in experts) == expert_total // 2
            # Everything else (attention, router, norms, embedding, head) whole, once.
            dense = {n: b for n, b in read.items() if n not in experts}
            assert dense == {n: sizes[n] for n in sizes if n not in experts}
        # The two ranks' experts are disjoint and together all of them.
        assert not read_by_rank[0] & read_by_rank[1]
        assert read_by_rank[0] | read_by_rank[1] == experts

    def test_tp_ranks_read_only_their_vocabulary_rows(self, runs, checkpoint_bytes):
        ranks, _ = runs
        sizes, _ = checkpoint_bytes
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            by_tp_rank = {r["TP2xSP"]["tp_rank"]: r["TP2xSP"]["report"].bytes_by_tensor[name]
                          for r in ranks}  # fmt: skip
            # 1001 rows padded to 1024: rows 0-511 on rank 0, 512-1000 on rank 1 (64 bf16 each).
            assert by_tp_rank == {0: 512 * 64 * 2, 1: 489 * 64 * 2}
            assert sum(by_tp_rank.values()) == sizes[name]
