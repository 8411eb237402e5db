# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""pretrain_gpt.py and pretrain_hybrid.py --modelopt-recipe nvfp4-experts on CPU: quantization-aware
training at TP2 with sequence parallelism and EP2 (ETP1), megatron-training's own checkpoint save
and resume, and the export of the trained checkpoint with its trained scales.

Per model class, one launch of four gloo processes runs pretrain()'s path (see
``training_harness``) on a two-layer MiniMax-M2-shaped model on mock data: quantizers inserted and calibrated by the datasets-provider
hook, a few training steps with NVFP4 fake quantization (this package's CPU backend), a save with
``megatron.training.checkpointing.save_checkpoint``, a fresh setup that resumes from it (the
post-wrap hook restores the quantizers before the load), and ``quantize_to_hf`` on the saved
checkpoint.
"""

import json
import os

import pytest
import torch

from megatron.minimax.testing.distributed import run_in_processes

from training_harness import (
    CPU_RUN_ARGS,
    TINY_MODEL_ARGS,
    run_train_steps,
    setup_training_with_datasets,
    teardown_training,
    train_iterator,
)

STEPS = 4
CALIB_SAMPLES = 8
QAT_RUN = (
    TINY_MODEL_ARGS
    + CPU_RUN_ARGS
    + ["--lr", "3e-3", "--min-lr", "3e-3", "--bf16"]
    + ["--tensor-model-parallel-size", "2", "--sequence-parallel"]
    # Expert FFN 48 split over 2 ranks leaves 24 inputs per w2 piece: not whole NVFP4 groups.
    + ["--expert-tensor-parallel-size", "1"]
    # TP with EP: modelopt refuses it for megatron-core's experts (their amaxes would have no
    # main replica in the checkpoint); this project's quantized experts make it work.
    + ["--expert-model-parallel-size", "2"]
    + ["--modelopt-recipe", "nvfp4-experts", "--modelopt-calib-samples", str(CALIB_SAMPLES)]
)
NVFP4_TENSOR_SCALE = 6.0 * 448.0
MODEL_CLASS_ARGS = {"gpt": [], "hybrid": ["--hybrid-layer-pattern", "*E*E"]}
FIRST_MOE_LAYER = {"gpt": 0, "hybrid": 1}  # a HybridModel layer is attention or MoE


def _unwrapped(model):
    from megatron.core.utils import unwrap_model

    return unwrap_model(model[0])


def _quantizer_state(model):
    """Every amax, plus whether each quantizer is enabled, keyed by module path."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    out = {}
    for name, module in _unwrapped(model).named_modules():
        if isinstance(module, TensorQuantizer) and module.is_enabled:
            out[name] = module.amax.detach().clone()
    return out


def _repeated_batches(args, data_iterator):
    import itertools

    if data_iterator is None:
        return None
    num_microbatches = args.global_batch_size // (args.micro_batch_size * args.data_parallel_size)
    return itertools.cycle([next(data_iterator) for _ in range(num_microbatches)])


def _expert_weights(model):
    return {
        n: p.detach().float().clone()
        for n, p in _unwrapped(model).named_parameters()
        if ".experts." in n and n.endswith(".weight")
    }


def _qat_worker(rank, world_size, root, model_class):
    from megatron.training.checkpointing import save_checkpoint

    from megatron.minimax.models.minimax_m2.parity import ParallelLayout
    from megatron.minimax.quantization.ptq import quantize_to_hf
    from megatron.minimax.quantization.recipes import get_recipe
    from megatron.minimax.testing.tiny_checkpoint import tiny_hf_config

    save = os.path.join(root, "qat")
    run = QAT_RUN + MODEL_CLASS_ARGS[model_class]
    args, model, optimizer, scheduler, provider = setup_training_with_datasets(
        run + ["--save", save, "--save-interval", "1000"], world_size, model_class
    )
    out = {"model_class": model_class, "class": type(_unwrapped(model)).__name__}
    data = train_iterator(args, provider)  # the provider inserts and calibrates the quantizers
    calibrated = _quantizer_state(model)
    out["num_quantizers"] = len(calibrated)
    out["amax_dtypes"] = sorted({str(v.dtype) for v in calibrated.values()})
    out["expert_quantizers_only"] = all(".mlp.experts.local_experts." in n for n in calibrated)
    weights_before = _expert_weights(model)
    out["losses"] = run_train_steps(
        args, model, optimizer, scheduler, _repeated_batches(args, data), STEPS
    )
    trained = _quantizer_state(model)
    out["amax_unchanged_by_training"] = all(torch.equal(trained[k], calibrated[k]) for k in trained)
    trained_weights = _expert_weights(model)
    out["weights_changed"] = all(
        not torch.equal(trained_weights[k], weights_before[k]) for k in weights_before
    )
    save_checkpoint(STEPS, model, optimizer, scheduler, 0)
    teardown_training()

    args, model, optimizer, scheduler, provider = setup_training_with_datasets(
        run + ["--load", save, "--save", save, "--save-interval", "1000"], world_size, model_class
    )
    train_iterator(args, provider)  # must not recalibrate
    restored = _quantizer_state(model)
    out["restored_keys_match"] = set(restored) == set(trained)
    out["restored_bit_exact"] = all(
        torch.equal(restored[k], trained[k]) and restored[k].dtype == trained[k].dtype
        for k in trained
    )
    resumed_weights = _expert_weights(model)
    out["weights_restored"] = all(
        torch.equal(resumed_weights[k], trained_weights[k]) for k in trained_weights
    )
    out["resumed_losses"] = run_train_steps(
        args, model, optimizer, scheduler, _repeated_batches(args, train_iterator(args)), 1
    )
    teardown_training()

    # The first local expert of layer 0: this rank's trained amaxes for the exported scales.
    moe = FIRST_MOE_LAYER[model_class]
    prefix = f"decoder.layers.{moe}.mlp.experts.local_experts.0"
    out["first_local_expert"] = _unwrapped(model).decoder.layers[moe].mlp.local_expert_indices[0]
    out["trained_expert0"] = {
        k[len(prefix) + 1 :]: v for k, v in trained.items() if k.startswith(prefix + ".")
    }
    export_dir = os.path.join(root, "export")
    result = quantize_to_hf(
        tiny_hf_config(num_hidden_layers=2),
        get_recipe("nvfp4-experts"),
        ParallelLayout(tp=2, ep=2, etp=1),
        export_dir,
        load_dir=save,
        params_dtype=torch.float32,
    )
    out["recalibrated"] = result.calibration is not None
    out["export_dir"] = export_dir
    return out


@pytest.fixture(scope="module", params=["gpt", "hybrid"])
def qat(request, tmp_path_factory):
    # The export reads the checkpoint's model class from its keys.
    root = str(tmp_path_factory.mktemp("qat_" + request.param))
    return run_in_processes(_qat_worker, 4, root, request.param)


@pytest.fixture(scope="module")
def exported(qat):
    from safetensors.torch import load_file

    directory = qat[0]["export_dir"]
    index = json.load(open(os.path.join(directory, "model.safetensors.index.json")))
    tensors = {}
    for name in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(os.path.join(directory, name)))
    return tensors


