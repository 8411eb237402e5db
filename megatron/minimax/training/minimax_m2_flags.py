# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Megatron command-line flags for a MiniMax-M2-family ``config.json``, generated, never hand-kept.

:func:`minimax_m2_training_flags` builds the model with
:func:`~megatron.minimax.models.minimax_m2.hf_config.minimax_m2_config_from_hf`, then writes one
flag for every *architecture field*: each ``CONFIG_MAPPING`` field, plus every
``TransformerConfig`` field whose value differs from what ``pretrain_gpt.py`` would produce without
the flag (a parse of a minimal command line). Flag names come from the training parser's own
actions (``dest`` == field name), with the few renames megatron-training makes
(``--num-experts``, ``--swiglu``, ``--group-query-attention``). The output is then parsed back
with the training parser and must reproduce every architecture field, or the function raises.

Not architecture (:data:`NON_ARCHITECTURE_FIELDS`): the parallel layout (emitted separately),
kernel fusions, dtypes and pipeline plumbing, which the training command chooses.

Vocabulary: megatron pads the vocabulary to a multiple of ``make_vocab_size_divisible_by * TP``.
The flags use ``--make-vocab-size-divisible-by 128/TP``
(:func:`~megatron.minimax.models.minimax_m2.hf_config.make_vocab_size_divisible_by`), so the model
has :func:`~megatron.minimax.models.minimax_m2.hf_config.padded_vocab_size` rows at every TP that
divides 128: the same as checkpoints converted by ``convert_minimax_m2.py`` (so they load at any
layout), and exactly the released 200,064 (= 128 * 1563), unpadded. Padded rows would be extra
classes in the softmax (zero rows, logit 0) and make the training loss differ from the released
model's; vocabularies that are not a multiple of 128, like the tiny test models', get them.
With a real tokenizer megatron pads the *tokenizer's* size (``--vocab-size`` serves
``NullTokenizer``): any tokenizer size in (199,936, 200,064] gives exactly 200,064 rows.
"""

import argparse
import dataclasses
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from megatron.training.arguments import add_megatron_arguments
from megatron.training.vocab_utils import calculate_padded_vocab_size

from megatron.minimax.models.minimax_m2.hf_config import (
    CONFIG_MAPPING,
    GPTModelArgs,
    load_hf_config,
    make_vocab_size_divisible_by,
    minimax_m2_config_from_hf,
    padded_vocab_size,
)
from megatron.minimax.models.minimax_m2.hybrid_pattern import minimax_m2_hybrid_config
from megatron.minimax.models.minimax_m2.model import pipeline_stage_layers
from megatron.minimax.training.arguments import (
    add_minimax_args,
    gpt_model_config_from_args,
    hybrid_model_config_from_args,
    parse_training_args,
)
from megatron.minimax.training.model_builder import HAVE_TE
from megatron.minimax.transformer.transformer_config import TransformerConfig

MAX_VOCAB_DIVISOR = 128
"""Megatron's default ``--make-vocab-size-divisible-by``: the largest divisor we choose."""

LAYOUT_FIELDS = (
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "expert_model_parallel_size",
    "expert_tensor_parallel_size",
    "sequence_parallel",
    "num_layers_in_first_pipeline_stage",
    "num_layers_in_last_pipeline_stage",
)
"""``TransformerConfig`` fields of the parallel layout, emitted as layout flags."""

NON_ARCHITECTURE_FIELDS = frozenset(
    {
        # Parallel layout and its derived bookkeeping.
        *LAYOUT_FIELDS,
        "tensor_parallel_num_weight_shards",
        "expert_tensor_parallel_num_weight_shards",
        "cp_comm_type",
        "pipeline_dtype",
        "deallocate_pipeline_outputs",
        "microbatch_group_size_per_vp_stage",
        # Kernel choices with the same math.
        "transformer_impl",
        "gradient_accumulation_fusion",
        "bias_activation_fusion",
        "bias_dropout_fusion",
        "masked_softmax_fusion",
        "persist_layer_norm",
        # Initialisation (functions of init_method_std and num_layers) and runtime knobs.
        "init_method",
        "output_layer_init_method",
        "embedding_init_method",
        "use_cpu_initialization",
        "inference_sampling_seed",
    }
)
"""``TransformerConfig`` fields that the training command, not the checkpoint, decides."""

# Flags whose training-parser ``dest`` is not the TransformerConfig field name.
_RENAMED_FLAGS = {"num_moe_experts": "--num-experts"}

_SHELL_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.+\-=/:,]+$")


