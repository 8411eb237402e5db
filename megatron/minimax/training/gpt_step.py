# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""GPT pretraining step functions for megatron-training's ``pretrain()``.

The functions keep the names and semantics of Megatron-LM's ``pretrain_gpt.py``:

* :func:`get_batch`: tensor-parallel rank 0 reads the micro-batch and broadcasts it to its TP
  group, then the sequence is split over context-parallel ranks. Stages that neither embed
  tokens nor compute the loss (nor host MTP layers) read nothing.
* :func:`loss_func`: the masked sum of per-token losses and the number of loss tokens. The
  pipeline schedule divides by the token count (or, with ``--calculate-per-token-loss``, leaves
  the sum and normalises by the global token count in ``finalize_model_grads``). MTP losses, MoE
  auxiliary/z losses and the expert-bias update need nothing here: ``GPTModel`` attaches the MTP
  and MoE losses to the graph with auto-scalers whose scale the schedule sets, and
  ``finalize_model_grads`` updates the expert bias.
* :func:`forward_step`, :func:`train_valid_test_datasets_provider`.

Not supported: packed sequences (``--sft``, ``--dataloader-inter-document-masking``,
``--hybrid-context-parallel``); :func:`train_valid_test_datasets_provider` refuses them.
"""

import json
from functools import partial
from typing import Dict, List, Optional, Tuple

import torch

from megatron.core import mpu
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.rerun_state_machine import get_rerun_state_machine
from megatron.core.transformer.multi_token_prediction import mtp_on_this_rank
from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout
from megatron.core.utils import (
    StragglerDetector,
    get_attr_wrapped_model,
    get_batch_on_this_cp_rank,
    get_batch_on_this_tp_rank,
)
from megatron.training import get_args, get_timers, get_tokenizer
from megatron.training.utils import (
    get_blend_and_blend_per_split,
    is_first_or_last_pipeline_stage,
    print_rank_0,
)

from megatron.minimax.data.sft_dataset import TOKENS_SUFFIX as CHAT_DOCUMENT_SUFFIX
from megatron.minimax.data.sft_dataset import SFTDataset

stimer = StragglerDetector()

SPIKY_LOSS_FACTOR = 10
"""A loss larger than this many times the largest loss seen so far counts as a spike."""

_PACKED_SEQUENCE_FLAGS = ("sft", "dataloader_inter_document_masking", "hybrid_context_parallel")


def _has_mtp_on_this_stage(args, vp_stage: Optional[int]) -> bool:
    layout = args.pipeline_model_parallel_layout
    if isinstance(layout, str):
        layout = PipelineParallelLayerLayout.from_str(
            layout=layout, pipeline_model_parallel_size=args.pipeline_model_parallel_size
        )
    return mtp_on_this_rank(layout, args.mtp_num_layers, ignore_virtual=False, vp_stage=vp_stage)


def get_batch(data_iterator, vp_stage: Optional[int] = None):
    """This stage's ``(tokens, labels, loss_mask, attention_mask, position_ids)``.

    Args:
        data_iterator: the micro-batch iterator (read on tensor-parallel rank 0 only).
        vp_stage: virtual pipeline stage of the model chunk.

    Returns:
        Five tensors, ``[b, s]`` each except ``attention_mask`` (``[b, 1, s, s]`` bool, or None
        when the attention kernel builds the causal mask itself); all None on a stage that needs
        no data, and ``tokens``/``position_ids`` (or ``labels``/``loss_mask``) None on the last
        (or first) of several pipeline stages.
    """
    args = get_args()
    mtp_here = _has_mtp_on_this_stage(args, vp_stage)
    if not (is_first_or_last_pipeline_stage(vp_stage) or mtp_here):
        return None, None, None, None, None

    tp_rank = mpu.get_tensor_model_parallel_rank()
    first_stage = mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    last_stage = mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    batch = {}
    if tp_rank == 0:
        batch = {
            key: value.cuda(non_blocking=True) if torch.is_tensor(value) else value
            for key, value in next(data_iterator).items()
        }
    batch = get_batch_on_this_tp_rank(
        batch,
        has_cu_seqlens=False,
        is_hybrid_cp=False,
        create_attention_mask_in_dataloader=args.create_attention_mask_in_dataloader,
        broadcast_src_rank=mpu.get_tensor_model_parallel_src_rank(),
        broadcast_group=mpu.get_tensor_model_parallel_group(),
        cp_size=args.context_parallel_size,
        tp_rank=tp_rank,
        micro_batch_size=args.micro_batch_size,
        seq_length=args.seq_length,
        mtp_on_this_rank=mtp_here,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        is_pipeline_first_stage=first_stage,
        is_pipeline_last_stage=last_stage,
    )
    batch = get_batch_on_this_cp_rank(
        batch, is_hybrid_cp=False, cp_group=mpu.get_context_parallel_group()
    )
    return (
        batch.get("tokens"),
        batch.get("labels"),
        batch.get("loss_mask"),
        batch.get("attention_mask"),
        batch.get("position_ids"),
    )


def loss_func(
    loss_mask: torch.Tensor, output_tensor: torch.Tensor, model: Optional[torch.nn.Module] = None
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Masked LM loss of one micro-batch.

    Args:
        loss_mask: ``[b, s]``, 1 where a token's loss counts.
        output_tensor: ``[b, s]`` per-token cross-entropy from ``GPTModel(labels=...)``.
        model: the model chunk (unused; kept for the upstream signature).

    Returns:
        ``(loss_sum, num_tokens, {'lm loss': [loss_sum, num_tokens]})``: the schedule divides
        ``loss_sum`` by ``num_tokens`` unless ``calculate_per_token_loss`` is set, and the
        reported pair is averaged over data-parallel ranks by token count.
    """
    args = get_args()
    losses = output_tensor.view(-1).float()
    loss_mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * loss_mask)

    rerun_state_machine = get_rerun_state_machine()
    if args.check_for_nan_in_loss_and_grad:
        # The forward pass is deterministic: any NaN/Inf is a fault, not noise.
        rerun_state_machine.validate_result(
            result=loss,
            rejection_func=torch.isnan,
            message="found NaN in local forward loss calculation",
            tolerance=0.0,
            fatal=True,
        )
        rerun_state_machine.validate_result(
            result=loss,
            rejection_func=torch.isinf,
            message="found Inf in local forward loss calculation",
            tolerance=0.0,
            fatal=True,
        )
    if args.check_for_spiky_loss:
        rerun_state_machine.validate_result(
            result=loss,
            rejection_func=partial(
                rerun_state_machine.is_unexpectedly_large,
                threshold=SPIKY_LOSS_FACTOR,
                context="loss",
            ),
            message="Spiky loss",
            tolerance=0.0,
            fatal=False,
        )

    num_tokens = loss_mask.sum().clone().detach().to(torch.int)
    reporting_loss = torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])
    return loss, num_tokens, {"lm loss": reporting_loss}


