# Copyright (c) 2026 NVIDIA CORPORATION & AFFILIATES. All rights reserved.

from functools import partial

import torch

from megatron.core.extensions.transformer_engine import TENorm
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.hybrid.hybrid_block import HybridStack, HybridStackSubmodules
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.ssm.mlp_layer import MLPLayer
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules
from megatron.training.initialize import _set_random_seed
from tests.unit_tests.test_utilities import Utils


class TestHybridStackFinalNormSpec:
    def setup_method(self, method):
        Utils.initialize_model_parallel(tensor_model_parallel_size=1)
        _set_random_seed(seed_=123, data_parallel_random_init=False)

    def teardown_method(self, method):
        Utils.destroy_model_parallel()

    def test_default_final_norm_is_te_norm(self):
        assert HybridStackSubmodules().final_norm is TENorm

    def test_local_final_norm_from_the_spec(self):
        # A hybrid stack of local (non-TE) modules only: one MLP layer and the final norm.
        config = TransformerConfig(
            num_layers=1,
            hidden_size=32,
            num_attention_heads=4,
            normalization="RMSNorm",
            add_bias_linear=False,
            use_cpu_initialization=True,
        )
        mlp_layer = ModuleSpec(
            module=MLPLayer,
            submodules=TransformerLayerSubmodules(
                pre_mlp_layernorm=WrappedTorchNorm,
                mlp=partial(
                    MLP.as_mlp_submodule,
                    submodules=MLPSubmodules(
                        linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear
                    ),
                ),
                mlp_bda=get_bias_dropout_add,
            ),
        )
        stack = HybridStack(
            config,
            HybridStackSubmodules(mlp_layer=mlp_layer, final_norm=WrappedTorchNorm),
            layer_type_list=["-"],
            pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
        ).cuda()
        assert isinstance(stack.final_norm, torch.nn.RMSNorm)
        hidden = torch.randn(4, 2, 32, device="cuda")
        out = stack(hidden, attention_mask=None)
        assert out.shape == hidden.shape
        torch.testing.assert_close(
            out.pow(2).mean(-1), torch.ones(4, 2, device="cuda"), atol=1e-3, rtol=0
        )
