# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Tearing down megatron-core's model-parallel state so that the process can fork workers."""

__all__ = ["destroy_model_parallel"]


def destroy_model_parallel() -> None:
    """megatron-core's ``destroy_model_parallel``, plus two groups it leaves referenced in 0.19
    (``_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP`` and its ``_GLOO`` twin).

    A process forked afterwards that initialises model parallelism again drops that last
    reference in the child, whose gloo threads do not exist there, and hangs; so they are
    cleared here, in this process.
    """
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    for name in (
        "_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP",
        "_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP_GLOO",
    ):
        if hasattr(parallel_state, name):
            setattr(parallel_state, name, None)
