# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The HF reference directory's part in an export: its config (checked against the checkpoint,
then written out for the exported format) and its non-weight files (copied: tokenizer, chat
template, generation config, remote code, README, ...)."""

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from megatron.minimax.checkpoint.hf_checkpoint import (
    CONFIG_FILE,
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointError,
    HFCheckpoint,
)

__all__ = ["copy_reference_files", "export_config", "read_reference"]

logger = logging.getLogger(__name__)

# Files of the reference directory that are weights (never copied): safetensors shards and
# their index, and every pickle-based or foreign weight format.
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".pickle",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
)
_SKIPPED_DIRS = {".git", ".cache", ".huggingface"}


def read_reference(path: Path) -> Tuple[Dict, Optional[HFCheckpoint]]:
    """The reference config, and its weights when it has any (a directory with only config and
    tokenizer files is a valid reference for a BF16 export or a release-set FP8 export)."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: reference directory does not exist")
    if (path / INDEX_FILE).is_file() or (path / SINGLE_FILE).is_file():
        reference = HFCheckpoint(path)
        reference.validate()
        return dict(reference.config), reference
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (the reference needs config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: cannot parse JSON: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: not a JSON object")
    return config, None


def export_config(config: Dict, fmt: str, quantization_config: Optional[Dict]) -> Dict:
    out = copy.deepcopy(config)
    out.pop("quantization_config", None)
    if fmt == "fp8":
        out["quantization_config"] = copy.deepcopy(quantization_config)
    # Unquantised tensors are bf16 in both formats (the router is fp32 in both).
    out["torch_dtype"] = "bfloat16"
    if "dtype" in out:
        out["dtype"] = "bfloat16"
    return out


def _allowed_roots(root: Path) -> List[Path]:
    root = root.resolve()
    roots = [root]
    if root.parent.name == "snapshots":
        # huggingface_hub cache: snapshots/<rev>/<file> -> ../../blobs/<sha>.
        roots.append(root.parent.parent / "blobs")
    return roots


def copy_reference_files(reference: Path, destination: Path) -> List[str]:
    """Copies every non-weight file of the reference (tokenizer, chat template, generation config,
    remote code, README, ...) except config.json; returns the relative paths copied."""
    roots = _allowed_roots(reference)
    copied = []
    for dirpath, dirnames, filenames in os.walk(reference):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        rel_dir = Path(dirpath).relative_to(reference)
        for name in sorted(filenames):
            rel = rel_dir / name
            lower = name.lower()
            if rel == Path(CONFIG_FILE) or lower.endswith(_WEIGHT_SUFFIXES):
                continue
            if lower.endswith(".index.json") and (
                ".safetensors." in lower or ".bin." in lower or lower == INDEX_FILE
            ):
                continue
            source = Path(dirpath) / name
            resolved = source.resolve()
            if not resolved.is_file() or not any(resolved.is_relative_to(r) for r in roots):
                logger.warning(
                    "not copying %s: it resolves outside the reference directory", source
                )
                continue
            (destination / rel_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(resolved, destination / rel)
            copied.append(rel.as_posix())
    return copied
