# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Quantized HF export of a tiny release-format MiniMax-M2 against modelopt's own HF path.

The golden is nvidia-modelopt's ``export_hf_checkpoint`` on transformers' ``MiniMaxM2ForCausalLM``
holding the same weights (fp32), calibrated with modelopt's presets on the same tokens. Our side is
``quantize_to_hf`` (the library behind ``tools/quantize_minimax_m2.py``) at several layouts, all in
one launch of four gloo processes: TP1, TP2xEP2 (ETP1), PP2xEP2 for NVFP4 experts; TP1 and TP2xEP2
for FP8; TP2 for NVFP4 everywhere; EP4 with calibration tokens too few to reach every expert.
The same launch measures the fake-quantised forward against the unquantised one at TP1.
"""

import fnmatch
import json
from pathlib import Path

import pytest
import torch

from megatron.minimax.testing.distributed import run_in_processes

INPUT_SCALE_RTOL = 0.02
"""Input scales are activation maxima: computed by two implementations (fp32 here, different
reduction order and layouts) they may differ slightly; the acceptance bound is 2%."""
NVFP4_ELEMENT_ERROR = (1 + 2**-4) / 6
"""Largest |W - dequant(W)| relative to the amax of W's group of 16: half the widest e2m1 step
(2, between 4 and 6) in units of the group scale, which is the group amax / 6 rounded to e4m3
(3 mantissa bits: at most 2**-4 relative)."""
NVFP4_RELATIVE_RMS_ERROR = 0.10
"""Bound on ||W - dequant(W)|| / ||W|| over all expert weights of the tiny model (Gaussian
weights; measured 0.095, and 0.176 of the group amax at worst for one element)."""
FAKE_QUANT_LOSS_CHANGE = 0.1
"""Bound on |loss(NVFP4 experts, fake-quantised) - loss(fp32)| for the tiny random model on 4 x 32
tokens (natural-log units; measured 7.5557 -> 7.5084, a change of 0.047)."""

CASES = {
    "nvfp4-experts/TP1": ("nvfp4-experts", {}),
    "nvfp4-experts/TP2xEP2xETP1": ("nvfp4-experts", {"tp": 2, "ep": 2, "etp": 1}),
    "nvfp4-experts/PP2xEP2": ("nvfp4-experts", {"pp": 2, "ep": 2}),
    "fp8/TP1": ("fp8", {}),
    "fp8/TP2xEP2xETP1": ("fp8", {"tp": 2, "ep": 2, "etp": 1}),
    "nvfp4/TP2xETP1": ("nvfp4", {"tp": 2, "etp": 1}),
}
IDLE_CASE = "nvfp4-experts/EP4/two-tokens"


def _directory(root, case):
    return Path(root) / case.replace("/", "_")


def _calibration_tokens():
    return torch.randint(0, 1001, (4, 32), generator=torch.Generator().manual_seed(0))


def _export_worker(rank, world_size, hf_dir, root):
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2 import parity
    from megatron.minimax.quantization.calibration import forward_only, quantize_and_calibrate
    from megatron.minimax.quantization.nvfp4_cpu_backend import nvfp4_fake_quantize
    from megatron.minimax.quantization.ptq import quantize_to_hf
    from megatron.minimax.quantization.recipes import get_recipe

    checkpoint = HFCheckpoint(hf_dir)
    tokens = _calibration_tokens()
    out = {}
    for case, (recipe, layout) in CASES.items():
        result = quantize_to_hf(
            checkpoint.config,
            get_recipe(recipe),
            parity.ParallelLayout(**layout),
            _directory(root, case),
            hf_weights=lambda name: checkpoint.get(name, torch.float32),
            calibration_tokens=tokens,
            reference_dir=Path(hf_dir),
            params_dtype=torch.float32,
        )
        out[case] = result.calibration
    result = quantize_to_hf(
        checkpoint.config,
        get_recipe("nvfp4-experts"),
        parity.ParallelLayout(ep=4),
        _directory(root, IDLE_CASE),
        hf_weights=lambda name: checkpoint.get(name, torch.float32),
        calibration_tokens=tokens[:1, :2],
        params_dtype=torch.float32,
    )
    out[IDLE_CASE] = result.calibration

    # Fake-quantised forward at TP1 against the unquantised one, on the calibration tokens.
    layout = parity.ParallelLayout()
    parity.initialize_layout(layout)
    loaded = parity.build_from_hf(
        checkpoint.config, lambda name: checkpoint.get(name, torch.float32), layout
    )
    reference = parity.megatron_logits(loaded, tokens)
    quantize_and_calibrate(
        loaded.model, get_recipe("nvfp4-experts"), lambda: forward_only([loaded.model], [tokens])
    )
    fake_quantized = parity.megatron_logits(loaded, tokens)
    fc1 = loaded.model.decoder.layers[0].mlp.experts.local_experts[0].linear_fc1
    out["fake_quant"] = {
        "reference_loss": parity.next_token_loss(reference, tokens).item(),
        "loss": parity.next_token_loss(fake_quantized, tokens).item(),
        "max_abs_logit_diff": (fake_quantized - reference).abs().max().item(),
        "expert0_fc1": nvfp4_fake_quantize(fc1.weight.detach(), fc1.weight_quantizer.amax),
    }
    return out if rank == 0 else None


def _load_dir(directory):
    from safetensors.torch import load_file

    directory = Path(directory)
    tensors = {}
    index = directory / "model.safetensors.index.json"
    files = (
        set(json.loads(index.read_text())["weight_map"].values())
        if index.is_file()
        else {"model.safetensors"}
    )
    for name in sorted(files):
        tensors.update(load_file(str(directory / name)))
    config = json.loads((directory / "config.json").read_text())
    quant = json.loads((directory / "hf_quant_config.json").read_text())
    return tensors, config, quant


@pytest.fixture(scope="module")
def exports(tiny_bf16_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    reports = run_in_processes(_export_worker, 4, str(tiny_bf16_checkpoint), str(root))[0]
    loaded = {case: _load_dir(_directory(root, case)) for case in [*CASES, IDLE_CASE]}
    return reports, loaded


@pytest.fixture(scope="module")
def golden(tiny_bf16_checkpoint, tmp_path_factory):
    """modelopt's HF path on transformers' model with the same (bf16-valued) weights in fp32."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    from megatron.minimax.models.minimax_m2.hf_reference import load_hf_reference_model

    tokens = _calibration_tokens()
    out = {}
    for recipe, preset in (
        ("nvfp4-experts", mtq.NVFP4_EXPERTS_ONLY_CFG),
        ("nvfp4", mtq.NVFP4_DEFAULT_CFG),
        ("fp8", mtq.FP8_DEFAULT_CFG),
    ):
        model = load_hf_reference_model(tiny_bf16_checkpoint)
        mtq.quantize(model, preset, lambda m: m(input_ids=tokens))
        directory = tmp_path_factory.mktemp("golden") / recipe
        export_hf_checkpoint(model, export_dir=str(directory))
        out[recipe] = _load_dir(directory)
    return out


