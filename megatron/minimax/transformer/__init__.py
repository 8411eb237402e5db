"""Transformer building blocks: config, full-dimension QK norm, RMSNorm, fp32 router."""
