# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""A CPU stand-in for Megatron-LM's ``tests/unit_tests/test_utilities.Utils``.

The series' unit tests are written to Megatron-LM's conventions
(``Utils.initialize_model_parallel``, tensors on ``cuda``) and run there on GPUs.
``make test-native`` runs the same files on CPU: under ``torchrun`` with gloo, with megatron-core's
CPU shims applied by the harness ``conftest.py``, and this ``Utils`` in place of Megatron-LM's
(which needs NCCL).
"""

import os

import torch

import megatron.core.parallel_state as ps


class Utils:
    """What the series' tests use of Megatron-LM's ``Utils``."""

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))

    @staticmethod
    def initialize_distributed():
        """Join the torchrun process group over gloo."""
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(
                "gloo", rank=Utils.rank, world_size=Utils.world_size
            )

    @staticmethod
    def initialize_model_parallel(
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        virtual_pipeline_model_parallel_size=None,
        **kwargs,
    ):
        """(Re)initialise Megatron's model-parallel state, as Megatron-LM's ``Utils`` does.

        Also seeds the model-parallel RNG tracker: on GPUs the tests' ``_set_random_seed`` does,
        but it skips the tracker when ``torch.cuda.device_count()`` is 0.
        """
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        ps.destroy_model_parallel()
        Utils.initialize_distributed()
        ps.initialize_model_parallel(
            tensor_model_parallel_size,
            pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size,
            **kwargs,
        )
        model_parallel_cuda_manual_seed(123)

    @staticmethod
    def destroy_model_parallel():
        """Tear the model-parallel state down after a barrier."""
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        ps.destroy_model_parallel()
