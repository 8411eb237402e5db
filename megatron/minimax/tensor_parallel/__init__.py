"""Tensor-parallel communication ops (upstream: ``megatron.core.tensor_parallel``)."""