@dataclasses.dataclass(frozen=True)
class Layout:
    """A parallel layout: tensor, pipeline, expert and expert-tensor parallel sizes."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: Optional[int] = None
    """Expert tensor parallel size; None means Megatron's default, equal to ``tp``."""
    first_stage_layers: Optional[int] = None
    """Decoder layers on the first pipeline stage (uneven PP), else an even split."""
    last_stage_layers: Optional[int] = None
    """Decoder layers on the last pipeline stage (uneven PP), else an even split."""

    @property
    def expert_tp(self) -> int:
        return self.tp if self.etp is None else self.etp

    @property
    def min_world_size(self) -> int:
        """Smallest GPU count holding both the dense (TP x PP) and the expert (ETP x EP x PP)
        grids."""
        return self.pp * math.lcm(self.tp, self.ep * self.expert_tp)

    def config_overrides(self) -> Dict[str, Any]:
        """The ``TransformerConfig`` layout fields (SP on with TP: MoE training needs it)."""
        overrides = dict(
            tensor_model_parallel_size=self.tp,
            pipeline_model_parallel_size=self.pp,
            expert_model_parallel_size=self.ep,
            expert_tensor_parallel_size=self.expert_tp,
            sequence_parallel=self.tp > 1,
        )
        if self.pp > 1:
            # Required with PP; the training command sets it from the parameter dtype.
            overrides["pipeline_dtype"] = torch.float32
        if self.first_stage_layers is not None:
            overrides["num_layers_in_first_pipeline_stage"] = self.first_stage_layers
        if self.last_stage_layers is not None:
            overrides["num_layers_in_last_pipeline_stage"] = self.last_stage_layers
        return overrides


def check_layout(
    config: TransformerConfig, vocab_size: int, layout: Layout, num_gpus: Optional[int] = None
) -> None:
    """Refuse a layout this model cannot run with, naming the violated constraint.

    Args:
        config: the model's config (any layout; only sizes are read).
        vocab_size: the unpadded vocabulary.
        layout: the layout to check.
        num_gpus: the world size, if known.

    Raises:
        ValueError: one line naming the first violated constraint.
    """
    for name in ("tp", "pp", "ep"):
        if getattr(layout, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(layout, name)}")
    if layout.expert_tp < 1:
        raise ValueError(f"--etp must be >= 1, got {layout.expert_tp}")
    checks = [
        ("num_attention_heads", config.num_attention_heads, "--tp", layout.tp),
        ("num_query_groups (KV heads)", config.num_query_groups, "--tp", layout.tp),
    ]
    if config.num_moe_experts:
        checks += [
            ("num_moe_experts", config.num_moe_experts, "--ep", layout.ep),
            ("moe_ffn_hidden_size", config.moe_ffn_hidden_size, "--etp", layout.expert_tp),
        ]
    for what, value, flag, size in checks:
        if value % size:
            raise ValueError(f"{flag} {size} does not divide {what} {value}")
    make_vocab_size_divisible_by(layout.tp)  # TP must divide the padding multiple
    pipeline_stage_layers(
        config.num_layers, layout.pp, layout.first_stage_layers, layout.last_stage_layers
    )
    if num_gpus is not None:
        dense, expert = layout.tp * layout.pp, layout.expert_tp * layout.ep * layout.pp
        if num_gpus < 1 or num_gpus % dense:
            raise ValueError(f"--num-gpus {num_gpus} is not a multiple of TP x PP = {dense}")
        if num_gpus % expert:
            raise ValueError(f"--num-gpus {num_gpus} is not a multiple of ETP x EP x PP = {expert}")


def vocab_size_divisor(vocab_size: int, tp: int) -> int:
    """``--make-vocab-size-divisible-by`` that gives :func:`padded_vocab_size` rows at TP ``tp``."""
    return make_vocab_size_divisible_by(tp)


def required_run_flags(model_args: GPTModelArgs) -> List[str]:
    """The non-architecture flags every ``pretrain_gpt.py`` command line needs, for parsing one
    here (``NullTokenizer``; without TE: local modules and no TE RoPE kernel)."""
    seq_length = min(4096, model_args.max_sequence_length)
    command = [
        "--seq-length", str(seq_length),
        "--micro-batch-size", "1",
        "--tokenizer-type", "NullTokenizer",
    ]  # fmt: skip
    if not HAVE_TE:
        command += ["--transformer-impl", "local", "--no-rope-fusion"]
    return command


