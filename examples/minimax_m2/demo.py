# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""MiniMax-M2 on Megatron-core, end to end on a laptop CPU (``make demo``).

1. Build a tiny MiniMax-M2 checkpoint in the released on-disk format (FP8 128x128 blocks,
   fp32 router, sharded safetensors + index).
2. Load it into Megatron at two parallel layouts (gloo processes) through the weight table and
   compare fp32 logits and loss with transformers' MiniMaxM2ForCausalLM on the same weights.
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

WORLD_SIZE = 4


def _parity_worker(rank, world_size, hf_dir, layouts, tokens):
    from megatron.minimax.checkpoint.hf_checkpoint import HFCheckpoint
    from megatron.minimax.models.minimax_m2 import parity

    checkpoint = HFCheckpoint(hf_dir)
    out = {}
    for layout in layouts:
        parity.initialize_layout(layout)
        loaded = parity.build_from_hf(
            checkpoint.config, lambda name: checkpoint.get(name, torch.float32), layout
        )
        out[str(layout)] = parity.megatron_logits(loaded, tokens)
    return out if rank == 0 else None


def show_parity(hf_dir: Path, layouts) -> bool:
    from megatron.minimax.models.minimax_m2 import parity
    from megatron.minimax.models.minimax_m2.hf_reference import hf_logits, load_hf_reference_model
    from megatron.minimax.testing.distributed import run_in_processes

    reference_model = load_hf_reference_model(hf_dir)
    vocab = reference_model.config.vocab_size
    tokens = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    reference = hf_logits(reference_model, tokens)
    megatron = run_in_processes(_parity_worker, WORLD_SIZE, hf_dir, layouts, tokens)[0]

    header = f"{'layout':<20} {'max|dlogit|':>12} {'max rel':>10} {'loss Megatron':>14} " \
             f"{'loss HF':>10} {'|dloss|':>10}  verdict"  # fmt: skip
    print(header)
    print("-" * len(header))
    all_ok = True
    for layout in layouts:
        r = parity.compare_logits(megatron[str(layout)], reference, tokens)
        ok = r.ok()
        all_ok &= ok
        print(
            f"{str(layout):<20} {r.max_abs_diff:>12.2e} {r.max_rel_diff:>10.2e} "
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="out/demo", help="Where the demo writes its files.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
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
    print(f"    {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
          f"{config['num_attention_heads']} q / {config['num_key_value_heads']} kv heads of "
          f"{config['head_dim']}, rotary_dim {config['rotary_dim']}, {config['num_local_experts']} "
          f"experts top-{config['num_experts_per_tok']}, vocab {config['vocab_size']}")
    print(f"    files: {', '.join(files)}")

    layouts = [ParallelLayout(), ParallelLayout(tp=2, ep=2, etp=1)]
    print(f"\n[2] Megatron vs HF parity ({WORLD_SIZE} gloo processes per layout, data parallel "
          "takes the rest):")
    ok = show_parity(hf_dir, layouts)
    print(f"\ndone in {time.time() - start:.0f} s: {'all layouts within tolerance' if ok else 'PARITY FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
