# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""``HybridStack`` whose final norm comes from its spec.

megatron-core 0.19 builds ``HybridStack.final_norm`` as ``TENorm`` whatever the spec says, so a
hybrid model cannot be built without Transformer Engine. The native patch series gives megatron-core
a ``HybridStackSubmodules.final_norm`` field built with ``build_module``; where megatron-core has it
(:func:`megatron_core_builds_final_norm_from_spec`) this module's names are megatron-core's own
classes, otherwise the subclasses below do the same on stock megatron-core.
"""

import dataclasses
from dataclasses import dataclass
from typing import Union

from megatron.core.extensions.transformer_engine import TENorm
from megatron.core.models.hybrid import hybrid_block as mcore_hybrid_block
from megatron.core.transformer.spec_utils import ModuleSpec, build_module


def megatron_core_builds_final_norm_from_spec() -> bool:
    """True when megatron-core's ``HybridStackSubmodules`` has a ``final_norm`` field."""
    return "final_norm" in {
        f.name for f in dataclasses.fields(mcore_hybrid_block.HybridStackSubmodules)
    }


@dataclass
class HybridStackSubmodules(mcore_hybrid_block.HybridStackSubmodules):
    """megatron-core's ``HybridStackSubmodules`` plus the final norm."""

    final_norm: Union[ModuleSpec, type] = TENorm


class HybridStack(mcore_hybrid_block.HybridStack):
    """megatron-core's ``HybridStack``, building ``final_norm`` from ``submodules.final_norm``.

    Same arguments as megatron-core's. The base class is asked for no final norm (it would build
    ``TENorm``); the norm is then built here, and ``post_layer_norm`` restored, so that forward,
    checkpoints and the module tree are those of the base class.
    """

    def __init__(self, config, submodules: HybridStackSubmodules, *args, **kwargs):
        post_layer_norm = kwargs.pop("post_layer_norm", True)
        super().__init__(config, submodules, *args, post_layer_norm=False, **kwargs)
        self.post_layer_norm = post_layer_norm
        if self.post_process and self.post_layer_norm:
            self.final_norm = build_module(
                submodules.final_norm,
                config=self.config,
                hidden_size=self.config.hidden_size,
                eps=self.config.layernorm_epsilon,
            )


if megatron_core_builds_final_norm_from_spec():
    # The native series' HybridStack: use megatron-core's own classes.
    HybridStackSubmodules = mcore_hybrid_block.HybridStackSubmodules  # noqa: F811
    HybridStack = mcore_hybrid_block.HybridStack  # noqa: F811