def _bare_command(config: TransformerConfig, model_args: GPTModelArgs) -> List[str]:
    """The smallest command line that builds a model of this size, without our flags."""
    return required_run_flags(model_args) + [
        "--num-layers", str(config.num_layers),
        "--hidden-size", str(config.hidden_size),
        "--num-attention-heads", str(config.num_attention_heads),
        "--max-position-embeddings", str(model_args.max_sequence_length),
        "--vocab-size", str(model_args.vocab_size),
    ]  # fmt: skip


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _flags_for_field(
    name: str, value: Any, config: TransformerConfig, actions: Dict[str, argparse.Action]
) -> List[str]:
    if name == "num_query_groups":
        return ["--group-query-attention", "--num-query-groups", str(value)]
    if name in ("gated_linear_unit", "activation_func"):
        if config.gated_linear_unit and config.activation_func is F.silu:
            return ["--swiglu"]
        raise ValueError(
            f"no training flag gives gated_linear_unit={config.gated_linear_unit}, "
            f"activation_func={config.activation_func!r}"
        )
    if name in _RENAMED_FLAGS:
        return [] if value is None else [_RENAMED_FLAGS[name], _format_value(value)]
    action = actions.get(name)
    if action is None:
        raise ValueError(f"no training flag sets TransformerConfig.{name}")
    option = action.option_strings[0]
    if isinstance(action, argparse._StoreTrueAction):
        return [option] if value else []
    if isinstance(action, argparse._StoreFalseAction):
        return [] if value else [option]
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [option] + [_format_value(v) for v in value]
    return [option, _format_value(value)]


def _training_parser_actions() -> Dict[str, argparse.Action]:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_megatron_arguments(parser)
    add_minimax_args(parser)
    actions = {}
    for action in parser._actions:
        actions.setdefault(action.dest, action)
    return actions


def architecture_fields(config: TransformerConfig, bare: TransformerConfig) -> List[str]:
    """``CONFIG_MAPPING`` fields, then every other field that ``config`` sets differently from
    the bare command line's config, minus :data:`NON_ARCHITECTURE_FIELDS`."""
    names = []
    for _, field_name, _ in CONFIG_MAPPING:
        if field_name not in names:
            names.append(field_name)
    for field in dataclasses.fields(config):
        if field.name in names or field.name in NON_ARCHITECTURE_FIELDS:
            continue
        if getattr(config, field.name) != getattr(bare, field.name):
            names.append(field.name)
    return names


def config_from_command(argv: Sequence[str], world_size: int = 1, model: str = "gpt"):
    """``(TransformerConfig, model config)`` that ``pretrain_gpt.py`` (``model="gpt"``,
    ``GPTModelConfig``) or ``pretrain_hybrid.py`` (``"hybrid"``, ``HybridModelConfig``) builds
    from ``argv``."""
    args = parse_training_args(list(argv), world_size=world_size)
    if model == "hybrid":
        model_config = hybrid_model_config_from_args(args)
    else:
        model_config = gpt_model_config_from_args(args)
    return model_config.transformer, model_config


def compare_configs(
    expected: TransformerConfig, actual: TransformerConfig, names: Sequence[str]
) -> List[str]:
    """``'field: expected != actual'`` for each differing field of ``names``."""
    return [
        f"{name}: {getattr(expected, name)!r} != {getattr(actual, name)!r}"
        for name in names
        if getattr(expected, name) != getattr(actual, name)
    ]


# Fields a hybrid model takes from --hybrid-layer-pattern instead of their own flags.
_HYBRID_PATTERN_FIELDS = frozenset(
    {
        "num_layers",
        "mtp_num_layers",
        "num_layers_in_first_pipeline_stage",
        "num_layers_in_last_pipeline_stage",
    }
)
_HYBRID_PATTERN_TOKEN = re.compile(r"^[*E|/]+$")


