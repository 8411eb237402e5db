# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Command-line flags for this package's ``TransformerConfig`` fields, and args -> configs.

megatron-training generates one flag per megatron-core ``TransformerConfig`` field. This module
does the same for the fields our subclass adds (``--qk-layernorm-scope``,
``--moe-router-keep-in-fp32``), from their annotations and attribute docstrings, through the
``extra_args_provider`` hook of ``parse_and_validate_args``. With a megatron-core that declares
the fields natively, megatron-training generates these flags itself and this module adds none. The values reach the model only through the config class:
``core_transformer_config_from_args(args, config_class=TransformerConfig)`` copies every args
attribute named like a field of the class it is given.
"""

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import re
from typing import List
from unittest import mock

import torch

from megatron.core.transformer.transformer_config import TransformerConfig as MCoreTransformerConfig
from megatron.core.utils import log_single_rank
from megatron.training import arguments as megatron_arguments
from megatron.training.argument_utils import (
    ArgumentGroupFactory,
    core_transformer_config_from_args,
    gpt_config_from_args,
    hybrid_config_from_args,
)
from megatron.training.arguments import add_megatron_arguments, validate_args

from megatron.minimax.native_core import megatron_core_is_native
from megatron.minimax.training.hf_initialization import add_hf_initialization_args
from megatron.minimax.training.hybrid_model_builder import HybridModelConfig
from megatron.minimax.training.model_builder import HAVE_TE, GPTModelConfig
from megatron.minimax.transformer.transformer_config import TransformerConfig

logger = logging.getLogger(__name__)

ARGUMENT_GROUP_TITLE = "minimax transformer configuration"
MODELOPT_GROUP_TITLE = "modelopt quantization-aware training"


def add_minimax_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``extra_args_provider``: one flag per field that our ``TransformerConfig`` adds (none when
    megatron-core is native: megatron-training then generates them), ``--modelopt-recipe``, and
    ``--load-hf-dir`` (:mod:`~megatron.minimax.training.hf_initialization`).

    Flags, types, choices and help text come from the dataclass (``Literal`` -> ``choices``,
    attribute docstring -> help), exactly as megatron-training builds its own transformer flags;
    the fields megatron-core already declares are excluded, since megatron-training adds those.
    """
    if not megatron_core_is_native():
        inherited = [f.name for f in dataclasses.fields(MCoreTransformerConfig)]
        factory = ArgumentGroupFactory(TransformerConfig, exclude=inherited)
        factory.build_group(parser, title=ARGUMENT_GROUP_TITLE)
    _add_modelopt_args(parser)
    add_hf_initialization_args(parser)
    _escape_stray_percent_signs(parser)
    return parser


