# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""pretrain_gpt.py's training path on CPU: builder, step functions, training, optimizer checkpoint.

Two launches: world size 1, and world size 2 with TP=2 + sequence parallelism. Each runs the path
of ``pretrain()`` (see ``training_harness``) on a two-layer MiniMax-M2-shaped model on mock data.
The TP=2 optimizer checkpoint is also loaded at TP=1 x DP=2 and at PP=2.

``make test-native`` runs this module against megatron-core patched by the native series too:
the same model, losses and checkpoints, built from megatron-core's own classes.
"""

import itertools
import os

import pytest
import torch

from megatron.minimax.testing.distributed import run_in_processes

from training_harness import (
    CPU_RUN_ARGS,
    TINY_MODEL_ARGS,
    run_train_steps,
    setup_training,
    teardown_training,
    train_iterator,
)

STEPS = 4
LR = ["--lr", "3e-3", "--min-lr", "3e-3"]
BF16_MTP_RUN = TINY_MODEL_ARGS + CPU_RUN_ARGS + LR + ["--bf16", "--mtp-num-layers", "1"]
"""bf16 with an fp32 router and one MTP layer; default expert-bias update rate (1e-3)."""
FP32_FROZEN_BIAS_RUN = TINY_MODEL_ARGS + CPU_RUN_ARGS + LR + ["--moe-router-bias-update-rate", "0"]
"""fp32, expert bias frozen through the upstream flag (rate 0)."""
TP2_SP = ["--tensor-model-parallel-size", "2", "--sequence-parallel"]
PP2 = ["--pipeline-model-parallel-size", "2"]
OPTIMIZER_STATES = ("param", "exp_avg", "exp_avg_sq")
"""Per parameter: the fp32 main copy (the fp32 router's is the parameter) and Adam's moments."""
ROUTER = "model.layers.{}.block_sparse_moe.gate.weight"
EXPERT_W1 = "model.layers.1.block_sparse_moe.experts.3.w1.weight"
LOSS_RTOL = 1e-5  # TP=2 vs TP=1 in fp32: same weights (CPU init), different reduction order


def _unwrap(model_chunk):
    from megatron.core.utils import unwrap_model

    return unwrap_model(model_chunk)


def _routers(gpt_model):
    from megatron.core.transformer.moe.router import TopKRouter

    return {n: m for n, m in gpt_model.named_modules() if isinstance(m, TopKRouter)}


def _expert_biases(gpt_model):
    return {n: r.expert_bias.detach().clone() for n, r in _routers(gpt_model).items()}


def _repeated_batches(args, data_iterator):
    """One global batch, repeated: every step sees the same data, so the loss must fall."""
    if data_iterator is None:  # TP rank > 0 receives the batch by broadcast
        return None
    num_microbatches = args.global_batch_size // (args.micro_batch_size * args.data_parallel_size)
    return itertools.cycle([next(data_iterator) for _ in range(num_microbatches)])


def _describe_model(model, optimizer):
    """What the builder and the optimizer factory produced."""
    from megatron.core.transformer.module import Float16Module
    from megatron.core.utils import get_model_config

    from megatron.minimax.training.optimizer import Float16OptimizerWithFloat16Params

    gpt = _unwrap(model[0])
    config = get_model_config(model[0])
    norms = {
        name: (type(module).__name__, tuple(module.weight.shape))
        for name, module in gpt.named_modules()
        if name.endswith(("q_layernorm", "k_layernorm"))
    }
    router_params = {n for n, _ in gpt.named_parameters() if ".router." in n}
    from megatron.minimax.native_core import megatron_core_is_native

    return {
        "native": megatron_core_is_native(),
        "config_class": f"{type(config).__module__}.{type(config).__name__}",
        "float16_wrapped": isinstance(model[0].module, Float16Module),
        "qk_norms": norms,
        "router_dtypes": {n: p.dtype for n, p in gpt.named_parameters() if n in router_params},
        "other_dtypes": {p.dtype for n, p in gpt.named_parameters() if n not in router_params},
        "expert_bias_dtypes": {r.expert_bias.dtype for r in _routers(gpt).values()},
        "token_count_dtypes": {r.local_tokens_per_expert.dtype for r in _routers(gpt).values()},
        "inner_optimizers": [
            isinstance(o, Float16OptimizerWithFloat16Params) for o in optimizer.chained_optimizers
        ],
    }


def _forward_only_losses(args, model, data_iterator):
    """One forward pass through the schedule with our forward_step / loss_func."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron.minimax.training.gpt_step import forward_step

    with torch.no_grad():
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=data_iterator,
            model=model,
            num_microbatches=1,
            seq_length=args.seq_length,
            micro_batch_size=args.micro_batch_size,
            forward_only=True,
        )


