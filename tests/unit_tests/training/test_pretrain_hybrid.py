# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""pretrain_hybrid.py's training path on CPU: MiniMax-M2 as a HybridModel, trained, saved,
resumed and exported.

One launch of 2 gloo processes at TP=2 with sequence parallelism runs the path of ``pretrain()``
(``training_harness``) with our ``HybridModelBuilder`` on a two-layer MiniMax-M2-shaped model
(pattern ``*E*E``) and mock data: a bf16 run (fp32 router, MTP depth ``/*E``), and an fp32 run that
trains, saves model and optimizer, trains on, and resumes from the save in a fresh model; and the
tiny FP8 release at TP2 with SP through ``--load-hf-dir`` and through its GPT-layout conversion
(``--load``), whose first losses must be equal. The saved
(hybrid-layout) checkpoint is then exported to HF in BF16 and FP8 with ``convert_mcore_to_hf``, and
transformers' logits on the export are compared with Megatron's on the same weights.
"""

import itertools
import json
import os

import pytest
import torch

from megatron.minimax.testing.distributed import run_in_processes
from megatron.minimax.testing.tiny_checkpoint import tiny_hf_config

from training_harness import (
    CPU_RUN_ARGS,
    TINY_MODEL_ARGS,
    run_train_steps,
    setup_training,
    teardown_training,
    train_iterator,
)

PATTERN = "*E*E"
LR = ["--lr", "3e-3", "--min-lr", "3e-3"]
TP2_SP = ["--tensor-model-parallel-size", "2", "--sequence-parallel"]
_NUM_LAYERS = TINY_MODEL_ARGS.index("--num-layers")
HYBRID_ARGS = (
    TINY_MODEL_ARGS[:_NUM_LAYERS]
    + TINY_MODEL_ARGS[_NUM_LAYERS + 2 :]
    + ["--hybrid-layer-pattern", PATTERN]
)
FP32_RUN = HYBRID_ARGS + CPU_RUN_ARGS + LR + TP2_SP
BF16_MTP_RUN = (
    [a if a != PATTERN else PATTERN + "/*E" for a in HYBRID_ARGS]
    + CPU_RUN_ARGS + LR + TP2_SP + ["--bf16", "--mtp-num-layers", "1"]
)  # fmt: skip
STEPS_BEFORE_SAVE, STEPS_AFTER_SAVE = 3, 3


def _hybrid(model_chunk):
    from megatron.core.utils import unwrap_model

    return unwrap_model(model_chunk)


def _repeated_batches(args, data_iterator):
    """One global batch, repeated: every step sees the same data, so the loss must fall."""
    if data_iterator is None:
        return None
    num_microbatches = args.global_batch_size // (args.micro_batch_size * args.data_parallel_size)
    return itertools.cycle([next(data_iterator) for _ in range(num_microbatches)])


def _describe(hybrid):
    return {
        "class": type(hybrid).__name__,
        "pattern": hybrid.hybrid_layer_pattern,
        "layer_classes": [type(layer).__name__ for layer in hybrid.decoder.layers],
        "qk_norms": sorted(
            {type(m).__name__ for n, m in hybrid.named_modules() if n.endswith("q_layernorm")}
        ),
        "final_norm": type(hybrid.decoder.final_norm).__name__,
        "router_dtypes": {p.dtype for n, p in hybrid.named_parameters() if ".router." in n},
        "other_dtypes": {p.dtype for n, p in hybrid.named_parameters() if ".router." not in n},
        "mtp_layers": len(hybrid.mtp.layers) if hasattr(hybrid, "mtp") else 0,
    }


def _sharded_state(model, optimizer, is_loading=False):
    model_sd = _hybrid(model[0]).sharded_state_dict()
    return {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, is_loading)}


def _bf16_mtp_run(world_size):
    args, model, optimizer, scheduler = setup_training(BF16_MTP_RUN, world_size, "hybrid")
    out = {"model": _describe(_hybrid(model[0]))}
    data = _repeated_batches(args, train_iterator(args))
    out["losses"] = run_train_steps(args, model, optimizer, scheduler, data, 4)
    teardown_training()
    return out


def _fp32_save_resume_run(world_size, ckpt_dir):
    from megatron.core import dist_checkpointing

    args, model, optimizer, scheduler = setup_training(FP32_RUN, world_size, "hybrid")
    data = _repeated_batches(args, train_iterator(args))
    before = run_train_steps(args, model, optimizer, scheduler, data, STEPS_BEFORE_SAVE)
    if torch.distributed.get_rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(_sharded_state(model, optimizer), ckpt_dir)
    after = run_train_steps(args, model, optimizer, scheduler, data, STEPS_AFTER_SAVE)
    teardown_training()

    args, model, optimizer, scheduler = setup_training(
        FP32_RUN + ["--seed", "77"], world_size, "hybrid"
    )
    # A resumed run materialises its optimizer state before loading into it.
    loaded = dist_checkpointing.load(_sharded_state(model, optimizer, is_loading=True), ckpt_dir)
    _hybrid(model[0]).load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    # The same batches as the first run (another seed would draw other mock data); the model
    # was initialised from another seed, so only the load can make its losses equal.
    resumed = run_train_steps(args, model, optimizer, scheduler, data, STEPS_AFTER_SAVE)
    teardown_training()
    return {"before": before, "after": after, "resumed": resumed}


def _release_runs(world_size, hf_dir, converted_dir):
    """The tiny FP8 release at TP2 with SP, filled by ``--load-hf-dir`` and, separately, loaded
    from its ``hf-to-mcore`` conversion (a GPT-layout checkpoint): one step each."""
    from megatron.minimax.training.minimax_m2_flags import Layout, minimax_m2_training_flags

    flags, _, _ = minimax_m2_training_flags(tiny_hf_config(), Layout(tp=2), model="hybrid")
    # The model flags come last: they set the checkpoint's vocabulary.
    argv = CPU_RUN_ARGS + LR + ["--bf16"] + " ".join(flags).split()
    out = {}
    for label, initial_weights in (
        ("hf", ["--load-hf-dir", str(hf_dir)]),
        ("converted", ["--load", str(converted_dir), "--finetune", "--no-load-optim"]),
    ):
        args, model, optimizer, scheduler, hook = setup_training(
            argv + initial_weights, world_size, "hybrid", return_hf_initialization=True
        )
        data = _repeated_batches(args, train_iterator(args))
        out[label] = {
            "loss": run_train_steps(args, model, optimizer, scheduler, data, 1)[0],
            "read": None if hook is None else hook.report.bytes_read,
            "class": type(_hybrid(model[0])).__name__,
        }
        teardown_training()
    return out


def _worker(rank, world_size, ckpt_dir, hf_dir, converted_dir):
    return {
        "bf16_mtp": _bf16_mtp_run(world_size),
        "fp32": _fp32_save_resume_run(world_size, ckpt_dir),
        "release": _release_runs(world_size, hf_dir, converted_dir),
    }


def _saved_weights_logits_worker(rank, world_size, hf_config, ckpt_dir, tokens):
    """Megatron's fp32 logits on the saved weights rounded as the BF16 export rounds them."""
    from megatron.minimax.models.minimax_m2 import parity

    layout = parity.ParallelLayout()
    parity.initialize_layout(layout)
    loaded = parity.build_from_dist_checkpoint(hf_config, ckpt_dir, layout, model="hybrid")
    with torch.no_grad():
        for name, param in loaded.model.named_parameters():
            if not name.endswith("router.weight"):
                param.copy_(param.to(torch.bfloat16).float())
    return parity.megatron_logits(loaded, tokens)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_fp8_checkpoint, converted_fp8_checkpoint):
    ckpt_dir = tmp_path_factory.mktemp("pretrain_hybrid") / "ckpt"
    results = run_in_processes(
        _worker, 2, str(ckpt_dir), tiny_fp8_checkpoint, converted_fp8_checkpoint
    )
    return results, ckpt_dir


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory):
    """A config-only HF reference describing the harness model (2 layers, vocabulary 1000)."""
    directory = tmp_path_factory.mktemp("hf_reference")
    config = tiny_hf_config(num_hidden_layers=2, vocab_size=1000)
    (directory / "config.json").write_text(json.dumps(config))
    return directory, config


@pytest.fixture(scope="module")
def exports(run, hf_reference, tmp_path_factory):
    from megatron.minimax.checkpoint.mcore_to_hf import convert_mcore_to_hf

    _, ckpt_dir = run
    reference_dir, _ = hf_reference
    out = tmp_path_factory.mktemp("exports")
    stats = {
        fmt: convert_mcore_to_hf(ckpt_dir, out / fmt, reference_dir, fmt=fmt)
        for fmt in ("bf16", "fp8")
    }
    return out, stats


class TestHybridModelBuilder:
    def test_builds_the_minimax_m2_hybrid_stack(self, run):
        model = run[0][0]["bf16_mtp"]["model"]
        assert model["class"] == "HybridModel"
        assert model["pattern"] == "*E*E/*E"
        assert model["layer_classes"] == ["TransformerLayer", "MoETransformerLayer"] * 2
        assert model["qk_norms"] == ["FullDimQKRMSNorm"]
        assert model["final_norm"] == "RMSNorm"
        assert model["mtp_layers"] == 1

    def test_router_stays_fp32_under_bf16(self, run):
        model = run[0][0]["bf16_mtp"]["model"]
        assert model["router_dtypes"] == {torch.float32}
        assert model["other_dtypes"] == {torch.bfloat16}


class TestTraining:
    @pytest.mark.parametrize("which", ["bf16_mtp", "fp32"])
    def test_loss_falls_every_step(self, run, which):
        results = run[0][0]
        losses = (
            results[which]["losses"]
            if which == "bf16_mtp"
            else (results["fp32"]["before"] + results["fp32"]["after"])
        )
        assert all(b < a for a, b in zip(losses, losses[1:])), losses
        assert losses[-1] < losses[0] - 0.3, losses

    def test_resumed_run_repeats_the_next_losses_exactly(self, run):
        for rank in run[0]:
            fp32 = rank["fp32"]
            assert len(fp32["resumed"]) == STEPS_AFTER_SAVE
            assert fp32["resumed"] == fp32["after"]


class TestLoadHFDir:
    def test_first_loss_equals_the_converted_checkpoints(self, run):
        for rank in run[0]:
            release = rank["release"]
            assert release["hf"]["class"] == release["converted"]["class"] == "HybridModel"
            assert release["hf"]["read"] > 0 and release["converted"]["read"] is None
            assert release["hf"]["loss"] == release["converted"]["loss"], release
            assert 6.0 < release["hf"]["loss"] < 8.0  # ln(1001) = 6.9 for random weights


class TestExport:
    def test_exports_are_complete_and_name_the_hybrid_layout(self, exports):
        out, stats = exports
        for fmt in ("bf16", "fp8"):
            assert stats[fmt].model_class == "hybrid"
            assert "HybridModel layout" in stats[fmt].summary()
            # Per layer: 2 norms, q/k/v/o, q_norm, k_norm, gate, bias, 8 experts x w1/w2/w3;
            # then the embedding, the final norm and lm_head.
            assert stats[fmt].tensors_written == 2 * (2 + 4 + 2 + 2 + 8 * 3) + 3
        # FP8: q/k/v/o and every expert matrix, as in the release.
        assert stats["fp8"].scales_written == 2 * (4 + 8 * 3)
        assert stats["bf16"].scales_written == 0

    def test_transformers_on_the_bf16_export_matches_megatron(self, run, exports, hf_reference):
        from megatron.minimax.models.minimax_m2.hf_reference import (
            hf_logits,
            load_hf_reference_model,
        )
        from megatron.minimax.models.minimax_m2.parity import LOGITS_ATOL

        _, ckpt_dir = run
        out, _ = exports
        _, config = hf_reference
        tokens = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(2))
        reference = hf_logits(load_hf_reference_model(out / "bf16"), tokens)
        (megatron,) = run_in_processes(
            _saved_weights_logits_worker, 1, config, str(ckpt_dir), tokens
        )
        # Logits of a freshly initialised model (std 0.02) after six steps: small but not
        # trivial, and the export rounded them through bf16 weights.
        assert reference.std() > 0.1 and reference.abs().max() > 0.5
        assert (megatron - reference).abs().max() <= LOGITS_ATOL
