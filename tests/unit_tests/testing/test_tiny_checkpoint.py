# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Tests for megatron/minimax/testing/tiny_checkpoint.py."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import MiniMaxM2Config, MiniMaxM2ForCausalLM
from transformers.configuration_utils import PreTrainedConfig

from megatron.minimax.checkpoint.fp8_blockwise import dequantize_blockwise
from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
from megatron.minimax.models.minimax_m2.hf_reference import load_hf_reference_model
from megatron.minimax.testing import tiny_checkpoint
from megatron.minimax.models.minimax_m2.weight_mapping import RELEASE_QUANTIZATION_CONFIG
from megatron.minimax.testing.tiny_checkpoint import build_tiny_checkpoint, tiny_hf_config

RELEASE_KEYS = {
    "architectures", "attn_type_list", "auto_map", "head_dim", "hidden_act", "hidden_size",
    "intermediate_size", "max_position_embeddings", "model_type", "mtp_transformer_layers",
    "num_attention_heads", "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads",
    "num_local_experts", "num_mtp_modules", "qk_norm_type", "rms_norm_eps", "rope_theta",
    "rotary_dim", "scoring_func", "shared_intermediate_size", "tie_word_embeddings", "torch_dtype",
    "transformers_version", "use_cache", "use_mtp", "use_qk_norm", "use_routing_bias", "vocab_size",
}  # fmt: skip
INDEX = "model.safetensors.index.json"


def _release_names(layers: int = 4, experts: int = 8) -> set:
    """On-disk tensor names of the release, written out independently of the builder."""
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for n in range(layers):
        p = f"model.layers.{n}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {f"{p}self_attn.{x}_proj.weight" for x in "qkvo"}
        names |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
        moe = p + "block_sparse_moe."
        names |= {moe + "gate.weight", moe + "e_score_correction_bias"}
        expert_prefixes = [f"{moe}experts.{e}." for e in range(experts)]
        names |= {f"{x}{w}.weight" for x in expert_prefixes for w in ("w1", "w2", "w3")}
    return names


def _fp8_names(names) -> set:
    return {n for n in names if "_proj." in n or ".experts." in n}


def _read_all(d: Path) -> dict:
    out = {}
    for shard in sorted(d.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for k in f.keys():
                out[k] = (shard.name, f.get_tensor(k))
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "bf16": build_tiny_checkpoint(root / "bf16"),
        "fp8": build_tiny_checkpoint(root / "fp8", fp8=True),
    }


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 1001, (2, 24), generator=torch.Generator().manual_seed(7))


class TestTinyHfConfig:
    def test_has_exactly_the_release_keys(self):
        config = tiny_hf_config()
        assert set(config) == RELEASE_KEYS
        assert "quantization_config" not in config

    def test_tiny_awkward_defaults(self):
        c = tiny_hf_config()
        assert (c["vocab_size"], c["hidden_size"], c["num_hidden_layers"]) == (1001, 64, 4)
        assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (8, 4, 16)
        assert (c["rotary_dim"], c["num_local_experts"], c["num_experts_per_tok"]) == (8, 8, 2)
        assert (c["intermediate_size"], c["max_position_embeddings"]) == (48, 512)
        assert c["rope_theta"] == 5000000 and c["rms_norm_eps"] == 1e-6
        assert c["attn_type_list"] == [1, 1, 1, 1]
        assert c["architectures"] == ["MiniMaxM2ForCausalLM"] and c["model_type"] == "minimax_m2"
        assert c["qk_norm_type"] == "per_layer" and c["scoring_func"] == "sigmoid"
        assert c["shared_intermediate_size"] == 0 and c["tie_word_embeddings"] is False
        assert c["torch_dtype"] == "bfloat16"

    def test_overrides_keep_attn_type_list_in_sync(self):
        c = tiny_hf_config(num_hidden_layers=6, vocab_size=77)
        assert c["attn_type_list"] == [1] * 6 and c["vocab_size"] == 77
        with pytest.raises(ValueError, match="has 2 entries but num_hidden_layers is 3"):
            tiny_hf_config(num_hidden_layers=3, attn_type_list=[1, 1])

    def test_returns_independent_dicts(self):
        a = tiny_hf_config()
        a["auto_map"]["AutoConfig"] = "x"
        a["attn_type_list"].append(0)
        assert tiny_hf_config()["auto_map"]["AutoConfig"].startswith("configuration_minimax_m2")
        assert len(tiny_hf_config()["attn_type_list"]) == 4


