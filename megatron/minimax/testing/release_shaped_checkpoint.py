# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Synthetic checkpoints in the released FP8 format with the released layer shapes, for benchmarks.

The format is the release's (config, zero-based shards whose "of" count is one more than the
number of files, an index, 128x128-block ``float8_e4m3fn`` weights with fp32
``weight_scale_inv``, fp32 router, bf16 norms, embedding and head) and so are the layer shapes
(hidden 3072, expert width 1536, 48 query heads of 128, 8 KV heads, rotary dim 64), with few
layers and experts and a small vocabulary. Files are written by streaming random bytes, so
gigabytes take seconds and no tensor is ever in memory; this module imports neither torch nor
numpy at load time (a measuring parent process stays small).
"""

import json
import os
import struct
from pathlib import Path

__all__ = ["RELEASE_SHAPES", "write_release_shaped_checkpoint"]

RELEASE_SHAPES = dict(
    hidden_size=3072,
    intermediate_size=1536,
    head_dim=128,
    num_attention_heads=48,
    num_key_value_heads=8,
    rotary_dim=64,
    num_experts_per_tok=8,
    vocab_size=8192,
)
"""The released MiniMax-M2 layer shapes; a small vocabulary so embeddings do not dominate."""


SHARD_BYTES = 1_850_000_000
"""Shard size of the release (230 GB in 125 files)."""


def _tensor_specs(config):
    """(name, safetensors dtype, shape, kind) in release order."""
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    q_width = config["num_attention_heads"] * config["head_dim"]
    kv_width = config["num_key_value_heads"] * config["head_dim"]
    experts, vocab = config["num_local_experts"], config["vocab_size"]

    def fp8(name, rows, cols):
        return [
            (name, "F8_E4M3", (rows, cols), "fp8"),
            (name + "_scale_inv", "F32", (-(-rows // 128), -(-cols // 128)), "scale"),
        ]

    specs = [("model.embed_tokens.weight", "BF16", (vocab, hidden), "bf16")]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        specs.append((p + "input_layernorm.weight", "BF16", (hidden,), "norm"))
        specs += fp8(p + "self_attn.q_proj.weight", q_width, hidden)
        specs += fp8(p + "self_attn.k_proj.weight", kv_width, hidden)
        specs += fp8(p + "self_attn.v_proj.weight", kv_width, hidden)
        specs += fp8(p + "self_attn.o_proj.weight", hidden, q_width)
        specs.append((p + "self_attn.q_norm.weight", "BF16", (q_width,), "norm"))
        specs.append((p + "self_attn.k_norm.weight", "BF16", (kv_width,), "norm"))
        specs.append((p + "post_attention_layernorm.weight", "BF16", (hidden,), "norm"))
        specs.append((p + "block_sparse_moe.gate.weight", "F32", (experts, hidden), "fp32"))
        specs.append((p + "block_sparse_moe.e_score_correction_bias", "F32", (experts,), "fp32"))
        for e in range(experts):
            q = f"{p}block_sparse_moe.experts.{e}."
            specs += fp8(q + "w1.weight", ffn, hidden)
            specs += fp8(q + "w2.weight", hidden, ffn)
            specs += fp8(q + "w3.weight", ffn, hidden)
    specs.append(("model.norm.weight", "BF16", (hidden,), "norm"))
    specs.append(("lm_head.weight", "BF16", (vocab, hidden), "bf16"))
    return specs


_ITEMSIZE = {"F8_E4M3": 1, "BF16": 2, "F32": 4}


def _nbytes(spec) -> int:
    _, dtype, shape, _ = spec
    n = _ITEMSIZE[dtype]
    for d in shape:
        n *= d
    return n


class _RandomBytes:
    """Tensor bytes cut from a random pool (what matters here is volume, not entropy): FP8 bytes
    with the two NaN codes (0x7f, 0xff) removed, scales of amax/448 for amax in [0.02, 0.2],
    bf16 N(0, 0.02), norms near 1, fp32 router N(0, 0.02)."""

    POOL = 64 * 1024 * 1024

    def __init__(self, seed: int):
        import numpy as np

        self.np = np
        rng = np.random.default_rng(seed)
        fp8 = rng.integers(0, 256, self.POOL, dtype=np.uint8)
        fp8[(fp8 & 0x7F) == 0x7F] ^= 1
        self.fp8 = fp8
        normal = (rng.standard_normal(self.POOL // 4, dtype=np.float32) * 0.02).astype(np.float32)
        self.fp32 = normal.view(np.uint8)
        self.bf16 = (normal.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        scales = (rng.uniform(0.02, 0.2, self.POOL // 64).astype(np.float32) / 448).astype(
            np.float32
        )
        self.scale = scales.view(np.uint8)
        norms = rng.uniform(0.9, 1.1, 1 << 16).astype(np.float32)
        self.norm = (norms.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        self.offset = 0

    def chunks(self, kind: str, nbytes: int):
        pool = {"fp8": self.fp8, "bf16": self.bf16, "fp32": self.fp32, "scale": self.scale,
                "norm": self.norm}[kind]  # fmt: skip
        # Element-aligned start, different for each tensor.
        start = (self.offset * 4096) % (len(pool) - 4096)
        self.offset += 1
        while nbytes:
            piece = pool[start : start + nbytes]
            yield piece
            nbytes -= len(piece)
            start = 0


def _write_shard(path: Path, specs, source: _RandomBytes) -> None:
    """A safetensors file written by streaming (no tensor ever in memory as a whole)."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        name, dtype, shape, _ = spec
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + _nbytes(spec)]}  # fmt: skip
        offset += _nbytes(spec)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for spec in specs:
            for piece in source.chunks(spec[3], _nbytes(spec)):
                f.write(piece)
        f.flush()
        os.fsync(f.fileno())


def write_release_shaped_checkpoint(
    out_dir: Path, layers: int, experts: int, seed: int = 0, **shapes: int
) -> int:
    """Writes a synthetic FP8 checkpoint of ``layers`` layers and ``experts`` experts, with
    :data:`RELEASE_SHAPES` unless ``shapes`` overrides some; returns its tensor bytes.

    Values come from random byte pools (finite FP8 codes, scales of amax/448 with amax in
    [0.02, 0.2]): right in volume and format, not a trained model.
    """
    from megatron.minimax.models.minimax_m2.weight_mapping import RELEASE_QUANTIZATION_CONFIG
    from megatron.minimax.testing.tiny_checkpoint import tiny_hf_config

    config = tiny_hf_config(
        **{**RELEASE_SHAPES, **shapes}, num_hidden_layers=layers, num_local_experts=experts
    )
    config["quantization_config"] = dict(RELEASE_QUANTIZATION_CONFIG)
    specs = _tensor_specs(config)
    shards, current, size = [], [], 0
    for spec in specs:
        # A weight and its scale share a shard, as in the release.
        if current and size + _nbytes(spec) > SHARD_BYTES and not spec[0].endswith("_scale_inv"):
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += _nbytes(spec)
    shards.append(current)

    out_dir.mkdir(parents=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    source = _RandomBytes(seed)
    weight_map = {}
    declared = len(shards) + 1  # the release declares one file more than it ships
    for i, shard_specs in enumerate(shards):
        name = f"model-{i:05d}-of-{declared:05d}.safetensors"
        _write_shard(out_dir / name, shard_specs, source)
        weight_map.update((spec[0], name) for spec in shard_specs)
    total = sum(_nbytes(spec) for spec in specs)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total
