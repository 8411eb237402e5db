# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Run ``pretrain_gpt.py``'s training path on CPU, minus ``initialize_megatron`` (CUDA-only).

Each step is megatron-training's own: our ``parse_training_args`` (= ``parse_and_validate_args``
with our flags), ``set_global_variables``, ``setup_model_and_optimizer`` with the config
container that ``pretrain_gpt.py`` builds (so the model comes from our ``GPTModelBuilder`` and the
optimizer from ``get_megatron_optimizer``), our ``train_valid_test_datasets_provider`` on mock data,
and ``train_step`` with our ``forward_step``. Only ``initialize_megatron`` is replaced: the gloo
process group exists already (``run_in_processes``), and the model-parallel groups, the rerun state
machine and the RNG tracker are set up here as it would.
"""

import argparse
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

TINY_MODEL_ARGS = [
    "--num-layers", "2",
    "--hidden-size", "64",
    "--num-attention-heads", "8",
    "--group-query-attention", "--num-query-groups", "4",
    "--kv-channels", "16",
    "--ffn-hidden-size", "48",
    "--num-experts", "8",
    "--moe-ffn-hidden-size", "48",
    "--moe-router-topk", "2",
    "--moe-router-score-function", "sigmoid",
    "--moe-router-enable-expert-bias",
    "--moe-router-dtype", "fp32",
    "--moe-router-keep-in-fp32",
    "--moe-router-load-balancing-type", "none",
    "--moe-token-dispatcher-type", "alltoall",
    "--normalization", "RMSNorm",
    "--norm-epsilon", "1e-6",
    "--qk-layernorm",
    "--qk-layernorm-scope", "layer",
    "--swiglu",
    "--disable-bias-linear",
    "--attention-dropout", "0.0",
    "--hidden-dropout", "0.0",
    "--position-embedding-type", "rope",
    "--rotary-percent", "0.5",
    "--rotary-base", "5000000",
    "--untie-embeddings-and-output-weights",
    "--max-position-embeddings", "64",
]  # fmt: skip
"""A two-layer MiniMax-M2-shaped model (full-dim QK norm, fp32 sigmoid router with bias)."""

CPU_RUN_ARGS = [
    "--seq-length", "32",
    "--micro-batch-size", "2",
    "--global-batch-size", "4",
    "--train-iters", "100",
    "--lr", "1e-2",
    "--min-lr", "1e-2",
    "--lr-decay-style", "constant",
    "--clip-grad", "1.0",
    "--seed", "1234",
    "--mock-data",
    "--tokenizer-type", "NullTokenizer",
    "--vocab-size", "1000",
    "--split", "100,0,0",
    "--transformer-impl", "local",
    "--no-rope-fusion",
    "--no-gradient-accumulation-fusion",
    "--no-masked-softmax-fusion",
    "--no-bias-swiglu-fusion",
    "--no-bias-dropout-fusion",
    "--no-persist-layer-norm",
    "--use-cpu-initialization",
    "--distributed-backend", "gloo",
    "--num-workers", "0",
]  # fmt: skip
"""Data, optimizer and CPU runtime flags: mock data, no fused kernels, CPU initialisation."""


@dataclass
class TrainingSetup:
    """What ``pretrain()`` holds before its first step."""

    args: argparse.Namespace
    model: list
    optimizer: object
    opt_param_scheduler: object
    datasets_provider: Callable
    """``pretrain_gpt.py``'s datasets provider, wrapped by ``--modelopt-recipe`` when given."""
    hf_initialization: Optional[object]
    """The ``--load-hf-dir`` hook after it ran (None when not used)."""


def setup_training(
    argv: List[str],
    world_size: int,
    model_class: str = "gpt",
    return_hf_initialization: bool = False,
):
    """Parse ``argv`` and build model, optimizer and scheduler as ``pretrain()`` does:
    ``pretrain_gpt.py`` (``model_class="gpt"``) or ``pretrain_hybrid.py`` (``"hybrid"``),
    loading ``--load`` and filling from ``--load-hf-dir`` as they do.

    Returns ``(args, model, optimizer, opt_param_scheduler)``, and the ``--load-hf-dir`` hook
    (None when not used) with ``return_hf_initialization``.
    """
    run = build_training_setup(argv, world_size, model_class)
    out = (run.args, run.model, run.optimizer, run.opt_param_scheduler)
    return out + (run.hf_initialization,) if return_hf_initialization else out