def forward_step(data_iterator, model, return_schedule_plan: bool = False):
    """Forward one micro-batch; returns the per-token loss and the function that reduces it."""
    if return_schedule_plan:
        raise NotImplementedError("the combined 1F1B schedule plan is not supported")
    timers = get_timers()

    timers("batch-generator", log_level=2).start()
    with stimer(bdata=True):
        vp_stage = get_attr_wrapped_model(model, "vp_stage")
        tokens, labels, loss_mask, attention_mask, position_ids = get_batch(data_iterator, vp_stage)
    timers("batch-generator").stop()

    with stimer:
        output_tensor = model(
            tokens, position_ids, attention_mask, labels=labels, loss_mask=loss_mask
        )
    return output_tensor, partial(loss_func, loss_mask, model=model)


def is_dataset_built_on_rank(vp_stage: Optional[int] = None) -> bool:
    """Datasets are read on tensor-parallel rank 0 of the stages that consume data."""
    stage_reads_data = is_first_or_last_pipeline_stage(vp_stage) or _has_mtp_on_this_stage(
        get_args(), vp_stage
    )
    return stage_reads_data and mpu.get_tensor_model_parallel_rank() == 0


def core_gpt_dataset_config_from_args(args) -> GPTDatasetConfig:
    """``GPTDatasetConfig`` from the data flags (``--data-path``, ``--split``, ...)."""
    blend, blend_per_split = get_blend_and_blend_per_split(args)
    sequences_per_dataset = None
    if args.per_dataset_sequences_path is not None:
        with open(args.per_dataset_sequences_path) as f:
            sequences_per_dataset = json.load(f)
    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=args.split,
        multiple_validation_sets=args.multiple_validation_sets,
        full_validation=args.full_validation,
        num_dataset_builder_threads=args.num_dataset_builder_threads,
        path_to_cache=args.data_cache_path,
        mmap_bin_files=args.mmap_bin_files,
        tokenizer=get_tokenizer(),
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=args.create_attention_mask_in_dataloader,
        object_storage_cache_path=args.object_storage_cache_path,
        mid_level_dataset_surplus=args.mid_level_dataset_surplus,
        allow_ambiguous_pad_tokens=args.allow_ambiguous_pad_tokens,
        sequences_per_dataset=sequences_per_dataset,
        context_parallel_size=args.context_parallel_size,
        data_parallel_size=args.data_parallel_size,
        sequence_parallel_size=args.tensor_model_parallel_size * args.sequence_parallel,
    )


