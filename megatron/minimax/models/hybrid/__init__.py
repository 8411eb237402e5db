"""MiniMax-M2 as a megatron-core ``HybridModel``: stack specs, final norm from the spec."""