def setup_training_with_datasets(argv: List[str], world_size: int, model_class: str = "gpt"):
    """:func:`setup_training`, also returning the datasets provider (``--modelopt-recipe``
    wraps it).

    Returns ``(args, model, optimizer, opt_param_scheduler, datasets_provider)``.
    """
    run = build_training_setup(argv, world_size, model_class)
    return run.args, run.model, run.optimizer, run.opt_param_scheduler, run.datasets_provider


def build_training_setup(argv: List[str], world_size: int, model_class: str = "gpt"):
    """The entry points' wiring: model config, ``--load-hf-dir`` hook, ``--modelopt-recipe``,
    then megatron-training's ``setup_model_and_optimizer``."""
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.enums import ModelType
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.rerun_state_machine import initialize_rerun_state_machine
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
    from megatron.training.global_vars import set_global_variables
    from megatron.training.training import setup_model_and_optimizer

    from megatron.minimax.quantization.qat import configure
    from megatron.minimax.training.arguments import (
        gpt_model_config_from_args,
        hybrid_model_config_from_args,
        parse_training_args,
    )
    from megatron.minimax.training.gpt_step import train_valid_test_datasets_provider
    from megatron.minimax.training.hf_initialization import hf_initialization
    from megatron.minimax.training.optimizer import use_fp32_param_safe_float16_optimizer

    args = parse_training_args(argv, world_size=world_size)
    set_global_variables(args)
    initialize_rerun_state_machine()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        expert_model_parallel_size=args.expert_model_parallel_size,
        expert_tensor_parallel_size=args.expert_tensor_parallel_size,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(args.seed)

    use_fp32_param_safe_float16_optimizer()
    if model_class == "hybrid":
        model_config = hybrid_model_config_from_args(args)
    else:
        model_config = gpt_model_config_from_args(args)
    hf_hook = hf_initialization(args, model_config)
    datasets_provider = configure(args, model_config, train_valid_test_datasets_provider)
    cfg = pretrain_cfg_container_from_args(args, model_config)
    model, optimizer, opt_param_scheduler = setup_model_and_optimizer(
        ModelType.encoder_or_decoder,
        cfg_container=cfg,
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
    )
    return TrainingSetup(args, model, optimizer, opt_param_scheduler, datasets_provider, hf_hook)


def train_iterator(args, datasets_provider=None):
    """The training micro-batch iterator ``pretrain()`` would build (None off TP rank 0), from
    ``datasets_provider`` (default: ``pretrain_gpt.py``'s without ``--modelopt-recipe``)."""
    from megatron.training.datasets.data_samplers import build_pretraining_data_loader

    from megatron.minimax.training.gpt_step import train_valid_test_datasets_provider

    provider = datasets_provider or train_valid_test_datasets_provider
    train_ds, _, _ = provider([args.train_iters * args.global_batch_size, 0, 0])
    loader = build_pretraining_data_loader(train_ds, 0)
    return iter(loader) if loader is not None else None


def run_train_steps(args, model, optimizer, opt_param_scheduler, data_iterator, steps: int):
    """``train_step`` with our ``forward_step``; returns the reported LM loss per step."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config
    from megatron.training.training import train_step

    from megatron.minimax.training.gpt_step import forward_step

    config = get_model_config(model[0])
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    for module in model:
        module.train()
    losses = []
    for iteration in range(steps):
        loss_dict, skipped, *_ = train_step(
            forward_step,
            data_iterator,
            model,
            optimizer,
            opt_param_scheduler,
            config,
            get_forward_backward_func(),
            iteration=iteration,
        )
        assert not skipped
        losses.append(float(loss_dict["lm loss"]) if loss_dict else None)
    return losses


def teardown_training():
    """Undo :func:`setup_training` so the next layout can start in the same process."""
    from megatron.core import parallel_state
    from megatron.core.rerun_state_machine import destroy_rerun_state_machine
    from megatron.training.global_vars import unset_global_variables

    unset_global_variables()
    destroy_rerun_state_machine()
    parallel_state.destroy_model_parallel()
