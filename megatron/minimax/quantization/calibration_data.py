# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Calibration token sequences from the data formats this project already uses.

* a safetensors tokens file (int64 ``tokens`` [batch, seq], as ``verify_minimax_m2.py
  --tokens-file``): used as is;
* a Megatron indexed dataset prefix (``tools/preprocess_data.py`` output, ``<prefix>.bin/.idx``);
* a JSONL file whose lines hold a ``"text"`` (tokenised with the model's tokenizer, each document
  followed by the EOS token, as ``preprocess_data.py --append-eod`` does).

Documents are concatenated in file order and cut into consecutive sequences of the requested
length; the first ``num_samples`` are used.
"""

import json
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy
import torch

__all__ = ["CalibrationData", "load_calibration_tokens"]


@dataclass(frozen=True)
class CalibrationData:
    """Where the calibration tokens come from."""

    path: Optional[str] = None
    """Megatron indexed dataset prefix, or a ``.jsonl`` file."""
    tokens_file: Optional[str] = None
    """safetensors file with int64 ``tokens`` [batch, seq] (exclusive with ``path``)."""
    tokenizer_dir: Optional[str] = None
    """HF tokenizer directory, for JSONL."""
    num_samples: int = 128
    """Sequences to calibrate on (``path`` only)."""
    seq_length: int = 2048
    """Tokens per sequence (``path`` only)."""
    json_key: str = "text"
    """JSONL field holding each document's text."""

    def __post_init__(self):
        if (self.path is None) == (self.tokens_file is None):
            raise ValueError("give exactly one of the calibration data path and the tokens file")
        if self.num_samples < 1:
            raise ValueError(
                f"the number of calibration samples must be >= 1, got {self.num_samples}"
            )
        if self.seq_length < 2:
            raise ValueError(f"the calibration sequence length must be >= 2, got {self.seq_length}")


def _jsonl_documents(data: CalibrationData) -> Iterator[numpy.ndarray]:
    from megatron.minimax.data.preprocess import PreprocessError, encode_text, load_tokenizer

    if data.tokenizer_dir is None:
        raise ValueError(f"{data.path}: JSONL calibration data needs a tokenizer directory")
    try:
        tokenizer = load_tokenizer(data.tokenizer_dir)
    except PreprocessError as e:
        raise ValueError(str(e)) from None
    with open(data.path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[data.json_key]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(
                    f"{data.path}:{number}: not a JSON object with a {data.json_key!r} string"
                ) from None
            if not isinstance(text, str):
                raise ValueError(f"{data.path}:{number}: {data.json_key!r} is not a string")
            yield encode_text(tokenizer, text, tokenizer.eos_token_id)


def _indexed_documents(prefix: str) -> Iterator[numpy.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for suffix in (".bin", ".idx"):
        if not os.path.isfile(prefix + suffix):
            raise ValueError(
                f"{prefix}: no {prefix + suffix} (expected a Megatron indexed dataset prefix or a "
                f".jsonl file)"
            )
    if os.path.getsize(prefix + ".bin") == 0:
        return  # no documents (and nothing numpy could map)
    try:
        dataset = IndexedDataset(prefix, mmap=True)
    except Exception as e:  # corrupt index: struct, value and assertion errors
        raise ValueError(f"{prefix}: cannot read the indexed dataset ({e})") from None
    for i in range(len(dataset)):
        yield numpy.asarray(dataset[i], dtype=numpy.int64)


def load_calibration_tokens(data: CalibrationData, vocab_size: int) -> torch.Tensor:
    """int64 ``[samples, seq]`` calibration tokens.

    Raises:
        ValueError: one line naming the file, when it cannot be read, holds no tokens, holds
            fewer than one sequence, or holds ids outside ``[0, vocab_size)``.
    """
    if data.tokens_file is not None:
        from megatron.minimax.launch import read_tokens_file

        return read_tokens_file(data.tokens_file, vocab_size)[0]
    if data.path.endswith(".jsonl"):
        if not os.path.isfile(data.path):
            raise ValueError(f"{data.path}: no such file")
        documents = _jsonl_documents(data)
    else:
        documents = _indexed_documents(data.path)
    wanted = data.num_samples * data.seq_length
    pieces, total = [], 0
    for document in documents:
        pieces.append(document[: wanted - total])
        total += len(pieces[-1])
        if total >= wanted:
            break
    if total == 0:
        raise ValueError(f"{data.path}: the calibration data holds no tokens")
    if total < data.seq_length:
        raise ValueError(
            f"{data.path}: the calibration data holds {total} tokens, fewer than one sequence of "
            f"{data.seq_length}; lower the calibration sequence length or add data"
        )
    tokens = torch.from_numpy(numpy.concatenate(pieces))
    samples = total // data.seq_length
    tokens = tokens[: samples * data.seq_length].reshape(samples, data.seq_length)
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(f"{data.path}: token ids must lie in [0, {vocab_size})")
    return tokens
