# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""MiniMax-M2 on Megatron-core, end to end on a laptop CPU (``make demo``).

1. Build a tiny MiniMax-M2 checkpoint in the released on-disk format (FP8 128x128 blocks,
   fp32 router, sharded safetensors + index).
2. Load it into Megatron at two parallel layouts (gloo processes) through the weight table and
   compare fp32 logits and loss with transformers' MiniMaxM2ForCausalLM on the same weights.
3. Convert it to a Megatron torch_dist checkpoint (convert_minimax_m2.py hf-to-mcore) and show
   the same parity from the converted checkpoint, resharded at two layouts.
4. Train the converted model for a few steps on CPU (TP2 with sequence parallelism, Megatron's
   DDP, finalize_model_grads and optimizer; the expert bias keeps updating), save a torch_dist
   checkpoint, export it to HF in BF16 and FP8 (mcore-to-hf), and check that transformers'
   logits on the BF16 export equal Megatron's on the saved weights; as a GPTModel, then as a
   HybridModel (pattern ``*E`` per layer) that loads the same converted checkpoint.
6. Quantize the trained (GPTModel) checkpoint to NVFP4 experts for serving (tools/quantize_minimax_m2.py,
   modelopt's format, as NVIDIA's MiniMax-M2.x NVFP4 checkpoints) and compare the quantized
   model's logits (fake-quantised forward, whose expert weights are the dequantized export)
   with the BF16 export's.

Parity rows name the megatron-core class: GPTModel, or HybridModel with the same weights.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import torch

WORLD_SIZE = 4
NVFP4_DEMO_LOSS_CHANGE = 0.1
"""Largest accepted change of the next-token loss from BF16 to NVFP4 experts on the demo's probe
tokens (natural-log units)."""


CLASS_NAMES = {"gpt": "GPTModel", "hybrid": "HybridModel"}


def _parity_worker(rank, world_size, hf_dir, rows, tokens):
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2 import parity

    checkpoint = HFCheckpoint(hf_dir)
    out = {}
    for model, layout in rows:
        parity.initialize_layout(layout)
        loaded = parity.build_from_hf(
            checkpoint.config, lambda name: checkpoint.get(name, torch.float32), layout, model=model
        )
        out[(model, str(layout))] = parity.megatron_logits(loaded, tokens)
    return out if rank == 0 else None


def _parity_from_checkpoint_worker(rank, world_size, hf_dir, load_dir, rows, tokens):
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2 import parity

    config = HFCheckpoint(hf_dir).config
    out = {}
    for model, layout in rows:
        parity.initialize_layout(layout)
        loaded = parity.build_from_dist_checkpoint(config, load_dir, layout, model=model)
        out[(model, str(layout))] = parity.megatron_logits(loaded, tokens)
    return out if rank == 0 else None


