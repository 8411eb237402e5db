# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""modelopt's quantized form of megatron-core's ``SequentialMLP`` (the routed experts), as this
project needs it.

modelopt converts a module by the class registered for it in ``QuantModuleRegistry``; for
``SequentialMLP`` that is its ``_MegatronSequentialMLP``. :func:`register_quant_experts` registers
:class:`QuantSequentialExperts` in its place (under the same key, so modelopt states saved by
either restore with either), which differs in four ways:

1. **Routing weights after ``w2``.** megatron-core scales each token's SwiGLU output by its routing
   weight *before* ``linear_fc2``; transformers and vLLM scale the output of ``w2``. The two are
   equal in exact arithmetic (``w2`` is linear, without bias), but not once ``w2``'s input is
   quantised: serving quantises the unscaled activation with ``w2``'s ``input_scale``. Here the
   experts run with unit weights and the output is scaled afterwards, so calibration measures
   (and QAT trains against) the activation that serving quantises.
2. **Tensor and expert parallelism together.** modelopt refuses TP > 1 with EP > 1 for this
   module because its quantizer state could not be checkpointed then: the expert quantizers'
   amaxes get the dense tensor-parallel rank as replica id, so an expert held only by ranks of
   dense TP rank 1 has no main replica and torch_dist refuses to save. Here the amaxes get the
   expert-tensor-parallel rank instead (:meth:`QuantSequentialExperts.sharded_state_dict`), and
   calibration, checkpoints and export work at any layout.
3. **Experts without calibration tokens.** Every expert of a layer shares one input amax per
   projection (``w1``/``w3`` and ``w2``), the maximum over all of the layer's experts, as in
   modelopt's HF export of fused experts and in vLLM's NVFP4 MoE kernels. modelopt takes that
   maximum over the experts of each rank and then over expert-parallel ranks, and stops with
   "MoE calibration incomplete" when none of a rank's experts saw a token. Here the maximum is
   taken over all expert-parallel ranks first (an expert without tokens contributes nothing), so
   every expert gets the layer's scale; weights are calibrated on the weights themselves.
4. **Token counts.** ``calibration_tokens`` counts the tokens each local expert processed since
   the last reset, so that calibration can report the experts that saw none.
"""

import torch
import torch.distributed
from megatron.core.transformer.moe.experts import SequentialMLP
from modelopt.torch.quantization.nn import QuantModuleRegistry, TensorQuantizer
from modelopt.torch.quantization.plugins.megatron import _MegatronSequentialMLP
from modelopt.torch.utils.distributed import ParallelState

__all__ = ["QuantSequentialExperts", "register_quant_experts"]

_REGISTRY_KEY = "megatron_moe_SequentialMLP"
"""modelopt's key for SequentialMLP; saved modelopt states name modules by it."""


class QuantSequentialExperts(_MegatronSequentialMLP):
    """Quantized ``SequentialMLP`` (see the module docstring)."""

    def _setup(self):
        # As modelopt's _setup, with this module's own groups and without the TP+EP refusal
        # (sharded_state_dict below makes that layout checkpointable).
        if getattr(self, "parallel_state", None) is None:
            self.parallel_state = ParallelState(
                self.dp_group,
                tensor_parallel_group=self.tp_group,
                expert_model_parallel_group=self.ep_group,
            )
        for expert in self.local_experts:
            # The expert MLP (converted after this module) holds no quantizer itself; giving it
            # the experts' groups keeps modelopt from falling back to the default process group.
            expert._parallel_state = self.parallel_state
            expert.linear_fc1._parallel_state = self.parallel_state
            expert.linear_fc2._parallel_state = self.parallel_state
        device = next(self.parameters()).device
        self.register_buffer(
            "calibration_tokens",
            torch.zeros(self.num_local_experts, dtype=torch.int64, device=device),
            persistent=False,
        )

    def forward(self, permuted_local_hidden_states, tokens_per_expert, permuted_probs):
        counts = torch.as_tensor(tokens_per_expert, dtype=torch.int64)
        self.calibration_tokens += counts.to(self.calibration_tokens.device)
        output, output_bias = super().forward(
            permuted_local_hidden_states, tokens_per_expert, torch.ones_like(permuted_probs)
        )
        output = (output * permuted_probs.unsqueeze(-1)).to(output.dtype)
        return output, output_bias

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """modelopt's (one shard per global expert), with the quantizers' amaxes replicated over
        the expert-tensor-parallel group instead of the dense one.

        modelopt wraps each expert linear's amaxes with the dense tensor-parallel rank in the
        replica id; megatron-core then replaces only the data-parallel part by the expert-data-
        parallel rank. With TP > 1 and EP > 1 an expert's amax then has no main replica on any
        rank (its only holders can all have dense TP rank 1) and torch_dist refuses to save.
        The amaxes of the recipes here are scalars (per-tensor, or NVFP4's second-level scale):
        one copy per expert-TP rank, like any replicated tensor of the expert.
        """
        sharded = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        etp_rank = self.tp_group.rank() if self.tp_group is not None else 0
        for key, tensor in sharded.items():
            if "_quantizer." not in key or not key.endswith("_amax"):
                continue
            if any(fragments > 1 for fragments in tensor.axis_fragmentations):
                # A channel- or block-wise amax would be placed by the dense TP rank too.
                raise NotImplementedError(
                    f"{key}: tensor-parallel-sharded expert amax (per-channel or block "
                    "quantization) is not supported; the recipes use per-tensor amaxes"
                )
            tensor.replica_id = (tensor.replica_id[0], etp_rank, tensor.replica_id[2])
        return sharded

    def layer_sync_moe_local_experts_amax(self, sync_weight_amax=False):
        """modelopt's per-rank sync, then the input amax maximum over expert-parallel ranks.

        Collective over the expert-parallel group (every rank of it holds this layer).
        """
        super().layer_sync_moe_local_experts_amax(sync_weight_amax=sync_weight_amax)
        device = next(self.parameters()).device
        for quantizer in self._input_quantizers():
            amax = quantizer.amax
            layer_amax = torch.zeros((), dtype=torch.float32, device=device)
            if amax is not None:
                layer_amax = amax.detach().float().max().to(device)
            if self.ep_group is not None and self.ep_group.size() > 1:
                torch.distributed.all_reduce(
                    layer_amax, op=torch.distributed.ReduceOp.MAX, group=self.ep_group
                )
            if layer_amax > 0:
                shape = amax.shape if amax is not None else layer_amax.shape
                quantizer.amax = layer_amax.expand(shape).clone()

    def reset_calibration_tokens(self) -> None:
        self.calibration_tokens.zero_()

    def _input_quantizers(self):
        for expert in self.local_experts:
            for linear in (expert.linear_fc1, expert.linear_fc2):
                quantizer = getattr(linear, "input_quantizer", None)
                if isinstance(quantizer, TensorQuantizer) and quantizer.is_enabled:
                    yield quantizer


def register_quant_experts() -> None:
    """Makes modelopt convert ``SequentialMLP`` to :class:`QuantSequentialExperts` (idempotent;
    changes this process's modelopt registry)."""
    registered = QuantModuleRegistry.get(SequentialMLP)
    if registered is not None and issubclass(registered, QuantSequentialExperts):
        return
    if registered is not None:
        QuantModuleRegistry.unregister(SequentialMLP)
    QuantModuleRegistry.register({SequentialMLP: _REGISTRY_KEY})(QuantSequentialExperts)