def _is_chat_data(config) -> bool:
    """Every prefix is SFT chat data (``tools/preprocess_data.py --mode chat`` output), which
    trains only on assistant tokens; mixing chat and plain prefixes is refused."""
    prefixes = []
    for blend in [config.blend] + list(config.blend_per_split or []):
        if blend is not None:
            prefixes += list(blend[0])
    chat = [p.endswith(CHAT_DOCUMENT_SUFFIX) for p in prefixes]
    if any(chat) and not all(chat):
        raise ValueError(
            f"--data-path mixes chat prefixes (*{CHAT_DOCUMENT_SUFFIX}, trained on assistant "
            "tokens only) with plain ones; train them in separate runs or convert both the same way"
        )
    return bool(chat) and all(chat)


def train_valid_test_datasets_provider(
    train_val_test_num_samples: List[int], vp_stage: Optional[int] = None
):
    """Build the train, validation and test datasets: ``MockGPTDataset`` with ``--mock-data``,
    ``SFTDataset`` (loss on assistant tokens only) when every prefix is chat data
    (``*_chat_document``), ``GPTDataset`` otherwise.

    Raises:
        ValueError: for the packed-sequence data modes, which :func:`get_batch` does not handle.
    """
    args = get_args()
    packed = [flag for flag in _PACKED_SEQUENCE_FLAGS if getattr(args, flag, False)]
    if packed:
        raise ValueError(
            f"packed-sequence data ({', '.join('--' + f.replace('_', '-') for f in packed)}) is "
            "not supported by this entry point"
        )
    config = core_gpt_dataset_config_from_args(args)
    if args.mock_data:
        dataset_type = MockGPTDataset
    elif _is_chat_data(config):
        dataset_type = SFTDataset
    else:
        dataset_type = GPTDataset

    print_rank_0("> building train, validation, and test datasets for GPT ...")
    train_ds, valid_ds, test_ds = BlendedMegatronDatasetBuilder(
        dataset_type,
        train_val_test_num_samples,
        partial(is_dataset_built_on_rank, vp_stage=vp_stage),
        config,
    ).build()
    print_rank_0("> finished creating GPT datasets ...")
    return train_ds, valid_ds, test_ds


# pretrain() calls the provider on every rank; is_dataset_built_on_rank picks who reads data.
train_valid_test_datasets_provider.is_distributed = True