def _optimizer_state(optimizer):
    """Every optimizer tensor, keyed by parameter position: fp32 main copies, step, moments."""
    out = {}
    for i, inner in enumerate(optimizer.chained_optimizers):
        torch_optimizer = inner.optimizer
        params = [p for group in torch_optimizer.param_groups for p in group["params"]]
        for j, param in enumerate(params):
            out[(i, j, "param")] = param.detach().clone()
            for key, value in torch_optimizer.state[param].items():
                out[(i, j, key)] = value.detach().clone() if torch.is_tensor(value) else value
    return out


def _optimizer_states_by_name(args, model, optimizer):
    """``{HF name: {state: full tensor}}`` of this pipeline stage's parameters (MTP layers are
    not HF tensors): optimizer states gathered over TP and EP like the weights they belong to,
    so that checkpoints of different layouts compare name by name. Collective over TP and EP."""
    from megatron.core.utils import get_model_config

    from megatron.minimax.models.conversion.mappings import MappingContext
    from megatron.minimax.models.conversion.model_weights import iter_hf_weights
    from megatron.minimax.models.minimax_m2.weight_mapping import MINIMAX_M2_WEIGHTS

    gpt = _unwrap(model[0])
    config = get_model_config(model[0])
    tp = config.tensor_model_parallel_size
    rows = gpt.embedding.word_embeddings.num_embeddings if gpt.pre_process else None
    rows = rows if rows is not None else gpt.output_layer.weight.shape[0]
    ctx = MappingContext(
        num_attention_heads=config.num_attention_heads,
        num_query_groups=config.num_query_groups,
        head_dim=config.kv_channels,
        vocab_size=args.vocab_size,
        padded_vocab_size=rows * tp,
    )
    main_param = {}
    for inner in optimizer.chained_optimizers:
        for model_group, main_group in zip(inner.float16_groups, inner.fp32_from_float16_groups):
            main_param.update((id(p), m) for p, m in zip(model_group, main_group))
        for group in inner.fp32_from_fp32_groups:
            main_param.update((id(p), p) for p in group)

    def state_of(key):
        def get(tensor):
            main = main_param.get(id(tensor))
            if main is None:
                return None  # buffers (router.expert_bias) have no optimizer state
            if key == "param":
                return main.detach()
            for inner in optimizer.chained_optimizers:
                if main in inner.optimizer.state:
                    return inner.optimizer.state[main][key]
            raise KeyError(f"no optimizer state for a parameter of shape {tuple(main.shape)}")

        return get

    out = {}
    for key in OPTIMIZER_STATES:
        for name, tensor in iter_hf_weights(
            gpt, ctx, MINIMAX_M2_WEIGHTS, tensor_of=state_of(key), skip_unmapped=_is_mtp
        ):
            out.setdefault(name, {})[key] = tensor.detach().clone()
    return out


def _is_mtp(canonical_name):
    return canonical_name.startswith("mtp.")


def _load_at_layout(argv, world_size, ckpt_dir, saved):
    """Build model and optimizer at the layout of ``argv``, load the checkpoint saved at another
    layout, and compare every optimizer state by HF name with what was saved."""
    from megatron.core import dist_checkpointing

    args, model, optimizer, _ = setup_training(argv + ["--seed", "4321"], world_size)
    loaded = dist_checkpointing.load(_sharded_state(model, optimizer, is_loading=True), ckpt_dir)
    _unwrap(model[0]).load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    restored = _optimizer_states_by_name(args, model, optimizer)
    teardown_training()
    mismatched = sorted(
        f"{name}:{key}"
        for name, states in restored.items()
        for key, value in states.items()
        if not torch.equal(value, saved[name][key])
    )
    return {"checked": sorted(restored), "mismatched": mismatched}


def _sharded_state(model, optimizer, is_loading=False):
    # As training/checkpointing.py: the unwrapped model's sharded state dict.
    model_sd = _unwrap(model[0]).sharded_state_dict()
    return {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading),
    }