class TestBuildTinyCheckpoint:
    def test_files_and_index_as_released(self, ckpts):
        d = ckpts["fp8"]
        shards = sorted(p.name for p in d.glob("*.safetensors"))
        # Zero-based, and the "of" count (4) disagrees with the file count (3), like the release.
        assert shards == [f"model-{i:05d}-of-00004.safetensors" for i in range(3)]
        assert sorted(p.name for p in d.iterdir()) == sorted(shards + ["config.json", INDEX])
        index = json.loads((d / INDEX).read_text())
        assert set(index) == {"metadata", "weight_map"}
        assert list(index["weight_map"]) == sorted(index["weight_map"])
        on_disk = _read_all(d)
        assert {k: v[0] for k, v in on_disk.items()} == index["weight_map"]
        total = sum(t.numel() * t.element_size() for _, t in on_disk.values())
        assert index["metadata"]["total_size"] == total

    def test_config_json(self, ckpts):
        bf16 = json.loads((ckpts["bf16"] / "config.json").read_text())
        fp8 = json.loads((ckpts["fp8"] / "config.json").read_text())
        assert bf16 == tiny_hf_config()
        assert fp8.pop("quantization_config") == RELEASE_QUANTIZATION_CONFIG
        assert fp8 == bf16

    def test_tensor_names_and_dtypes_as_released(self, ckpts):
        names = _release_names()
        bf16 = _read_all(ckpts["bf16"])
        assert set(bf16) == names
        for name, (_, t) in bf16.items():
            router = name.endswith(("gate.weight", "e_score_correction_bias"))
            assert t.dtype == (torch.float32 if router else torch.bfloat16), name
        fp8 = _read_all(ckpts["fp8"])
        quantized = _fp8_names(names)
        assert len(quantized) == 4 * (4 + 24)
        assert set(fp8) == names | {n + "_scale_inv" for n in quantized}
        for name, (shard, t) in fp8.items():
            if name in quantized:
                assert t.dtype == torch.float8_e4m3fn, name
                scale_shard, scale = fp8[name + "_scale_inv"]
                # Every tiny dim is < 128 or == 128 with a partial neighbour: one partial block.
                assert scale.dtype == torch.float32 and scale.shape == (1, 1)
                assert scale_shard == shard
            elif not name.endswith("_scale_inv"):
                assert t.dtype == bf16[name][1].dtype, name

    def test_shapes(self, ckpts):
        ckpt = HFCheckpoint(ckpts["fp8"])
        assert ckpt.shape("model.layers.0.self_attn.q_proj.weight") == (128, 64)
        assert ckpt.shape("model.layers.0.self_attn.k_proj.weight") == (64, 64)
        assert ckpt.shape("model.layers.0.self_attn.o_proj.weight") == (64, 128)
        assert ckpt.shape("model.layers.0.self_attn.q_norm.weight") == (128,)
        assert ckpt.shape("model.layers.0.self_attn.k_norm.weight") == (64,)
        assert ckpt.shape("model.layers.0.block_sparse_moe.experts.0.w1.weight") == (48, 64)
        assert ckpt.shape("model.layers.0.block_sparse_moe.experts.0.w2.weight") == (64, 48)
        assert ckpt.shape("lm_head.weight") == (1001, 64)

    def test_embedding_first_lm_head_last(self, ckpts):
        for d in ckpts.values():
            ckpt = HFCheckpoint(d)
            assert ckpt.file_of("model.embed_tokens.weight").name.startswith("model-00000-")
            assert ckpt.file_of("lm_head.weight").name.startswith("model-00002-")
            assert len({ckpt.file_of(n) for n in ckpt.tensor_names()}) == 3
            ckpt.validate(deep=True)

    def test_deterministic_per_seed(self, ckpts, tmp_path):
        again = build_tiny_checkpoint(tmp_path / "again", fp8=True)
        for f in sorted(ckpts["fp8"].iterdir()):
            assert (again / f.name).read_bytes() == f.read_bytes(), f.name
        other = HFCheckpoint(build_tiny_checkpoint(tmp_path / "other", seed=1))
        base = HFCheckpoint(ckpts["bf16"])
        assert not torch.equal(other.get("lm_head.weight"), base.get("lm_head.weight"))

    def test_fp8_quantizes_the_same_draws(self, ckpts):
        bf16, fp8 = HFCheckpoint(ckpts["bf16"]), HFCheckpoint(ckpts["fp8"])
        for name in fp8.tensor_names():
            ref = bf16.get(name)
            if not fp8.is_quantized(name):
                assert torch.equal(fp8.get(name), ref), name
                continue
            q, s = fp8.get_raw(name)
            assert torch.equal(fp8.get(name), dequantize_blockwise(q, s))
            # e4m3 half-ulp (2**-4 relative, s * 2**-10 absolute) plus the bf16 rounding of ref.
            bound = ref.abs() * (2.0**-4 + 2.0**-8) + s.item() * 2.0**-10
            assert ((fp8.get(name) - ref).abs() <= bound).all(), name

    def test_magnitudes(self, ckpts):
        ckpt = HFCheckpoint(ckpts["bf16"])
        norms = [n for n in ckpt.tensor_names() if "norm" in n]
        assert len(norms) == 1 + 4 * 4
        for name in norms:
            w = ckpt.get(name)
            assert 0.5 <= w.min() and w.max() <= 1.5, name
            assert w.max() - w.min() > 0.6, name  # spread: a mis-sliced norm is visible
        for name, fan_in in [
            ("model.layers.0.self_attn.q_proj.weight", 64),
            ("model.layers.1.self_attn.o_proj.weight", 128),
            ("model.layers.2.block_sparse_moe.experts.3.w2.weight", 48),
            ("model.layers.3.block_sparse_moe.gate.weight", 64),
            ("lm_head.weight", 64),
        ]:
            std = ckpt.get(name).std().item()
            assert abs(std * math.sqrt(fan_in) - 1) < 0.2, (name, std)
        assert abs(ckpt.get("model.embed_tokens.weight").std().item() - 1) < 0.05
        for layer in range(4):
            bias = ckpt.get(f"model.layers.{layer}.block_sparse_moe.e_score_correction_bias")
            assert bias.abs().max() <= tiny_checkpoint.ROUTING_BIAS_RANGE
            assert bias.max() - bias.min() > 0.1

    def test_single_shard_writes_model_safetensors(self, tmp_path):
        d = build_tiny_checkpoint(tmp_path / "one", num_shards=1)
        assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
        assert set(HFCheckpoint(d).tensor_names()) == _release_names()

    def test_custom_config(self, tmp_path):
        config = tiny_hf_config(num_hidden_layers=2, num_local_experts=4, vocab_size=300)
        d = build_tiny_checkpoint(tmp_path / "c", config, fp8=True, num_shards=5)
        assert len(list(d.glob("model-*-of-00006.safetensors"))) == 5
        ckpt = HFCheckpoint(d)
        assert set(ckpt.tensor_names()) == _release_names(layers=2, experts=4)
        assert ckpt.shape("lm_head.weight") == (300, 64)

    def test_refuses_non_empty_out_dir_and_bad_shard_count(self, tmp_path):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("x")
        with pytest.raises(FileExistsError, match="full"):
            build_tiny_checkpoint(tmp_path / "full")
        with pytest.raises(ValueError, match="num_shards"):
            build_tiny_checkpoint(tmp_path / "zero", num_shards=0)
        empty = tmp_path / "empty"
        empty.mkdir()
        assert build_tiny_checkpoint(empty) == empty and (empty / INDEX).is_file()

    def test_failed_build_leaves_nothing(self, tmp_path, monkeypatch):
        def boom(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(tiny_checkpoint, "save_file", boom)
        with pytest.raises(OSError, match="disk full"):
            build_tiny_checkpoint(tmp_path / "broken")
        assert list(tmp_path.iterdir()) == []


class TestLoadHfReferenceModel:
    def test_matches_transformers_from_pretrained(self, ckpts, tokens):
        ours = load_hf_reference_model(ckpts["bf16"])
        theirs = MiniMaxM2ForCausalLM.from_pretrained(
            ckpts["bf16"],
            dtype=torch.float32,
            attn_implementation="eager",
            experts_implementation="eager",
        ).eval()
        ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
        assert ours_sd.keys() == theirs_sd.keys()
        for k in ours_sd:
            assert ours_sd[k].dtype == theirs_sd[k].dtype, k
            assert torch.equal(ours_sd[k], theirs_sd[k]), k
        with torch.no_grad():
            a, b = ours(tokens).logits, theirs(tokens).logits
        assert torch.equal(a, b)
        assert not ours.training

    def test_partial_rope(self, ckpts):
        model = load_hf_reference_model(ckpts["bf16"])
        inv_freq = model.model.rotary_emb.inv_freq
        assert inv_freq.shape == (4,)  # rotary_dim / 2
        expected = 1.0 / (5e6 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
        assert torch.allclose(inv_freq, expected, rtol=1e-6, atol=0)

    def test_raises_if_transformers_ignores_rotary_dim(self, ckpts, monkeypatch):
        monkeypatch.setattr(
            MiniMaxM2Config,
            "convert_rope_params_to_dict",
            PreTrainedConfig.convert_rope_params_to_dict,
        )
        with pytest.raises(RuntimeError, match="built 8 RoPE frequencies but rotary_dim=8 needs 4"):
            load_hf_reference_model(ckpts["bf16"])

    def test_layout_conversion_from_fp8(self, ckpts):
        ckpt = HFCheckpoint(ckpts["fp8"])
        model = load_hf_reference_model(ckpts["fp8"])
        sd = model.state_dict()
        for layer in (0, 3):
            p = f"model.layers.{layer}."
            moe = p + "block_sparse_moe."
            assert torch.equal(sd[p + "mlp.gate.weight"], ckpt.get(moe + "gate.weight"))
            bias = sd[p + "mlp.e_score_correction_bias"]
            assert bias.dtype == torch.float32
            assert torch.equal(bias, ckpt.get(moe + "e_score_correction_bias"))
            for e in (0, 5):
                w1, w2, w3 = (ckpt.get(f"{moe}experts.{e}.{w}.weight") for w in ("w1", "w2", "w3"))
                gate_up = sd[p + "mlp.experts.gate_up_proj"][e]
                assert torch.equal(gate_up[:48], w1) and torch.equal(gate_up[48:], w3)
                assert torch.equal(sd[p + "mlp.experts.down_proj"][e], w2)
            q = p + "self_attn.q_proj.weight"
            assert torch.equal(sd[q], dequantize_blockwise(*ckpt.get_raw(q)))
            k_norm = p + "self_attn.k_norm.weight"
            assert torch.equal(sd[k_norm], ckpt.get(k_norm))
        assert torch.equal(sd["lm_head.weight"], ckpt.get("lm_head.weight"))

    def test_round_to_bf16_spares_the_router(self, ckpts):
        ckpt = HFCheckpoint(ckpts["fp8"])
        model = load_hf_reference_model(ckpts["fp8"], round_to=torch.bfloat16)
        router_changed_by_rounding = False
        for name, t in model.state_dict().items():
            assert t.dtype == torch.float32, name
            if name.endswith(("mlp.gate.weight", "e_score_correction_bias")):
                layer = name.split(".")[2]
                leaf = "gate.weight" if name.endswith("gate.weight") else "e_score_correction_bias"
                ref = ckpt.get(f"model.layers.{layer}.block_sparse_moe.{leaf}")
                assert torch.equal(t, ref), name
                router_changed_by_rounding |= not torch.equal(t, t.bfloat16().float())
            else:
                assert torch.equal(t, t.bfloat16().float()), name
        assert router_changed_by_rounding  # so the check above really shows it was not rounded
        q = "model.layers.1.self_attn.q_proj.weight"
        assert torch.equal(model.state_dict()[q], ckpt.get(q).bfloat16().float())

    def test_dtype_keeps_router_fp32(self, ckpts, tokens):
        model = load_hf_reference_model(ckpts["bf16"], dtype=torch.bfloat16)
        for name, t in model.state_dict().items():
            router = name.endswith(("mlp.gate.weight", "e_score_correction_bias"))
            assert t.dtype == (torch.float32 if router else torch.bfloat16), name
        with torch.no_grad():
            logits = model(tokens).logits
        ref = load_hf_reference_model(ckpts["bf16"])(tokens).logits.detach()
        assert (logits.float() - ref).abs().mean() < 0.1 * ref.abs().mean()

    def test_logits_are_order_one_and_bias_matters(self, ckpts, tokens):
        model = load_hf_reference_model(ckpts["bf16"])
        router_inputs = []
        hooks = [
            layer.mlp.register_forward_pre_hook(lambda m, args: router_inputs.append(args[0]))
            for layer in model.model.layers
        ]
        with torch.no_grad():
            logits = model(tokens).logits
        for h in hooks:
            h.remove()
        assert 0.3 < logits.std().item() < 5 and logits.abs().max().item() < 30
        # The selection bias changes the top-2 expert set for a good fraction of tokens per layer.
        for layer, x in zip(model.model.layers, router_inputs):
            scores = torch.sigmoid(x.reshape(-1, 64) @ layer.mlp.gate.weight.T)
            biased_scores = scores + layer.mlp.e_score_correction_bias
            plain = scores.topk(2, dim=-1).indices.sort(-1).values
            biased = biased_scores.topk(2, dim=-1).indices.sort(-1).values
            changed = (plain != biased).any(-1).float().mean().item()
            assert changed > 0.2, changed
        for layer in model.model.layers:
            layer.mlp.e_score_correction_bias.zero_()
        with torch.no_grad():
            unbiased = model(tokens).logits
        assert (unbiased - logits).abs().max() > 0.1
