# Copyright (c) 2026 NVIDIA CORPORATION & AFFILIATES. All rights reserved.

import torch

from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.training.initialize import _set_random_seed
from tests.unit_tests.test_utilities import Utils

VOCAB, SEQ = 64, 8


class TestFloat16OptimizerWithFp32Params:
    def setup_method(self, method):
        Utils.initialize_model_parallel(tensor_model_parallel_size=1)
        _set_random_seed(seed_=123, data_parallel_random_init=False)

    def teardown_method(self, method):
        Utils.destroy_model_parallel()

    def _model_and_optimizer(self):
        # A bf16 MoE model whose router gate stays fp32: fp32 params sit between bf16 ones.
        config = TransformerConfig(
            num_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            num_moe_experts=4,
            moe_ffn_hidden_size=16,
            moe_router_topk=2,
            moe_router_dtype="fp32",
            moe_router_keep_in_fp32=True,
            moe_router_load_balancing_type="none",
            add_bias_linear=False,
            bf16=True,
            params_dtype=torch.bfloat16,
            use_cpu_initialization=True,
        )
        spec = get_gpt_layer_local_spec(num_experts=4, moe_grouped_gemm=False)
        gpt = GPTModel(config, spec, vocab_size=VOCAB, max_sequence_length=SEQ)
        model = DistributedDataParallel(
            config, DistributedDataParallelConfig(), Float16Module(config, gpt).cuda()
        )
        optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=1e-3, bf16=True, use_distributed_optimizer=False),
            [model],
        )
        tokens = torch.randint(0, VOCAB, (2, SEQ), device="cuda")
        positions = torch.arange(SEQ, device="cuda").expand(2, SEQ)
        model(tokens, positions, None, labels=tokens).float().mean().backward()
        model.finish_grad_sync()
        optimizer.step()
        return gpt, optimizer

    def test_every_state_is_saved_under_its_own_parameter(self):
        gpt, optimizer = self._model_and_optimizer()
        (inner,) = optimizer.chained_optimizers
        assert isinstance(inner, Float16OptimizerWithFloat16Params)
        fp32_params = [p for group in inner.fp32_from_fp32_groups for p in group]
        assert fp32_params and all(p.dtype == torch.float32 for p in fp32_params)

        model_sharded = gpt.sharded_state_dict()
        key_of = {id(t.data): t.key for t in model_sharded.values() if isinstance(t, ShardedTensor)}
        model_param_of = {
            id(main): model
            for model_group, main_group in zip(inner.float16_groups, inner.fp32_from_float16_groups)
            for model, main in zip(model_group, main_group)
        }
        state = inner.sharded_state_dict(model_sharded)["optimizer"]["state"]
        params = [p for group in inner.optimizer.param_groups for p in group["params"]]
        for param_id, param in enumerate(params):
            model_param = model_param_of.get(id(param), param)
            for name in ("exp_avg", "exp_avg_sq"):
                saved = state[param_id][name]
                assert saved.key == f"optimizer.state.{name}.{key_of[id(model_param)]}"
                assert saved.data is inner.optimizer.state[param][name]
