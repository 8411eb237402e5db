# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""CPU shims: applied for a block, everything they replace is back afterwards; library calls
(the converters, the tools' process group) leave the caller's process as it was."""

import logging
import os

import pytest
import torch

from megatron.minimax.platform.cpu_shims import cpu_shims

CUDA = torch.cuda.is_available()


def _process_state():
    """Everything the shims touch, by identity, plus the process-group state."""
    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.tensor_parallel.random as tp_random
    import megatron.core.transformer.moe.token_dispatcher as token_dispatcher
    import megatron.core.transformer.utils as transformer_utils
    from megatron.core import parallel_state

    cuda_names = (
        "manual_seed", "get_rng_state", "set_rng_state", "current_device", "synchronize",
        "Stream", "current_stream", "stream",
    )  # fmt: skip
    return {
        **{f"torch.cuda.{name}": getattr(torch.cuda, name) for name in cuda_names},
        "torch.Tensor.cuda": torch.Tensor.cuda,
        "torch.Tensor.type": torch.Tensor.type,
        # Inherited from the C base class: restoring must not leave a copy in Tensor's own dict.
        "torch.Tensor own cuda/type": ("cuda" in vars(torch.Tensor), "type" in vars(torch.Tensor)),
        "_get_cuda_rng_state": tp_random._get_cuda_rng_state,
        "_set_cuda_rng_state": tp_random._set_cuda_rng_state,
        "transformer_utils.get_default_causal_mask": transformer_utils.get_default_causal_mask,
        "fused_softmax.get_default_causal_mask": fused_softmax.get_default_causal_mask,
        "maybe_move_tensor_to_cpu": token_dispatcher.maybe_move_tensor_to_cpu,
        "rng tracker log filters": tuple(logging.getLogger(tp_random.__name__).filters),
        "torch-function mode stack depth": torch._C._len_torch_function_stack(),
        "process group": torch.distributed.is_initialized(),
        "model-parallel state": parallel_state.model_parallel_is_initialized(),
        "launch environment": {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT")},
    }


def _groups_left_behind():
    """megatron-core 0.19's destroy_model_parallel leaves these referenced; a worker forked
    later that initialises model parallelism then hangs."""
    from megatron.core import parallel_state

    names = (
        "_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP",
        "_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP_GLOO",
    )
    return [name for name in names if getattr(parallel_state, name, None) is not None]


def _changed(before, after):
    return sorted(
        name for name in before if before[name] is not after[name] and before[name] != after[name]
    )


def _initialise_model_parallel(rank, world_size):
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel()
    size = parallel_state.get_data_parallel_world_size()
    parallel_state.destroy_model_parallel()
    return size


def test_block_changes_nothing_where_cuda_is_available(monkeypatch):
    # The branch a GPU machine takes, checked here on CPU as well.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = _process_state()
    with cpu_shims():
        assert _changed(before, _process_state()) == []
    assert _changed(before, _process_state()) == []


# On a machine with CUDA the shims are a no-op (tested above on every machine), so there is
# nothing of theirs to apply and restore; CI and every CPU run take this class.
@pytest.mark.skipif(CUDA, reason="the shims do nothing where CUDA is available")
class TestCpuShimsScope:
    def test_block_patches_and_restores_everything(self):
        before = _process_state()
        with cpu_shims():
            inside = _process_state()
            assert torch.cuda.current_device() == torch.device("cpu")
            assert torch.zeros(2, device="cuda").device.type == "cpu"
            assert torch.ones(1).type() == "torch.cuda.FloatTensor"
        changed_inside = _changed(before, inside)
        # Every shim was in force inside the block ...
        assert "torch.cuda.current_device" in changed_inside
        assert "torch.Tensor.cuda" in changed_inside
        assert "maybe_move_tensor_to_cpu" in changed_inside
        assert "torch-function mode stack depth" in changed_inside
        # ... and nothing is left of it afterwards.
        assert _changed(before, _process_state()) == []
        assert torch.ones(1).type() == "torch.FloatTensor"
        with pytest.raises(RuntimeError):
            torch.zeros(1, device="cuda")

    def test_nested_blocks_restore_once_at_the_outermost_exit(self):
        before = _process_state()
        with cpu_shims():
            outer = _process_state()
            with cpu_shims():
                assert _changed(outer, _process_state()) == []
            assert _changed(outer, _process_state()) == []
        assert _changed(before, _process_state()) == []

    def test_restored_when_the_block_raises(self):
        before = _process_state()
        with pytest.raises(KeyError):
            with cpu_shims():
                raise KeyError("boom")
        assert _changed(before, _process_state()) == []


class TestLibraryCallsLeaveNoGlobalState:
    def test_converters_in_process(self, tiny_bf16_checkpoint, tmp_path):
        from megatron.minimax.checkpoint.hf_to_mcore import convert_hf_to_mcore
        from megatron.minimax.checkpoint.mcore_to_hf import convert_mcore_to_hf

        before = _process_state()
        convert_hf_to_mcore(tiny_bf16_checkpoint, tmp_path / "mcore")
        assert _changed(before, _process_state()) == []
        convert_mcore_to_hf(tmp_path / "mcore", tmp_path / "hf", tiny_bf16_checkpoint)
        assert _changed(before, _process_state()) == []
        assert _groups_left_behind() == []
        assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()

    def test_tools_process_group_in_process(self, monkeypatch):
        from megatron.minimax.launch import distributed_process_group

        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(name, raising=False)
        before = _process_state()
        with distributed_process_group():
            assert torch.distributed.get_world_size() == 1
            from megatron.core import parallel_state

            parallel_state.initialize_model_parallel()
        assert _changed(before, _process_state()) == []
        assert _groups_left_behind() == []

    def test_a_worker_forked_afterwards_initialises_model_parallelism(self, monkeypatch):
        # The case that hung: model parallelism set up and left in this process, then workers.
        from megatron.minimax.launch import distributed_process_group
        from megatron.minimax.testing.distributed import run_in_processes

        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(name, raising=False)
        with distributed_process_group():
            from megatron.core import parallel_state

            parallel_state.initialize_model_parallel()
        assert run_in_processes(_initialise_model_parallel, 2, timeout=120) == [2, 2]
