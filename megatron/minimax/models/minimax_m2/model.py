# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Build a MiniMax-M2 ``GPTModel`` or ``HybridModel`` for this process's pipeline stage."""

from typing import List, Optional, Tuple

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron.minimax.models.gpt.gpt_layer_specs import (
    get_gpt_decoder_block_spec,
    get_gpt_mtp_block_spec,
)
from megatron.minimax.models.hybrid.hybrid_layer_specs import get_minimax_m2_hybrid_stack_spec
from megatron.minimax.models.minimax_m2.hf_config import GPTModelArgs, padded_vocab_size
from megatron.minimax.native_core import log_megatron_core_path

try:
    import transformer_engine  # noqa: F401  pylint: disable=unused-import

    HAVE_TE = True
except ImportError:
    HAVE_TE = False


def _stage_defaults(
    config: TransformerConfig,
    use_transformer_engine: Optional[bool],
    pre_process: Optional[bool],
    post_process: Optional[bool],
    vp_stage: Optional[int],
) -> Tuple[bool, bool, bool]:
    """The backend (TE when importable and asked for) and this stage's pre/post process flags
    (first/last pipeline stage), where the caller left them None."""
    if use_transformer_engine is None:
        use_transformer_engine = HAVE_TE and config.transformer_impl == "transformer_engine"
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(
            ignore_virtual=False, vp_stage=vp_stage
        )
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(
            ignore_virtual=False, vp_stage=vp_stage
        )
    return use_transformer_engine, pre_process, post_process


def pipeline_stage_layers(
    num_layers: int,
    pp: int,
    first_stage_layers: Optional[int] = None,
    last_stage_layers: Optional[int] = None,
) -> List[int]:
    """Decoder layers on each of ``pp`` pipeline stages, as megatron-core places them
    (``num_layers_in_first_pipeline_stage``/``num_layers_in_last_pipeline_stage``; the other
    stages share the rest evenly).

    Raises:
        ValueError: one line naming the impossible split (in terms of the tools' ``--pp`` and
            ``--first-stage-layers``/``--last-stage-layers`` flags).
    """
    uneven = (first_stage_layers, last_stage_layers)
    if uneven == (None, None):
        if num_layers % pp:
            raise ValueError(
                f"--pp {pp} does not divide num_layers {num_layers} (give "
                "--first-stage-layers/--last-stage-layers for uneven stages)"
            )
        return [num_layers // pp] * pp
    if pp < 2:
        raise ValueError("--first-stage-layers/--last-stage-layers need --pp >= 2")
    fixed = [n for n in uneven if n is not None]
    if any(n < 1 for n in fixed):
        raise ValueError(f"pipeline stages need at least one layer, got {uneven}")
    middle_stages = pp - len(fixed)
    rest = num_layers - sum(fixed)
    if rest < 0 or (middle_stages == 0 and rest) or (middle_stages and rest % middle_stages):
        raise ValueError(
            f"num_layers {num_layers} minus first/last stage layers {uneven} does not split "
            f"evenly over the other {middle_stages} pipeline stages"
        )
    middle = [rest // middle_stages] * middle_stages if middle_stages else []
    first = [first_stage_layers] if first_stage_layers is not None else []
    last = [last_stage_layers] if last_stage_layers is not None else []
    return first + middle + last


def build_minimax_m2_model(
    config: TransformerConfig,
    model_args: GPTModelArgs,
    *,
    use_transformer_engine: Optional[bool] = None,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    vp_stage: Optional[int] = None,
) -> GPTModel:
    """Build the model chunk of this pipeline stage (Megatron's model-parallel state must be set).

    Args:
        config: from :func:`~megatron.minimax.models.minimax_m2.hf_config.minimax_m2_config_from_hf`.
        model_args: idem.
        use_transformer_engine: TE spec (GPU) or local spec; default: TE when importable.
        pre_process / post_process: embedding / output layer on this stage (default: first / last
            pipeline stage).
        vp_stage: virtual pipeline stage.

    The vocabulary is padded as :func:`~megatron.minimax.models.minimax_m2.hf_config.
    padded_vocab_size` says: to a multiple of 128, the same at every TP size.
    """
    log_megatron_core_path()
    use_transformer_engine, pre_process, post_process = _stage_defaults(
        config, use_transformer_engine, pre_process, post_process, vp_stage
    )
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    block_spec = get_gpt_decoder_block_spec(
        config, use_transformer_engine, vp_stage=vp_stage, pp_rank=pp_rank
    )
    mtp_block_spec = None
    if config.mtp_num_layers:
        mtp_block_spec = get_gpt_mtp_block_spec(
            config, block_spec, use_transformer_engine, vp_stage=vp_stage, pp_rank=pp_rank
        )
    return GPTModel(
        config=config,
        transformer_layer_spec=block_spec,
        vocab_size=padded_vocab_size(model_args.vocab_size, config.tensor_model_parallel_size),
        max_sequence_length=model_args.max_sequence_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=model_args.share_embeddings_and_output_weights,
        position_embedding_type=model_args.position_embedding_type,
        rotary_percent=model_args.rotary_percent,
        rotary_base=model_args.rotary_base,
        mtp_block_spec=mtp_block_spec,
        vp_stage=vp_stage,
    )


def build_minimax_m2_hybrid_model(
    config: TransformerConfig,
    model_args: GPTModelArgs,
    hybrid_layer_pattern: str,
    *,
    use_transformer_engine: Optional[bool] = None,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    vp_stage: Optional[int] = None,
) -> HybridModel:
    """Build the ``HybridModel`` chunk of this pipeline stage (model-parallel state must be set).

    Args:
        config / hybrid_layer_pattern: from
            :func:`~megatron.minimax.models.minimax_m2.hybrid_pattern.minimax_m2_hybrid_config`
            of the GPT config (``num_layers`` counts pattern symbols; the pattern's ``|`` cuts
            are the pipeline stages).
        model_args: as for :func:`build_minimax_m2_model`.
        use_transformer_engine / pre_process / post_process / vp_stage: as for
            :func:`build_minimax_m2_model`.
    """
    log_megatron_core_path()
    use_transformer_engine, pre_process, post_process = _stage_defaults(
        config, use_transformer_engine, pre_process, post_process, vp_stage
    )
    return HybridModel(
        config=config,
        hybrid_stack_spec=get_minimax_m2_hybrid_stack_spec(config, use_transformer_engine),
        vocab_size=padded_vocab_size(model_args.vocab_size, config.tensor_model_parallel_size),
        max_sequence_length=model_args.max_sequence_length,
        hybrid_layer_pattern=hybrid_layer_pattern,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=model_args.share_embeddings_and_output_weights,
        position_embedding_type=model_args.position_embedding_type,
        rotary_percent=model_args.rotary_percent,
        rotary_base=model_args.rotary_base,
        vp_stage=vp_stage,
    )