def minimax_m2_training_flags(
    hf_config, layout: Layout = Layout(), mtp_num_layers: Optional[int] = None, model: str = "gpt"
) -> Tuple[List[str], TransformerConfig, GPTModelArgs]:
    """Training flags for a MiniMax-M2-family HF config at ``layout``.

    Args:
        hf_config: ``config.json`` contents, or a path to it or to its directory.
        layout: the parallel layout (emitted as flags, and deciding the vocabulary divisor).
        mtp_num_layers: MTP layers (None: none; the releases ship no MTP weights).
        model: ``"gpt"`` (``pretrain_gpt.py``) or ``"hybrid"`` (``pretrain_hybrid.py``): the
            hybrid flags carry ``--hybrid-layer-pattern`` (``*E`` per layer, ``|`` between
            pipeline stages, ``/*E`` per MTP depth) instead of ``--num-layers``,
            ``--mtp-num-layers`` and the uneven-stage flags.

    Returns:
        ``(flags, config, model_args)``: the command-line tokens (one flag and its values per
        group; shell-safe except the hybrid pattern, whose ``*`` and ``|`` a shell must not
        expand), and the config they reproduce.

    Raises:
        ValueError: an unsupported config or an impossible layout.
        RuntimeError: the generated flags do not reproduce the config (a bug to report).
    """
    if model not in ("gpt", "hybrid"):
        raise ValueError(f"model must be 'gpt' or 'hybrid', got {model!r}")
    hf = load_hf_config(hf_config)
    config, model_args = minimax_m2_config_from_hf(hf, mtp_num_layers=mtp_num_layers)
    check_layout(config, model_args.vocab_size, layout)
    config, model_args = minimax_m2_config_from_hf(
        hf, mtp_num_layers=mtp_num_layers, **layout.config_overrides()
    )
    pattern = None
    if model == "hybrid":
        config, pattern = minimax_m2_hybrid_config(config)

    bare, _ = config_from_command(_bare_command(config, model_args))
    actions = _training_parser_actions()
    fields = architecture_fields(config, bare)
    if pattern is not None:
        fields = [name for name in fields if name not in _HYBRID_PATTERN_FIELDS]

    flags: List[List[str]] = []
    for name in fields:
        if name == "activation_func" and "gated_linear_unit" in fields:
            continue  # --swiglu covers both
        tokens = _flags_for_field(name, getattr(config, name), config, actions)
        if tokens:
            flags.append(tokens)
    if pattern is not None:
        flags.append(["--hybrid-layer-pattern", pattern])
    flags += [
        ["--position-embedding-type", model_args.position_embedding_type],
        ["--rotary-percent", _format_value(model_args.rotary_percent)],
        ["--rotary-base", str(model_args.rotary_base)],
        ["--max-position-embeddings", str(model_args.max_sequence_length)],
        ["--vocab-size", str(model_args.vocab_size)],
    ]
    divisor = vocab_size_divisor(model_args.vocab_size, layout.tp)
    flags += [["--make-vocab-size-divisible-by", str(divisor)]]
    if not model_args.share_embeddings_and_output_weights:
        flags.append(["--untie-embeddings-and-output-weights"])
    flags += [
        ["--tensor-model-parallel-size", str(layout.tp)],
        ["--pipeline-model-parallel-size", str(layout.pp)],
        ["--expert-model-parallel-size", str(layout.ep)],
        ["--expert-tensor-parallel-size", str(layout.expert_tp)],
        *(
            [flag, str(n)]
            for flag, n in (
                ("--decoder-first-pipeline-num-layers", layout.first_stage_layers),
                ("--decoder-last-pipeline-num-layers", layout.last_stage_layers),
            )
            if n is not None and pattern is None  # a hybrid pattern carries the split
        ),
    ]
    if layout.tp > 1:
        flags.append(["--sequence-parallel"])

    for token in (t for group in flags for t in group):
        if token == pattern and _HYBRID_PATTERN_TOKEN.match(token):
            continue
        if not _SHELL_SAFE_TOKEN.match(token):
            raise RuntimeError(f"flag token {token!r} is not shell-safe")

    _check_flags_reproduce(flags, config, model_args, layout, fields, pattern)
    return [" ".join(group) for group in flags], config, model_args


def _check_flags_reproduce(
    flags, config, model_args, layout: Layout, fields, pattern: Optional[str]
) -> None:
    argv = required_run_flags(model_args) + [t for group in flags for t in group]
    model = "gpt" if pattern is None else "hybrid"
    parsed, model_config = config_from_command(argv, layout.min_world_size, model)
    compared = list(fields) + list(LAYOUT_FIELDS)
    if pattern is not None:
        compared += sorted(_HYBRID_PATTERN_FIELDS - set(compared))
    problems = compare_configs(config, parsed, compared)
    if pattern is not None and model_config.hybrid_layer_pattern != pattern:
        problems.append(
            f"hybrid_layer_pattern: {pattern!r} != {model_config.hybrid_layer_pattern!r}"
        )
    padded = padded_vocab_size_of(model_config)
    expected_gpt = {
        "position_embedding_type": model_args.position_embedding_type,
        "rotary_percent": model_args.rotary_percent,
        "rotary_base": model_args.rotary_base,
        "seq_length": model_args.max_sequence_length,
        "share_embeddings_and_output_weights": model_args.share_embeddings_and_output_weights,
    }
    problems += [
        f"{name}: {value!r} != {getattr(model_config, name)!r}"
        for name, value in expected_gpt.items()
        if getattr(model_config, name) != value
    ]
    expected_rows = padded_vocab_size(model_args.vocab_size, layout.tp)
    if padded != expected_rows:
        problems.append(f"padded vocab {padded} != {expected_rows}")
    if problems:
        raise RuntimeError("generated flags do not reproduce the config: " + "; ".join(problems))


def padded_vocab_size_of(model_config) -> int:
    """The vocabulary size ``GPTModelBuilder`` gives the embedding and output layer."""
    if not model_config.should_pad_vocab:
        return model_config.vocab_size
    return calculate_padded_vocab_size(
        model_config.vocab_size,
        model_config.make_vocab_size_divisible_by,
        model_config.transformer.tensor_model_parallel_size,
        logging_enabled=False,
    )