def _train_worker(rank, world_size, hf_dir, load_dir, save_dir, steps, tokens, model):
    """A few optimizer steps at TP2+SP through megatron-core's training pieces, then a save."""
    import os

    from megatron.core import dist_checkpointing
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2 import parity

    layout = parity.ParallelLayout(tp=2)
    parity.initialize_layout(layout)
    loaded = parity.build_from_dist_checkpoint(
        HFCheckpoint(hf_dir).config, load_dir, layout, model=model
    )
    ddp = DistributedDataParallel(
        loaded.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), loaded.model
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, clip_grad=1.0), [ddp]
    )
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    losses = []
    for _ in range(steps):
        ddp.train()
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        logits = parity._gather_vocab(ddp(tokens, positions, None), loaded.model_args.vocab_size)
        loss = parity.next_token_loss(logits, tokens)
        loss.backward()
        ddp.finish_grad_sync()
        finalize_model_grads([ddp])  # TP sums, then the expert-bias update
        optimizer.step()
        losses.append(loss.item())
    step_dir = os.path.join(save_dir, f"iter_{steps:07d}")
    if rank == 0:
        os.makedirs(step_dir, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(loaded.model.sharded_state_dict(), step_dir)
    if rank == 0:
        with open(os.path.join(save_dir, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(steps))
    return losses if rank == 0 else None


def _bf16_logits_worker(rank, world_size, hf_dir, load_dir, tokens, model):
    """Megatron's fp32 logits on the saved weights rounded as the BF16 export rounds them (every
    tensor but the fp32 router gate and bias)."""
    from megatron.minimax.models.minimax_m2 import parity

    loaded = _load_rounded_to_bf16(hf_dir, load_dir, model)
    return parity.megatron_logits(loaded, tokens) if rank == 0 else None


def _load_rounded_to_bf16(hf_dir, load_dir, model="gpt"):
    """The torch_dist checkpoint at TP1 in fp32, every tensor but the fp32 router gate rounded to
    bf16 (as the BF16 export, and the quantization tool's bf16 model, hold it)."""
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2 import parity

    layout = parity.ParallelLayout()
    parity.initialize_layout(layout)
    loaded = parity.build_from_dist_checkpoint(
        HFCheckpoint(hf_dir).config, load_dir, layout, model=model
    )
    with torch.no_grad():
        for name, param in loaded.model.named_parameters():
            if not name.endswith("router.weight"):
                param.copy_(param.to(torch.bfloat16).float())
    return loaded


def show_parity(hf_dir: Path, rows, load_dir: Path = None) -> bool:
    """Parity table of ``(model class, layout)`` rows; Megatron weights from ``hf_dir`` or, when
    given, the torch_dist ``load_dir`` (the reference is then rounded to the checkpoint's
    dtype)."""
    from megatron.minimax.models.minimax_m2 import parity
    from megatron.minimax.models.minimax_m2.hf_reference import hf_logits, load_hf_reference_model
    from megatron.minimax.testing.distributed import run_in_processes

    rounding = None if load_dir is None else parity.reference_rounding(load_dir)
    reference_model = load_hf_reference_model(hf_dir, round_to=rounding)
    vocab = reference_model.config.vocab_size
    tokens = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    reference = hf_logits(reference_model, tokens)
    if load_dir is None:
        megatron = run_in_processes(_parity_worker, WORLD_SIZE, hf_dir, rows, tokens)[0]
    else:
        megatron = run_in_processes(
            _parity_from_checkpoint_worker, WORLD_SIZE, hf_dir, str(load_dir), rows, tokens
        )[0]

    header = f"{'model':<12} {'layout':<20} {'max|dlogit|':>12} {'max rel':>10} " \
             f"{'loss Megatron':>14} {'loss HF':>10} {'|dloss|':>10}  verdict"  # fmt: skip
    print(header)
    print("-" * len(header))
    all_ok = True
    for model, layout in rows:
        r = parity.compare_logits(megatron[(model, str(layout))], reference, tokens)
        ok = r.ok()
        all_ok &= ok
        print(
            f"{CLASS_NAMES[model]:<12} {str(layout):<20} {r.max_abs_diff:>12.2e} "
            f"{r.max_rel_diff:>10.2e} "
            f"{r.megatron_loss:>14.7f} {r.reference_loss:>10.7f} {r.loss_diff:>10.2e}  "
            f"{'PASS' if ok else 'FAIL'}"
        )
    print(
        f"tolerances: |dlogit| <= {parity.LOGITS_ATOL:g}, |dloss| <= {parity.LOSS_ATOL:g} "
        f"(fp32, {tokens.shape[0]}x{tokens.shape[1]} tokens, HF reference: transformers "
        "MiniMaxM2ForCausalLM)"
    )
    return all_ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", default="out/demo", help="Where the demo writes its files.")
    args = parser.parse_args()
    from megatron.minimax.launch import quiet_library_notices

    quiet_library_notices()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from megatron.minimax.models.minimax_m2.parity import ParallelLayout
    from megatron.minimax.testing.tiny_checkpoint import build_tiny_checkpoint, tiny_hf_config

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()

    hf_dir = work / "hf_fp8"
    if hf_dir.exists():
        import shutil

        shutil.rmtree(hf_dir)
    config = tiny_hf_config()
    build_tiny_checkpoint(hf_dir, config, seed=0, fp8=True)
    files = sorted(p.name for p in hf_dir.iterdir())
    print(f"[1] tiny MiniMax-M2 checkpoint (FP8 128x128 blocks, fp32 router) in {hf_dir}:")
    print(
        f"    {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
        f"{config['num_attention_heads']} q / {config['num_key_value_heads']} kv heads of "
        f"{config['head_dim']}, rotary_dim {config['rotary_dim']}, {config['num_local_experts']} "
        f"experts top-{config['num_experts_per_tok']}, vocab {config['vocab_size']}"
    )
    print(f"    files: {', '.join(files)}")

    rows = [
        ("gpt", ParallelLayout()),
        ("gpt", ParallelLayout(tp=2, ep=2, etp=1)),
        ("hybrid", ParallelLayout(tp=2, ep=2, etp=1)),
    ]
    print(
        f"\n[2] Megatron vs HF parity ({WORLD_SIZE} gloo processes per layout, data parallel "
        "takes the rest):"
    )
    ok = show_parity(hf_dir, rows)

    ok &= convert_and_check(hf_dir, work)
    for model in ("gpt", "hybrid"):
        ok &= train_and_export(hf_dir, work, model)
    ok &= quantize_nvfp4_experts(hf_dir, work)
    print(
        f"\ndone in {time.time() - start:.0f} s: "
        f"{'every check passed' if ok else 'A CHECK FAILED'}"
    )
    return 0 if ok else 1


def _run_tool(*args) -> None:
    import subprocess

    # The tools' results and progress notes are not the demo's; their stderr shows on failure.
    proc = subprocess.run(
        [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise subprocess.CalledProcessError(proc.returncode, args)


def convert_and_check(hf_dir: Path, work: Path) -> bool:
    from megatron.minimax.models.minimax_m2.parity import ParallelLayout

    mcore_dir = work / "mcore_bf16"
    _run_tool("tools/checkpoint/convert_minimax_m2.py", "hf-to-mcore", "--hf-dir", str(hf_dir),
              "--save-dir", str(mcore_dir), "--overwrite", "--no-progress")  # fmt: skip
    print(f"\n[3] converted to Megatron torch_dist (bf16, router fp32): {mcore_dir}")
    print(f"    {', '.join(sorted(p.name for p in mcore_dir.iterdir()))}")
    print(
        "    parity from the converted checkpoint, resharded at load (HF reference on the same "
        "bf16-rounded weights):"
    )
    rows = [
        ("gpt", ParallelLayout(tp=2, ep=2, etp=1)),
        ("gpt", ParallelLayout(pp=2)),
        ("hybrid", ParallelLayout(pp=2)),
    ]
    return show_parity(hf_dir, rows, mcore_dir)


def train_and_export(hf_dir: Path, work: Path, model: str, steps: int = 8) -> bool:
    import shutil

    from megatron.minimax.models.minimax_m2.hf_reference import hf_logits, load_hf_reference_model
    from megatron.minimax.models.minimax_m2.parity import LOGITS_ATOL
    from megatron.minimax.testing.distributed import run_in_processes

    mcore_dir, trained_dir = work / "mcore_bf16", work / f"trained_{model}"
    shutil.rmtree(trained_dir, ignore_errors=True)
    trained_dir.mkdir()
    tokens = torch.randint(0, 1001, (4, 32), generator=torch.Generator().manual_seed(1))
    losses = run_in_processes(
        _train_worker, 2, hf_dir, str(mcore_dir), str(trained_dir), steps, tokens, model
    )[0]
    falling = losses[-1] < losses[0]
    step = "4" if model == "gpt" else "5"
    print(
        f"\n[{step}] {CLASS_NAMES[model]}: {steps} training steps at TP2xSP from the converted "
        f"checkpoint (2 gloo processes, Adam, fp32): loss "
        f"{' -> '.join(f'{x:.3f}' for x in losses)}  {'PASS' if falling else 'FAIL'}"
    )
    print(f"    saved torch_dist checkpoint ({CLASS_NAMES[model]} layout): {trained_dir}")

    ok = falling
    for fmt in ("bf16", "fp8"):
        export_dir = work / f"hf_export_{model}_{fmt}"
        _run_tool("tools/checkpoint/convert_minimax_m2.py", "mcore-to-hf", "--load-dir",
                  str(trained_dir), "--save-dir", str(export_dir), "--hf-reference-dir",
                  str(hf_dir), "--format", fmt, "--overwrite", "--no-progress")  # fmt: skip
        print(f"    exported to HF ({fmt}): {export_dir}")

    probe = torch.randint(0, 1001, (2, 32), generator=torch.Generator().manual_seed(2))
    reference = hf_logits(load_hf_reference_model(work / f"hf_export_{model}_bf16"), probe)
    megatron = run_in_processes(_bf16_logits_worker, 1, hf_dir, str(trained_dir), probe, model)[0]
    diff = (megatron - reference).abs().max().item()
    same = diff <= LOGITS_ATOL
    print(
        f"    transformers on the BF16 export vs Megatron on the same weights: max |dlogit| "
        f"{diff:.2e}  {'PASS' if same else 'FAIL'}"
    )
    return ok and same


def _nvfp4_logits_worker(rank, world_size, hf_dir, load_dir, calibration, probe, export_dir):
    """Megatron on the saved weights rounded as the quantizer's bf16 model holds them, with the
    NVFP4-experts quantizers calibrated on the same tokens: fake-quantised logits, and whether
    every expert weight the forward uses is the export's dequantized weight."""
    from safetensors import safe_open

    from megatron.minimax.models.minimax_m2 import parity
    from megatron.minimax.models.minimax_m2.export import export_hf_weights
    from megatron.minimax.quantization.calibration import forward_only, quantize_and_calibrate
    from megatron.minimax.quantization.hf_export import quantizer_amax_by_hf_name
    from megatron.minimax.quantization.nvfp4_cpu_backend import nvfp4_fake_quantize
    from megatron.minimax.quantization.nvfp4_format import NVFP4Tensor, dequantize_nvfp4
    from megatron.minimax.quantization.recipes import get_recipe

    loaded = _load_rounded_to_bf16(hf_dir, load_dir)
    recipe = get_recipe("nvfp4-experts")
    with contextlib.redirect_stdout(io.StringIO()):  # modelopt's "Inserted N quantizers"
        quantize_and_calibrate(
            loaded.model, recipe, lambda: forward_only([loaded.model], [calibration])
        )
    logits = parity.megatron_logits(loaded, probe)
    amax = quantizer_amax_by_hf_name(loaded.model, loaded.config, loaded.model_args)
    index = json.loads((Path(export_dir) / "model.safetensors.index.json").read_text())
    same = 0
    for name, weight in export_hf_weights(loaded.model, loaded.config, loaded.model_args):
        if name not in amax:
            continue
        module = name[: -len(".weight")]
        with safe_open(str(Path(export_dir) / index["weight_map"][name]), "pt") as f:
            exported = NVFP4Tensor(*(f.get_tensor(module + s) for s in
                                     (".weight", ".weight_scale", ".weight_scale_2")))  # fmt: skip
        fake = nvfp4_fake_quantize(weight.float(), amax[name].weight)
        same += torch.equal(fake, dequantize_nvfp4(exported))
    return logits, same, len(amax)


def quantize_nvfp4_experts(hf_dir: Path, work: Path) -> bool:
    from safetensors.torch import save_file

    from megatron.minimax.models.minimax_m2.hf_reference import hf_logits, load_hf_reference_model
    from megatron.minimax.models.minimax_m2.parity import next_token_loss
    from megatron.minimax.testing.distributed import run_in_processes

    trained_dir, export_dir = work / "trained_gpt", work / "hf_export_nvfp4"
    calibration = torch.randint(0, 1001, (8, 32), generator=torch.Generator().manual_seed(3))
    tokens_file = work / "calibration_tokens.safetensors"
    save_file({"tokens": calibration}, str(tokens_file))
    _run_tool("tools/quantize_minimax_m2.py", "--load-dir", str(trained_dir), "--hf-reference-dir",
              str(hf_dir), "--calib-tokens-file", str(tokens_file), "--save-dir", str(export_dir),
              "--overwrite", "--no-progress")  # fmt: skip
    quant = json.loads((export_dir / "hf_quant_config.json").read_text())["quantization"]
    print(
        f"\n[6] quantized for serving (tools/quantize_minimax_m2.py, recipe nvfp4-experts, "
        f"calibrated on {calibration.shape[0]}x{calibration.shape[1]} tokens): {export_dir}"
    )
    print(
        f"    {quant['quant_algo']} experts in groups of {quant['group_size']}, "
        f"{len(quant['exclude_modules'])} modules kept BF16 (attention, router gate, embeddings, "
        "lm_head); serve with vllm --quantization modelopt_fp4"
    )
    probe = torch.randint(0, 1001, (2, 32), generator=torch.Generator().manual_seed(2))
    reference = hf_logits(load_hf_reference_model(work / "hf_export_gpt_bf16"), probe)
    logits, same, total = run_in_processes(
        _nvfp4_logits_worker, 1, hf_dir, str(trained_dir), calibration, probe, str(export_dir)
    )[0]
    identical = same == total
    print(
        f"    dequantized export == fake-quantized expert weights of the forward: {same}/{total} "
        f"tensors  {'PASS' if identical else 'FAIL'}"
    )
    loss = next_token_loss(logits, probe).item()
    reference_loss = next_token_loss(reference, probe).item()
    change = abs(loss - reference_loss)
    bounded = change <= NVFP4_DEMO_LOSS_CHANGE
    print(
        f"    NVFP4 experts (fake-quantised forward) vs BF16 export: max |dlogit| "
        f"{(logits - reference).abs().max().item():.3f}, loss {loss:.4f} vs {reference_loss:.4f} "
        f"(|dloss| {change:.4f} <= {NVFP4_DEMO_LOSS_CHANGE})  {'PASS' if bounded else 'FAIL'}"
    )
    return identical and bounded


if __name__ == "__main__":
    sys.exit(main())
