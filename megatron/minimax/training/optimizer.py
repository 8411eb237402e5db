# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""A bf16/fp16 optimizer whose distributed checkpoint is correct when some parameters are fp32.

With ``moe_router_keep_in_fp32`` the router gate of a bf16 model stays fp32.
megatron-core's non-distributed mixed-precision optimizer
(``Float16OptimizerWithFloat16Params``) steps it correctly, as an fp32 parameter optimized in
place, but its ``sharded_state_dict`` (what ``--ckpt-format torch_dist`` saves unless
``--no-save-optim``) is wrong in megatron-core 0.19.2:

* torch numbers optimizer states by position over *all* parameters of ``param_groups``, where
  the fp32 main copies of bf16 parameters and the fp32 parameters are interleaved in model order;
* upstream maps those numbers to model parameters by enumerating the bf16 parameters only, so
  every number after the first fp32 parameter points at the wrong tensor. The save then fails
  with ``AssertionError: Optimizer shape ... does not match model shape``, or, when shapes happen
  to match, silently writes states under the wrong keys.

:class:`Float16OptimizerWithFloat16Params` fixes the numbering; with no fp32 parameter it produces
exactly what upstream produces. megatron-core's optimizer factory
(``get_megatron_optimizer``) instantiates the class by its name in ``megatron.core.optimizer``;
:func:`use_fp32_param_safe_float16_optimizer` points that name at the fixed class. The training
entry point calls it explicitly, once, before building the optimizer; importing this package
changes nothing. The distributed optimizer has its own, unaffected, ``sharded_state_dict``.

``sharded_state_dict`` below is also the source of the native patch series' optimizer fix; with a
megatron-core that carries the series (:mod:`megatron.minimax.native_core`) the substitution is
not made.
"""

from typing import Optional

import megatron.core.optimizer as mcore_optimizer
from megatron.core.dist_checkpointing.mapping import ShardedStateDict
from megatron.core.dist_checkpointing.optimizer import (
    get_param_id_to_sharded_param_map,
    make_sharded_optimizer_tensor,
    optim_state_to_sharding_state,
)
from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params as _MCoreOptimizer
from megatron.core.optimizer.optimizer import _backfill_gtp_sharded_param_map

from megatron.minimax.native_core import megatron_core_is_native


class Float16OptimizerWithFloat16Params(_MCoreOptimizer):
    """megatron-core's mixed-precision optimizer with a ``sharded_state_dict`` that also handles
    fp32 parameters of a bf16/fp16 model (an fp32 MoE router gate)."""

    def sharded_state_dict(
        self,
        model_sharded_state_dict: ShardedStateDict,
        is_loading: bool = False,
        metadata: Optional[dict] = None,
    ):
        """Sharded state of the optimizer, with optimizer-state ids mapped to model parameters in
        the order torch numbers them: every parameter of every group, the fp32 main copies of
        float16 parameters and the fp32 parameters optimized in place alike."""
        if is_loading:
            self.init_state_fn(self.optimizer, self.config)

        state_dict = self.state_dict()

        model_param_of_main_param = {
            id(main_param): model_param
            for model_group, main_group in zip(self.float16_groups, self.fp32_from_float16_groups)
            for model_param, main_param in zip(model_group, main_group)
        }
        # Position i of this list is the model parameter behind optimizer state number i.
        model_params_in_state_order = [
            model_param_of_main_param.get(id(param), param)
            for group in self.optimizer.param_groups
            for param in group["params"]
        ]
        id_to_sharded_param_map = get_param_id_to_sharded_param_map(
            model_sharded_state_dict, model_params_in_state_order
        )
        _backfill_gtp_sharded_param_map(
            id_to_sharded_param_map, [model_params_in_state_order], model_sharded_state_dict
        )

        # fp32_from_fp16_params[g] lists group g's main copies only, in parameter order.
        fp32_from_fp16_params = []
        for main_params, state_group, group in zip(
            state_dict["fp32_from_fp16_params"],
            state_dict["optimizer"]["param_groups"],
            self.optimizer.param_groups,
        ):
            main_param_ids = [
                param_id
                for param_id, param in zip(state_group["params"], group["params"])
                if id(param) in model_param_of_main_param
            ]
            assert len(main_param_ids) == len(main_params)
            fp32_from_fp16_params.append(
                [
                    make_sharded_optimizer_tensor(
                        id_to_sharded_param_map[param_id],
                        main_param,
                        prefix="optimizer.state.fp32_param",
                    )
                    for param_id, main_param in zip(main_param_ids, main_params)
                ]
            )
        state_dict["fp32_from_fp16_params"] = fp32_from_fp16_params

        step = self._extract_common_per_param_step(state_dict["optimizer"])
        # The per-parameter step is saved once, as a common step; every other state has the
        # parameter's shape.
        optim_state_to_sharding_state(
            state_dict["optimizer"], id_to_sharded_param_map, exclude_keys="step"
        )
        if step:
            state_dict["optimizer"]["state"]["common_step"] = step
        return state_dict


def use_fp32_param_safe_float16_optimizer() -> None:
    """Make ``get_megatron_optimizer`` build :class:`Float16OptimizerWithFloat16Params` (ours).

    Call once per process before building the optimizer (``pretrain_gpt.py`` does, right after
    parsing arguments). Idempotent. Only the non-distributed bf16/fp16 optimizer is affected; ours
    subclasses upstream's, so ``isinstance`` checks elsewhere still hold. A no-op with a native
    megatron-core, whose own class carries the fix.
    """
    if megatron_core_is_native():
        return
    mcore_optimizer.Float16OptimizerWithFloat16Params = Float16OptimizerWithFloat16Params