def _bytes(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def _is_quantization_tensor(name):
    return name.endswith((".weight_scale", ".weight_scale_2", ".input_scale"))


@pytest.mark.parametrize("case", list(CASES))
class TestAgainstModeloptHFExport:
    def test_same_tensor_names(self, exports, golden, case):
        ours, _, _ = exports[1][case]
        theirs, _, _ = golden[CASES[case][0]]
        assert sorted(ours) == sorted(theirs)

    def test_quantized_weights_and_weight_scales_are_byte_identical(self, exports, golden, case):
        ours, _, _ = exports[1][case]
        theirs, _, _ = golden[CASES[case][0]]
        quantized = [n for n in ours if n.endswith(".weight") and n[:-7] + ".weight_scale" in ours]
        assert quantized
        for name in quantized:
            module = name[: -len(".weight")]
            for tensor in (name, module + ".weight_scale", module + ".weight_scale_2"):
                if tensor not in theirs:  # FP8 has no weight_scale_2
                    assert tensor not in ours
                    continue
                assert ours[tensor].dtype == theirs[tensor].dtype, tensor
                assert ours[tensor].shape == theirs[tensor].shape, tensor
                assert torch.equal(_bytes(ours[tensor]), _bytes(theirs[tensor])), tensor

    def test_input_scales_within_two_percent(self, exports, golden, case):
        ours, _, _ = exports[1][case]
        theirs, _, _ = golden[CASES[case][0]]
        names = [n for n in ours if n.endswith(".input_scale")]
        assert names
        worst = max(abs(ours[n].item() / theirs[n].item() - 1) for n in names)
        assert worst <= INPUT_SCALE_RTOL

    def test_unquantized_tensors_are_the_weights_in_bf16_and_router_fp32(
        self, exports, golden, case
    ):
        ours, _, _ = exports[1][case]
        theirs, _, _ = golden[CASES[case][0]]
        plain = [n for n in ours if n + "_scale" not in ours and not _is_quantization_tensor(n)]
        plain = [
            n for n in plain if not (n.endswith(".weight") and n[:-7] + ".weight_scale" in ours)
        ]
        for name in plain:
            if ".block_sparse_moe.gate." in name or name.endswith("e_score_correction_bias"):
                assert ours[name].dtype == torch.float32, name
                assert torch.equal(ours[name], theirs[name]), name
            else:
                assert ours[name].dtype == torch.bfloat16, name
                assert torch.equal(ours[name], theirs[name].to(torch.bfloat16)), name

    def test_quant_config_matches_modelopt_and_excludes_exactly_the_bf16_modules(
        self, exports, golden, case
    ):
        ours, config, quant = exports[1][case]
        theirs, golden_config, golden_quant = golden[CASES[case][0]]
        assert quant["producer"] == golden_quant["producer"]
        ours_q, theirs_q = dict(quant["quantization"]), dict(golden_quant["quantization"])
        excluded = set(ours_q.pop("exclude_modules"))
        golden_patterns = theirs_q.pop("exclude_modules")
        assert ours_q == theirs_q
        modules = {n[:-7] for n in ours if n.endswith(".weight") and ours[n].dim() == 2}
        unquantized = {m for m in modules if m + ".weight_scale" not in ours}
        assert excluded == unquantized
        # modelopt lists some modules by wildcard ("model.layers.0.self_attn*"): same modules.
        assert {
            m for m in modules if any(fnmatch.fnmatch(m, p) for p in golden_patterns)
        } == excluded
        ours_c, theirs_c = dict(config["quantization_config"]), dict(
            golden_config["quantization_config"]
        )
        assert set(ours_c.pop("ignore")) == excluded
        theirs_c.pop("ignore")
        assert ours_c == theirs_c
        assert ours_c["quant_method"] == "modelopt"
        assert config["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][0] != "fp8"])
def test_nvfp4_tensors_have_the_serving_dtypes_and_shapes(exports, tiny_bf16_checkpoint, case):
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint

    ours, _, _ = exports[1][case]
    config = HFCheckpoint(tiny_bf16_checkpoint).config
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    for layer in range(config["num_hidden_layers"]):
        for expert in range(config["num_local_experts"]):
            prefix = f"model.layers.{layer}.block_sparse_moe.experts.{expert}"
            for w, (rows, cols) in (
                ("w1", (ffn, hidden)),
                ("w2", (hidden, ffn)),
                ("w3", (ffn, hidden)),
            ):
                m = f"{prefix}.{w}"
                assert ours[m + ".weight"].dtype == torch.uint8
                assert tuple(ours[m + ".weight"].shape) == (rows, cols // 2)
                assert ours[m + ".weight_scale"].dtype == torch.float8_e4m3fn
                assert tuple(ours[m + ".weight_scale"].shape) == (rows, cols // 16)
                for scalar in (".weight_scale_2", ".input_scale"):
                    assert ours[m + scalar].dtype == torch.float32
                    assert ours[m + scalar].shape == ()
            # vLLM fuses w1 and w3 and needs one global scale for both.
            for scalar in (".weight_scale_2", ".input_scale"):
                assert torch.equal(ours[f"{prefix}.w1{scalar}"], ours[f"{prefix}.w3{scalar}"])


def test_layouts_export_the_same_checkpoint(exports):
    for recipe in ("nvfp4-experts", "fp8"):
        cases = [c for c in CASES if CASES[c][0] == recipe]
        first, _, _ = exports[1][cases[0]]
        for case in cases[1:]:
            other, _, _ = exports[1][case]
            assert sorted(first) == sorted(other)
            for name, tensor in first.items():
                if name.endswith(".input_scale"):
                    assert other[name].item() == pytest.approx(tensor.item(), rel=1e-5), name
                else:
                    assert torch.equal(_bytes(tensor), _bytes(other[name])), (case, name)


def _dequantize(tensors, module):
    from megatron.minimax.quantization.nvfp4_format import NVFP4Tensor, dequantize_nvfp4

    return dequantize_nvfp4(
        NVFP4Tensor(
            tensors[module + ".weight"],
            tensors[module + ".weight_scale"],
            tensors[module + ".weight_scale_2"],
        )
    )


def test_dequantized_export_is_within_nvfp4_error_of_the_weights(exports, tiny_bf16_checkpoint):
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint

    ours, _, _ = exports[1]["nvfp4-experts/TP1"]
    checkpoint = HFCheckpoint(tiny_bf16_checkpoint)
    squared_error = squared_norm = 0.0
    modules = [n[:-7] for n in ours if n.endswith(".weight") and n[:-7] + ".weight_scale_2" in ours]
    assert len(modules) == 4 * 8 * 3
    for module in modules:
        weight = checkpoint.get(module + ".weight", torch.float32)
        error = (_dequantize(ours, module) - weight).abs()
        group_amax = weight.abs().unflatten(-1, (-1, 16)).amax(-1, keepdim=True)
        assert (error.unflatten(-1, (-1, 16)) <= NVFP4_ELEMENT_ERROR * group_amax).all(), module
        squared_error += error.square().sum().item()
        squared_norm += weight.square().sum().item()
    relative_rms = (squared_error / squared_norm) ** 0.5
    assert 0.05 < relative_rms < NVFP4_RELATIVE_RMS_ERROR, relative_rms


def test_fake_quantized_weights_are_the_dequantized_export(exports):
    ours, _, _ = exports[1]["nvfp4-experts/TP1"]
    fake = exports[0]["fake_quant"]["expert0_fc1"]
    prefix = "model.layers.0.block_sparse_moe.experts.0"
    exported = torch.cat([_dequantize(ours, f"{prefix}.w1"), _dequantize(ours, f"{prefix}.w3")])
    assert torch.equal(fake, exported)


def test_fake_quantized_forward_changes_the_loss_by_a_bounded_amount(exports):
    result = exports[0]["fake_quant"]
    change = abs(result["loss"] - result["reference_loss"])
    assert 0 < change < FAKE_QUANT_LOSS_CHANGE, result
    assert result["max_abs_logit_diff"] > 0


class TestCalibrationCoverage:
    def test_calibration_reaches_every_expert_with_enough_tokens(self, exports):
        report = exports[0]["nvfp4-experts/TP1"]
        assert report.num_tokens == 4 * 32
        assert report.experts_without_tokens() == {}
        # 128 tokens x top-2 per layer, each counted once whatever the layout.
        assert all(sum(c) == 2 * 128 for c in report.tokens_per_expert.values())
        assert (
            exports[0]["nvfp4-experts/TP2xEP2xETP1"].tokens_per_expert == report.tokens_per_expert
        )

    def test_experts_without_tokens_are_reported_and_get_the_layer_scales(self, exports):
        report = exports[0][IDLE_CASE]
        idle = report.experts_without_tokens()
        # 2 tokens x top-2 reach at most 4 of the 8 experts of a layer.
        assert len(idle) == 4 and all(len(e) >= 4 for e in idle.values())
        assert "processed no calibration token" in report.summary()
        tensors, _, _ = exports[1][IDLE_CASE]
        reference, _, _ = exports[1]["nvfp4-experts/TP1"]
        for layer, experts in idle.items():
            prefix = f"model.layers.{layer}.block_sparse_moe.experts"
            for w in ("w1", "w2"):
                scales = {tensors[f"{prefix}.{e}.{w}.input_scale"].item() for e in range(8)}
                assert len(scales) == 1 and scales.pop() > 0
            for e in experts:  # weight scales come from the weights alone
                for suffix in (".weight", ".weight_scale", ".weight_scale_2"):
                    name = f"{prefix}.{e}.w2{suffix}"
                    assert torch.equal(_bytes(tensors[name]), _bytes(reference[name]))
