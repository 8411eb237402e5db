# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Calibration tokens from a tokens file, a Megatron indexed dataset and a JSONL file."""

import json

import numpy
import pytest
import torch
from safetensors.torch import save_file

from megatron.minimax.quantization.calibration_data import CalibrationData, load_calibration_tokens


def _indexed_dataset(prefix, documents):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for document in documents:
        builder.add_document(torch.tensor(document, dtype=torch.int32), [len(document)])
    builder.finalize(prefix + ".idx")
    return prefix


def test_indexed_dataset_documents_are_concatenated_and_cut(tmp_path):
    prefix = _indexed_dataset(str(tmp_path / "calib"), [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11]])
    tokens = load_calibration_tokens(CalibrationData(path=prefix, num_samples=2, seq_length=4), 100)
    assert tokens.dtype == torch.int64
    assert tokens.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    # Fewer tokens than asked: as many whole sequences as there are.
    tokens = load_calibration_tokens(CalibrationData(path=prefix, num_samples=9, seq_length=5), 100)
    assert tokens.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from megatron.minimax.testing.tiny_tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tiny")


def test_jsonl_is_tokenized_with_eos_after_each_document(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    path = tmp_path / "calib.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": t}) for t in ["hello world", "", "the cat"]) + "\n"
    )
    data = CalibrationData(
        path=str(path), tokenizer_dir=str(tokenizer_dir), num_samples=1, seq_length=3
    )
    tokens = load_calibration_tokens(data, 1001)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected = tokenizer("hello world", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    assert tokens.tolist() == [expected[:3]]


def test_tokens_file_is_used_as_is(tmp_path):
    path = tmp_path / "tokens.safetensors"
    save_file({"tokens": torch.arange(12).reshape(3, 4)}, str(path))
    tokens = load_calibration_tokens(CalibrationData(tokens_file=str(path)), 100)
    assert tokens.tolist() == torch.arange(12).reshape(3, 4).tolist()


@pytest.mark.parametrize(
    "documents, seq_length, message",
    [([], 4, "holds no tokens"), ([[1, 2]], 4, "holds 2 tokens, fewer than one sequence of 4")],
)
def test_empty_or_short_data_is_refused_in_one_line(tmp_path, documents, seq_length, message):
    prefix = _indexed_dataset(str(tmp_path / "calib"), documents)
    with pytest.raises(ValueError, match=message) as e:
        load_calibration_tokens(CalibrationData(path=prefix, seq_length=seq_length), 100)
    assert "\n" not in str(e.value)


def test_bad_inputs_are_refused(tmp_path, tokenizer_dir):
    prefix = _indexed_dataset(str(tmp_path / "calib"), [[1, 2, 300]])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 100\)"):
        load_calibration_tokens(CalibrationData(path=prefix, seq_length=3), 100)
    with pytest.raises(ValueError, match="no .*missing.bin"):
        load_calibration_tokens(CalibrationData(path=str(tmp_path / "missing")), 100)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"content": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not a JSON object with a 'text' string"):
        load_calibration_tokens(
            CalibrationData(path=str(path), tokenizer_dir=str(tokenizer_dir)), 100
        )
    with pytest.raises(ValueError, match="exactly one"):
        CalibrationData()