def _add_modelopt_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--modelopt-recipe``: quantization-aware training (``quantization/qat.py``)."""
    from megatron.minimax.quantization.recipes import RECIPES

    group = parser.add_argument_group(title=MODELOPT_GROUP_TITLE)
    group.add_argument(
        "--modelopt-recipe",
        choices=list(RECIPES),
        default=None,
        help="Train with this nvidia-modelopt quantization recipe's fake quantizers in the "
        "forward (quantization-aware training): "
        + "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values())
        + ". Quantizers are restored from a --load checkpoint saved this way, else inserted "
        "and calibrated on the first --modelopt-calib-samples training samples before the "
        "first step; checkpoints keep their state for tools/quantize_minimax_m2.py.",
    )
    group.add_argument(
        "--modelopt-calib-samples",
        type=int,
        default=128,
        help="Training samples the quantizers are calibrated on when --modelopt-recipe starts "
        "from a model without them (default 128).",
    )
    return parser


# '%%', a '%(name)s' placeholder, or a lone '%' (group 1 empty).
_PERCENT_TOKEN = re.compile(r"%(%|\([a-z_]+\)[a-z])?")


def _escape_stray_percent_signs(parser: argparse.ArgumentParser) -> None:
    """Make ``--help`` printable: argparse %-formats help strings, and megatron-core 0.19.2 has a
    field docstring with a literal '%' (``--moe-paged-stash-buffer-size-factor-cuda``, "10%"), on
    which ``pretrain_gpt.py --help`` raises ``ValueError: unsupported format character``."""
    for action in parser._actions:
        if action.help:
            action.help = _PERCENT_TOKEN.sub(_escape_lone_percent, action.help)


def _escape_lone_percent(match: re.Match) -> str:
    return match.group(0) if match.group(1) else "%%"


def resolve_transformer_impl(args: argparse.Namespace) -> None:
    """Fall back to the local (PyTorch) modules when Transformer Engine is not importable.

    ``--transformer-impl`` defaults to ``transformer_engine``; without TE the stock builder fails
    on a TE import deep inside the spec. Here the choice is made once, before the config is built,
    so the config, the spec and every later ``transformer_impl`` check agree.
    """
    if args.transformer_impl == "transformer_engine" and not HAVE_TE:
        log_single_rank(
            logger,
            logging.WARNING,
            "Transformer Engine is not importable: using --transformer-impl local.",
        )
        args.transformer_impl = "local"


def transformer_config_from_args(args: argparse.Namespace) -> TransformerConfig:
    """Our ``TransformerConfig`` (megatron-core's plus ``qk_layernorm_scope`` and
    ``moe_router_keep_in_fp32``) from parsed args.

    Raises:
        ValueError: from ``TransformerConfig.__post_init__`` for an invalid combination, e.g.
            ``--qk-layernorm-scope layer`` without ``--qk-layernorm``.
    """
    resolve_transformer_impl(args)
    config = core_transformer_config_from_args(args, config_class=TransformerConfig)
    if not isinstance(config, TransformerConfig):
        # core_transformer_config_from_args swaps in MLATransformerConfig or the heterogeneous
        # config for those flags; neither carries our fields.
        if getattr(args, "qk_layernorm_scope", "head") != "head":
            raise ValueError(
                f"--qk-layernorm-scope {args.qk_layernorm_scope} is not supported with "
                f"{type(config).__name__} (--multi-latent-attention or heterogeneous layers)."
            )
        if getattr(args, "moe_router_keep_in_fp32", False):
            raise ValueError(
                f"--moe-router-keep-in-fp32 is not supported with {type(config).__name__} "
                "(--multi-latent-attention or heterogeneous layers) on stock megatron-core."
            )
    return config


def gpt_model_config_from_args(args: argparse.Namespace) -> GPTModelConfig:
    """The ``GPTModelConfig`` ``pretrain()`` builds from: our transformer config and our builder."""
    return gpt_config_from_args(
        args, config=transformer_config_from_args(args), model_config_cls=GPTModelConfig
    )


def hybrid_model_config_from_args(args: argparse.Namespace) -> HybridModelConfig:
    """The ``HybridModelConfig`` ``pretrain_hybrid.py`` builds from: our transformer config and
    our hybrid builder.

    Raises:
        ValueError: without ``--hybrid-layer-pattern`` (print it with
            ``tools/minimax_m2_args.py --model hybrid``).
    """
    if not args.hybrid_layer_pattern:
        raise ValueError(
            "a HybridModel needs --hybrid-layer-pattern ('*E' per MiniMax-M2 layer; "
            "tools/minimax_m2_args.py --model hybrid prints it)"
        )
    return hybrid_config_from_args(
        args, config=transformer_config_from_args(args), model_config_cls=HybridModelConfig
    )


def parse_training_args(argv: List[str], world_size: int = 1) -> argparse.Namespace:
    """Parse and validate ``argv`` exactly as ``pretrain_gpt.py`` does, without ``sys.argv``,
    globals or a distributed launch: megatron's flags plus :func:`add_minimax_args`.

    For tools and tests that need the config a command line produces. The argument listing that
    ``validate_args`` prints is discarded.

    Args:
        argv: command-line arguments (without the program name).
        world_size: the ``WORLD_SIZE`` the command would run with (validation checks layouts).

    Raises:
        SystemExit: from argparse on an unknown flag or a bad value.
        AssertionError / ValueError: from ``validate_args`` on an invalid combination.
    """
    parser = argparse.ArgumentParser(description="Megatron-LM Arguments", allow_abbrev=False)
    add_megatron_arguments(parser)
    add_minimax_args(parser)
    args = parser.parse_args(argv)
    args._is_global_batch_size_explicitly_specified = args.global_batch_size is not None
    args.rank = 0
    args.world_size = world_size
    with contextlib.redirect_stdout(io.StringIO()), _as_in_a_training_launch():
        validate_args(args, {})
    return args


@contextlib.contextmanager
def _as_in_a_training_launch():
    """Validate as ``torchrun pretrain_gpt.py`` on H100s would, wherever this runs.

    With TP or CP > 1, ``validate_args`` reads the GPU architecture (which raises without a GPU)
    and, before Blackwell, requires the launch environment ``CUDA_DEVICE_MAX_CONNECTIONS=1``;
    with ``--moe-grouped-gemm`` it reads the compute capability. These concern the launch, not
    the configuration: here the variable is set for the duration of the validation and, without a
    GPU, the architecture reads as Hopper's (9.0).
    """
    saved = os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")
    os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    try:
        if torch.cuda.is_available():
            yield
        else:
            with mock.patch.object(
                megatron_arguments, "get_device_arch_version", lambda: 9
            ), mock.patch.object(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0)):
                yield
    finally:
        if saved is None:
            del os.environ["CUDA_DEVICE_MAX_CONNECTIONS"]
        else:
            os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = saved