def _stock_sharded_state_dict_error(model, optimizer):
    from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params as Stock

    try:
        model_sd = _unwrap(model[0]).sharded_state_dict()
        Stock.sharded_state_dict(optimizer.chained_optimizers[0], model_sd)
    except AssertionError as e:
        return str(e)
    return None


def _checkpoint_round_trip(argv, world_size, model, optimizer, ckpt_dir):
    """Save model + optimizer with torch_dist, rebuild everything with another seed, load."""
    from megatron.core import dist_checkpointing

    saved = _optimizer_state(optimizer)
    os.makedirs(ckpt_dir, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(_sharded_state(model, optimizer), ckpt_dir)
    teardown_training()

    args, model, optimizer, _ = setup_training(argv + ["--seed", "4321"], world_size)
    fresh = _optimizer_state(optimizer)
    # Materialise the optimizer state (as a resumed run does) before loading into it.
    loaded = dist_checkpointing.load(_sharded_state(model, optimizer, is_loading=True), ckpt_dir)
    _unwrap(model[0]).load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    restored = _optimizer_state(optimizer)
    teardown_training()

    mismatched = sorted(
        str(k)
        for k in saved
        if k not in restored
        or (torch.is_tensor(saved[k]) and not torch.equal(saved[k], restored[k]))
        or (not torch.is_tensor(saved[k]) and saved[k] != restored[k])
    )
    params_differed_before = any(
        torch.is_tensor(saved[k]) and k in fresh and not torch.equal(saved[k], fresh[k])
        for k in saved
        if k[2] == "param"
    )
    dtypes = {str(k): v.dtype for k, v in restored.items() if torch.is_tensor(v)}
    return {
        "num_entries": len(saved),
        "mismatched": mismatched,
        "fresh_model_differed": params_differed_before,
        "dtypes": dtypes,
    }


def _bf16_mtp_run(world_size, argv, ckpt_dir):
    args, model, optimizer, scheduler = setup_training(argv, world_size)
    out = {"model": _describe_model(model, optimizer)}
    data = train_iterator(args)
    out["forward_only"] = _forward_only_losses(args, model, data)
    bias_before = _expert_biases(_unwrap(model[0]))
    out["losses"] = run_train_steps(
        args, model, optimizer, scheduler, _repeated_batches(args, data), STEPS
    )
    bias_after = _expert_biases(_unwrap(model[0]))
    out["bias_delta"] = {n: (bias_after[n] - bias_before[n]).abs().max().item() for n in bias_after}
    out["stock_save_error"] = _stock_sharded_state_dict_error(model, optimizer)
    out["optimizer_states"] = _optimizer_states_by_name(args, model, optimizer)
    out["checkpoint"] = _checkpoint_round_trip(argv, world_size, model, optimizer, ckpt_dir)
    return out


def _fp32_frozen_bias_run(world_size, argv):
    args, model, optimizer, scheduler = setup_training(argv, world_size)
    data = _repeated_batches(args, train_iterator(args))
    bias_before = _expert_biases(_unwrap(model[0]))
    losses = run_train_steps(args, model, optimizer, scheduler, data, STEPS)
    bias_after = _expert_biases(_unwrap(model[0]))
    teardown_training()
    frozen = all(torch.equal(bias_before[n], bias_after[n]) for n in bias_after)
    return {"losses": losses, "expert_bias_unchanged": frozen}


def _builder_refusals(world_size):
    """Configs the builder must refuse rather than silently drop our options."""
    from megatron.core.models.gpt import gpt_layer_specs as mcore_specs
    from megatron.core.process_groups_config import ProcessGroupCollection

    from megatron.minimax.training.arguments import gpt_model_config_from_args, parse_training_args
    from megatron.minimax.training.model_builder import GPTModelBuilder

    args = parse_training_args(TINY_MODEL_ARGS + CPU_RUN_ARGS, world_size=world_size)
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel()
    model_config = gpt_model_config_from_args(args)

    def stock_spec(config, vp_stage=None):
        return mcore_specs.get_gpt_decoder_block_spec(
            config.transformer, use_transformer_engine=False, normalization="RMSNorm"
        )

    model_config.transformer_layer_spec = stock_spec
    try:
        GPTModelBuilder(model_config).build_model(ProcessGroupCollection.use_mpu_process_groups())
        error = None
    except ValueError as e:
        error = str(e)
    parallel_state.destroy_model_parallel()
    return error


def _ws1_worker(rank, world_size, ckpt_dir):
    return {
        "bf16_mtp": _bf16_mtp_run(world_size, BF16_MTP_RUN, os.path.join(ckpt_dir, "ws1")),
        "fp32_frozen_bias": _fp32_frozen_bias_run(world_size, FP32_FROZEN_BIAS_RUN),
        "stock_spec_error": _builder_refusals(world_size),
    }


def _tp2_worker(rank, world_size, ckpt_dir):
    tp2_dir = os.path.join(ckpt_dir, "tp2")
    bf16_mtp = _bf16_mtp_run(world_size, BF16_MTP_RUN + TP2_SP, tp2_dir)
    saved = bf16_mtp.pop("optimizer_states")
    return {
        "fp32_frozen_bias": _fp32_frozen_bias_run(world_size, FP32_FROZEN_BIAS_RUN + TP2_SP),
        "bf16_mtp": bf16_mtp,
        "saved_optimizer_states": saved,
        # The TP2 x DP1 checkpoint loaded at TP1 x DP2 and at PP2 x DP1.
        "loaded_at": {
            "TP1xDP2": _load_at_layout(BF16_MTP_RUN, world_size, tp2_dir, saved),
            "PP2": _load_at_layout(BF16_MTP_RUN + PP2, world_size, tp2_dir, saved),
        },
    }


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pretrain_gpt_ckpt"))


@pytest.fixture(scope="module")
def ws1(ckpt_root):
    return run_in_processes(_ws1_worker, 1, ckpt_root)[0]


@pytest.fixture(scope="module")
def tp2(ckpt_root):
    return run_in_processes(_tp2_worker, 2, ckpt_root)


class TestModelBuilder:
    def test_pretrain_path_uses_our_config_and_builder(self, ws1):
        model = ws1["bf16_mtp"]["model"]
        package = "megatron.core" if model["native"] else "megatron.minimax"
        assert (
            model["config_class"] == f"{package}.transformer.transformer_config.TransformerConfig"
        )
        assert model["float16_wrapped"]
        # The fixed mixed-precision optimizer: ours substituted on stock megatron-core.
        assert model["inner_optimizers"] == [not model["native"]]

    def test_decoder_and_mtp_layers_have_full_dim_qk_norm(self, ws1):
        norms = ws1["bf16_mtp"]["model"]["qk_norms"]
        # 2 decoder layers + 1 MTP layer, each a query (8 heads x 16) and a key (4 x 16) norm.
        assert len(norms) == 6
        assert sum(".mtp_model_layer." in name for name in norms) == 2
        for name, (cls, shape) in norms.items():
            assert cls == "FullDimQKRMSNorm", name
            assert shape == ((128,) if name.endswith("q_layernorm") else (64,)), name

    def test_router_stays_fp32_under_bf16(self, ws1):
        model = ws1["bf16_mtp"]["model"]
        assert len(model["router_dtypes"]) == 3  # decoder layers 0, 1 and the MTP layer
        assert set(model["router_dtypes"].values()) == {torch.float32}
        assert model["other_dtypes"] == {torch.bfloat16}
        assert model["expert_bias_dtypes"] == {torch.float32}
        # fp32_router_notes.md 6: bf16 counters saturate (2000 x 64 tokens counted as 16384).
        assert model["token_count_dtypes"] == {torch.float32}

    def test_user_spec_without_full_dim_norm(self, ws1):
        if ws1["bf16_mtp"]["model"]["native"]:
            # megatron-core's SelfAttention builds the full-dimension norm from any spec.
            assert ws1["stock_spec_error"] is None
        else:
            assert "qk_layernorm_scope='layer'" in ws1["stock_spec_error"]
            assert "decoder spec" in ws1["stock_spec_error"]


class TestGPTStep:
    def test_loss_func_reports_masked_sum_and_token_count(self, ws1):
        (report,) = ws1["bf16_mtp"]["forward_only"]
        loss_sum, num_tokens = report["lm loss"].tolist()
        assert num_tokens == 2 * 32  # micro-batch 2 x sequence 32, no masked tokens
        # Per-token cross-entropy of an untrained model: about ln(vocab) = ln(1000) = 6.91.
        assert 6.5 < loss_sum / num_tokens < 7.5


class TestTraining:
    def test_bf16_loss_decreases_every_step(self, ws1):
        losses = ws1["bf16_mtp"]["losses"]
        assert len(losses) == STEPS
        assert all(b < a for a, b in zip(losses, losses[1:])), losses
        assert losses[-1] < losses[0] - 0.5, losses

    def test_expert_bias_updates_by_at_most_the_rate_per_step(self, ws1):
        deltas = ws1["bf16_mtp"]["bias_delta"]
        assert len(deltas) == 3
        assert all(0 < d <= STEPS * 1e-3 * (1 + 1e-4) for d in deltas.values()), deltas

    def test_bias_update_rate_zero_freezes_expert_bias(self, ws1, tp2):
        assert ws1["fp32_frozen_bias"]["expert_bias_unchanged"]
        assert all(rank["fp32_frozen_bias"]["expert_bias_unchanged"] for rank in tp2)

    def test_tp2_sequence_parallel_matches_tp1(self, ws1, tp2):
        reference = ws1["fp32_frozen_bias"]["losses"]
        assert all(b < a for a, b in zip(reference, reference[1:])), reference
        for rank in tp2:
            assert rank["fp32_frozen_bias"]["losses"] == pytest.approx(reference, rel=LOSS_RTOL)

    def test_tp2_bf16_loss_decreases(self, tp2):
        losses = tp2[0]["bf16_mtp"]["losses"]
        assert all(b < a for a, b in zip(losses, losses[1:])), losses


class TestOptimizerCheckpoint:
    def test_stock_optimizer_cannot_save_fp32_router(self, ws1):
        # fp32_router_notes.md 5b: megatron-core 0.19 maps optimizer states to the wrong
        # parameters; the native series fixes megatron-core's own class.
        if ws1["bf16_mtp"]["model"]["native"]:
            assert ws1["bf16_mtp"]["stock_save_error"] is None
        else:
            assert "does not match model shape" in ws1["bf16_mtp"]["stock_save_error"]

    @pytest.mark.parametrize("layout", ["ws1", "tp2"])
    def test_round_trip_is_bit_exact(self, ws1, tp2, layout):
        results = [ws1] if layout == "ws1" else tp2
        for result in results:
            checkpoint = result["bf16_mtp"]["checkpoint"]
            assert checkpoint["fresh_model_differed"]  # the load had something to restore
            assert checkpoint["mismatched"] == []
            # params + step + exp_avg + exp_avg_sq for every parameter
            assert checkpoint["num_entries"] % 4 == 0 and checkpoint["num_entries"] > 100

    def test_router_moments_are_fp32(self, ws1):
        checkpoint = ws1["bf16_mtp"]["checkpoint"]
        assert set(checkpoint["dtypes"].values()) == {torch.float32}

    @pytest.mark.parametrize("layout", ["TP1xDP2", "PP2"])
    def test_tp2_checkpoint_loads_at_another_layout(self, tp2, layout):
        saved = tp2[0]["saved_optimizer_states"]
        checked = set()
        for rank in tp2:
            result = rank["loaded_at"][layout]
            assert result["mismatched"] == [], result["mismatched"][:5]
            checked |= set(result["checked"])
        # Every parameter's states, the routers' and the experts' included, were found under
        # their own names (PP2: each stage holds half of them).
        assert checked == set(saved)
        assert {ROUTER.format(0), ROUTER.format(1), EXPERT_W1} <= checked

    def test_saved_states_tell_parameters_apart(self, tp2):
        # The comparison above would catch states mapped to another parameter of the same shape.
        saved = tp2[0]["saved_optimizer_states"]
        router0, router1 = saved[ROUTER.format(0)], saved[ROUTER.format(1)]
        assert router0["exp_avg"].dtype == torch.float32
        for key in OPTIMIZER_STATES:
            assert router0[key].shape == router1[key].shape
            assert not torch.equal(router0[key], router1[key]), key
        expert = saved[EXPERT_W1]
        other = saved[EXPERT_W1.replace("experts.3.", "experts.4.")]
        assert all(not torch.equal(expert[k], other[k]) for k in OPTIMIZER_STATES)
