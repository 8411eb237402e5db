# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Whether the megatron-core in use has this package's features natively.

``tools/upstream/make_native.py`` turns this package's config fields, full-dimension QK norm and
fp32 router into megatron-core changes. In a tree carrying them, megatron-core's own
``TransformerConfig`` declares the fields, its ``SelfAttention`` builds the full-dimension norm and
its router keeps fp32 weights; this package then uses those classes and stops substituting its
own through specs. On stock megatron-core it substitutes them. Either way the models are the same,
weight for weight and bit for bit (tested).
"""

import dataclasses
import functools
import logging
import os

NATIVE_CONFIG_FIELDS = ("qk_layernorm_scope", "moe_router_keep_in_fp32")
"""``TransformerConfig`` fields that the native patch series adds to megatron-core."""

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def megatron_core_is_native() -> bool:
    """True when megatron-core's ``TransformerConfig`` declares every field of
    :data:`NATIVE_CONFIG_FIELDS`; False when it declares none.

    Raises:
        ImportError: it declares some but not all (a tree patched by a different version of the
            series); mixing the two paths would build some features twice.
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    declared = {f.name for f in dataclasses.fields(TransformerConfig)}
    present = [name for name in NATIVE_CONFIG_FIELDS if name in declared]
    if present and len(present) != len(NATIVE_CONFIG_FIELDS):
        missing = [name for name in NATIVE_CONFIG_FIELDS if name not in declared]
        raise ImportError(
            f"megatron-core at {_megatron_core_dir()} declares {', '.join(present)} but not "
            f"{', '.join(missing)}: regenerate it with tools/upstream/make_native.py"
        )
    return bool(present)


def _megatron_core_dir() -> str:
    import megatron.core

    return os.path.dirname(os.path.abspath(megatron.core.__file__))


def describe_megatron_core() -> str:
    """One line saying which megatron-core is in use and which path this package takes."""
    from megatron.core import package_info

    where = _megatron_core_dir()
    if megatron_core_is_native():
        return (
            f"megatron-core {package_info.__shortversion__} at {where} has qk_layernorm_scope and "
            "moe_router_keep_in_fp32 natively: building its own classes"
        )
    return (
        f"megatron-core {package_info.__shortversion__} at {where} is stock: building "
        "megatron.minimax's TransformerConfig, full-dimension QK norm and fp32 router"
    )


@functools.lru_cache(maxsize=None)
def log_megatron_core_path() -> None:
    """Log :func:`describe_megatron_core` once per process, on the first rank."""
    from megatron.core.utils import log_single_rank

    log_single_rank(logger, logging.INFO, describe_megatron_core())