class TestQuantizationAwareTraining:
    def test_quantizers_are_inserted_and_calibrated_before_training(self, qat):
        for rank in qat:
            # 2 layers x 4 local experts (8 at EP2) x (linear_fc1, linear_fc2) x (weight, input),
            # each with an amax before the first step; attention and router stay unquantized.
            assert (
                rank["class"] == {"gpt": "GPTModel", "hybrid": "HybridModel"}[rank["model_class"]]
            )
            assert rank["num_quantizers"] == 2 * 4 * 2 * 2
            assert rank["expert_quantizers_only"]

    def test_amax_is_an_exact_bf16_maximum(self, qat):
        # Calibration takes maxima of bf16 weights and activations: exact in bf16.
        assert qat[0]["amax_dtypes"] == ["torch.bfloat16"]

    def test_loss_falls_with_quantizers_on(self, qat):
        for rank in qat:
            losses = rank["losses"]
            assert all(b < a for a, b in zip(losses, losses[1:])), losses
        assert all(rank["losses"] == qat[0]["losses"] for rank in qat)

    def test_training_keeps_calibrated_scales_and_changes_weights(self, qat):
        for rank in qat:
            assert rank["amax_unchanged_by_training"]
            assert rank["weights_changed"]

    def test_resumed_training_continues_from_the_saved_loss(self, qat):
        # One more step on the same batch, from the restored weights, optimizer and quantizers.
        for rank in qat:
            (resumed,) = rank["resumed_losses"]
            assert resumed < rank["losses"][-1], (resumed, rank["losses"])

    def test_resume_restores_quantizer_state_bit_exact(self, qat):
        for rank in qat:
            assert rank["restored_keys_match"]
            assert rank["restored_bit_exact"]
            assert rank["weights_restored"]

    @pytest.mark.parametrize("rank", [0, 1])  # experts 0 (dense TP rank 0) and 4 (TP rank 1)
    def test_export_keeps_trained_scales_without_recalibrating(self, qat, exported, rank):
        assert not qat[rank]["recalibrated"]
        assert qat[rank]["first_local_expert"] == 4 * rank
        trained = qat[rank]["trained_expert0"]
        prefix = f"model.layers.0.block_sparse_moe.experts.{4 * rank}"
        w13 = trained["linear_fc1.weight_quantizer"].float() / NVFP4_TENSOR_SCALE
        assert torch.equal(exported[prefix + ".w1.weight_scale_2"], w13.reshape(()))
        assert torch.equal(exported[prefix + ".w3.weight_scale_2"], w13.reshape(()))
        x13 = trained["linear_fc1.input_quantizer"].float() / NVFP4_TENSOR_SCALE
        assert torch.equal(exported[prefix + ".w1.input_scale"], x13.reshape(()))
        w2 = trained["linear_fc2.weight_quantizer"].float() / NVFP4_TENSOR_SCALE
        assert torch.equal(exported[prefix + ".w2.weight_scale_2"], w2.reshape(()))
