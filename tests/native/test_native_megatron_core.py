# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The native path is live: megatron-core patched by the series builds MiniMax-M2 by itself.

Run by ``make test-native`` with the patched tree first on ``PYTHONPATH``. The same model built
through this package's subclasses on stock megatron-core (a subprocess without the tree) must give
bit-identical logits.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron.minimax.testing.distributed import run_in_processes

REPO = Path(__file__).resolve().parents[2]
VERIFY = REPO / "tools" / "checkpoint" / "verify_minimax_m2.py"
TP2_EP2 = ["--tp", "2", "--ep", "2", "--etp", "1"]


class TestNativeTreeIsLoaded:
    def test_megatron_core_and_training_load_from_the_patched_tree(self, native_tree):
        import megatron.core
        import megatron.training

        for package in (megatron.core, megatron.training):
            assert os.path.realpath(package.__file__).startswith(native_tree + os.sep)

    def test_fields_are_declared_by_core_transformer_config(self):
        import dataclasses

        from megatron.core.transformer.transformer_config import TransformerConfig

        fields = {f.name: f for f in dataclasses.fields(TransformerConfig)}
        assert fields["qk_layernorm_scope"].default == "head"
        assert fields["moe_router_keep_in_fp32"].default is False

    def test_package_uses_core_classes(self):
        from megatron.core.transformer.transformer_config import TransformerConfig as Core

        from megatron.minimax.native_core import describe_megatron_core, megatron_core_is_native
        from megatron.minimax.transformer.transformer_config import TransformerConfig

        assert megatron_core_is_native()
        assert TransformerConfig is Core
        assert "natively: building its own classes" in describe_megatron_core()


def _stock_spec_model(rank, world_size):
    """A bf16 MiniMax-M2-shaped GPTModel from megatron-core's own spec getters, no spec of ours."""
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_decoder_block_spec,
        get_gpt_mtp_block_spec,
    )
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.module import Float16Module
    from megatron.core.transformer.transformer_config import TransformerConfig

    parallel_state.initialize_model_parallel()
    model_parallel_cuda_manual_seed(0)
    config = TransformerConfig(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=8,
        num_query_groups=4,
        kv_channels=16,
        num_moe_experts=4,
        moe_ffn_hidden_size=32,
        moe_router_topk=2,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        moe_router_load_balancing_type="none",
        moe_router_dtype="fp32",
        moe_router_keep_in_fp32=True,
        normalization="RMSNorm",
        qk_layernorm=True,
        qk_layernorm_scope="layer",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        mtp_num_layers=1,
        bf16=True,
        params_dtype=torch.bfloat16,
        use_cpu_initialization=True,
    )
    block = get_gpt_decoder_block_spec(
        config, use_transformer_engine=False, normalization="RMSNorm", pp_rank=0
    )
    model = GPTModel(
        config,
        block,
        vocab_size=128,
        max_sequence_length=16,
        mtp_block_spec=get_gpt_mtp_block_spec(config, block, use_transformer_engine=False),
    )
    model = Float16Module(config, model).module
    tokens = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    logits = model(tokens, torch.arange(8).expand(2, 8), None)
    out = {
        "modules": {
            name: f"{type(m).__module__}.{type(m).__name__}"
            for name, m in model.named_modules()
            if name.endswith(("q_layernorm", "k_layernorm", "mlp.router"))
        },
        "router_dtypes": {n: p.dtype for n, p in model.named_parameters() if ".router." in n},
        "logits_finite": bool(torch.isfinite(logits).all()),
    }
    parallel_state.destroy_model_parallel()
    return out


class TestStockSpecsBuildTheNativeFeatures:
    @pytest.fixture(scope="class")
    def built(self):
        return run_in_processes(_stock_spec_model, 1)[0]

    def test_qk_norms_are_core_full_dimension_norms_in_decoder_and_mtp(self, built):
        norms = {n: c for n, c in built["modules"].items() if n.endswith("layernorm")}
        assert len(norms) == 6  # 2 decoder layers + 1 MTP layer, q and k each
        assert set(norms.values()) == {
            "megatron.core.transformer.full_dim_qk_norm.FullDimQKRMSNorm"
        }

    def test_routers_are_core_routers_with_fp32_gates(self, built):
        routers = {n: c for n, c in built["modules"].items() if n.endswith("router")}
        assert len(routers) == 3
        assert set(routers.values()) == {"megatron.core.transformer.moe.router.TopKRouter"}
        assert set(built["router_dtypes"].values()) == {torch.float32}
        assert built["logits_finite"]


def _verify(checkpoint, dump, env):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone",
        str(VERIFY), "--hf-dir", str(checkpoint), *TP2_EP2, "--dump-logits", str(dump),
    ]  # fmt: skip
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"}
    )


def _stock_environment():
    """This environment without the patched tree: the installed megatron-core, stock."""
    env = dict(os.environ)
    env.pop("MEGATRON_MINIMAX_NATIVE_TREE")
    env.pop("PYTHONPATH")
    return env


@pytest.fixture(scope="module")
def verify_runs(tiny_fp8_checkpoint, tmp_path_factory, native_tree):
    out = tmp_path_factory.mktemp("verify")
    native = _verify(tiny_fp8_checkpoint, out / "native.safetensors", dict(os.environ))
    stock = _verify(tiny_fp8_checkpoint, out / "stock.safetensors", _stock_environment())
    return {"native": native, "stock": stock, "dir": out}


class TestVerifyToolThroughCoreClasses:
    def test_native_run_passes_at_tp2_ep2(self, verify_runs):
        proc = verify_runs["native"]
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "natively: building its own classes" in proc.stdout
        assert "layout TP2xEP2xETP1xSP" in proc.stdout and "PASS" in proc.stdout

    def test_stock_run_takes_the_subclass_path(self, verify_runs):
        proc = verify_runs["stock"]
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "is stock: building megatron.minimax's" in proc.stdout and "PASS" in proc.stdout

    def test_logits_are_bit_identical_to_the_subclass_path(self, verify_runs):
        native = load_file(str(verify_runs["dir"] / "native.safetensors"))["logits"]
        stock = load_file(str(verify_runs["dir"] / "stock.safetensors"))["logits"]
        assert native.shape == stock.shape and native.abs().max() > 1.0
        assert torch.equal(native, stock)
