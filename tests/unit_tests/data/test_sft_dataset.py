# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Tests for megatron/minimax/data/sft_dataset.py on chat data from preprocess(mode="chat")."""

import json
import pickle
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import numpy
import pytest
import torch
from transformers import AutoTokenizer

from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron.core.tokenizers import MegatronTokenizer
from megatron.minimax.data import PreprocessConfig, chat_output_prefixes, preprocess
from megatron.minimax.data.sft_dataset import (
    SFTDataset,
    loss_mask_prefix,
    sft_train_valid_test_datasets_provider,
)
from megatron.minimax.testing.tiny_tokenizer import build_tiny_tokenizer

# The tiny tokenizer's pad is its EOD; megatron-core then pads with -1 and warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:The pad token id in the tokenizer collides")

SEQ_LENGTH = 40
"""Shorter than most conversations (they get cut) and longer than the short ones (packed)."""


def _conversations() -> List[Dict]:
    """Conversations of varied length and structure, ASCII only (so partial decodes are exact)."""
    rows = []
    for i in range(10):
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Short."},
                    {"role": "user", "content": f"hi {i}"},
                    {"role": "assistant", "content": f"ok {i}."},
                ]
            }
        )
        if i % 3 == 0:
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": f"What is {i}+{i}?"},
                        {
                            "role": "assistant",
                            "reasoning_content": "Dropped: not after the last user turn.",
                            "content": f"It is {2 * i}.",
                        },
                        {"role": "user", "content": "And times two?"},
                        {
                            "role": "assistant",
                            "reasoning_content": f"Multiply {i} by two.",
                            "content": f"That is {2 * i}.",
                        },
                    ]
                }
            )
        if i % 4 == 1:
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": "Use tools."},
                        {"role": "user", "content": f"Weather in city {i}?"},
                        {
                            "role": "assistant",
                            "reasoning_content": "Call the tool.",
                            "content": "Let me check.",
                            "tool_calls": [
                                {
                                    "type": "function",
                                    "function": {
                                        "name": "get_weather",
                                        "arguments": json.dumps({"city": f"city{i}"}),
                                    },
                                }
                            ],
                        },
                        {"role": "tool", "content": "sunny"},
                        {"role": "assistant", "content": f"City {i} is sunny today."},
                    ],
                    "tools": [
                        {
                            "type": "function",
                            "function": {"name": "get_weather", "parameters": {"type": "object"}},
                        }
                    ],
                }
            )
        if i % 5 == 2:
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": "Tell me a long story about a fox."},
                        {
                            "role": "assistant",
                            "reasoning_content": "Write a long story.",
                            "content": " ".join(
                                f"The quick brown fox {j} jumps." for j in range(8)
                            ),
                        },
                    ]
                }
            )
    return rows


CONVERSATIONS = _conversations()


def assistant_texts(messages: List[Dict]) -> List[str]:
    """The trained text of each assistant turn, as the tiny MiniMax-M2 template renders it.

    Reasoning is rendered only after the last user message; a tool call follows the content.
    """
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    texts = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        text = ""
        if i > last_user and message.get("reasoning_content"):
            text += f"<think>\n{message['reasoning_content']}\n</think>\n\n"
        text += message["content"]
        for call in message.get("tool_calls", []):
            function = call["function"]
            parameters = "".join(
                f'<parameter name="{key}">{value}</parameter>\n'
                for key, value in json.loads(function["arguments"]).items()
            )
            text += (
                f'\n<minimax:tool_call>\n<invoke name="{function["name"]}">\n{parameters}'
                f"</invoke>\n</minimax:tool_call>"
            )
        texts.append(text + "[e~[")
    return texts


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    return str(build_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def megatron_tokenizer(tokenizer_dir):
    return MegatronTokenizer.from_pretrained(
        tokenizer_dir, metadata_path={"library": "huggingface"}
    )


def _write_chat_dataset(directory: Path, name: str, rows: List[Dict], tokenizer_dir: str) -> str:
    src = directory / f"{name}.jsonl"
    src.write_text("".join(json.dumps(row) + "\n" for row in rows))
    preprocess(PreprocessConfig(str(src), str(directory / name), tokenizer_dir, mode="chat"))
    return chat_output_prefixes(str(directory / name))[0]


@pytest.fixture(scope="module")
def chat_prefix(tmp_path_factory, tokenizer_dir) -> str:
    return _write_chat_dataset(tmp_path_factory.mktemp("sft"), "sft", CONVERSATIONS, tokenizer_dir)


@pytest.fixture(scope="module")
def raw(chat_prefix) -> Tuple[List[numpy.ndarray], List[numpy.ndarray]]:
    """Token and mask sequences of the chat dataset, read directly."""
    tokens = IndexedDataset(chat_prefix)
    masks = IndexedDataset(loss_mask_prefix(chat_prefix))
    return (
        [numpy.array(tokens[i], dtype=numpy.int64) for i in range(len(tokens))],
        [numpy.array(masks[i], dtype=numpy.int64) for i in range(len(masks))],
    )


def make_config(prefix, tokenizer, cache: Path, **overrides) -> GPTDatasetConfig:
    kwargs = dict(
        random_seed=1234,
        sequence_length=SEQ_LENGTH,
        blend=([prefix], None),
        split="100,0,0",
        path_to_cache=str(cache),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
    )
    kwargs.update(overrides)
    return GPTDatasetConfig(**kwargs)


def build_pair(config, sizes) -> Tuple[List, List]:
    """The SFT and the GPT datasets of each split, both built by the builder from one config."""
    sft = sft_train_valid_test_datasets_provider(sizes, config)
    gpt = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    return sft, gpt


class Stream:
    """A split's packed token stream (documents in document-index order), rebuilt from raw data.

    ``GPTDataset`` sample ``j`` starts at stream position ``starts[j]``; this is how the test
    knows, independently of the dataset's query code, which raw token (and mask value) every
    position of a sample is.
    """

    def __init__(self, dataset: GPTDataset, raw_tokens, raw_masks) -> None:
        self.documents = numpy.asarray(dataset.document_index)
        lengths = numpy.array([len(raw_tokens[d]) for d in self.documents])
        self.doc_starts = numpy.concatenate([[0], numpy.cumsum(lengths)])
        self.tokens = numpy.concatenate([raw_tokens[d] for d in self.documents])
        self.mask = numpy.concatenate([raw_masks[d] for d in self.documents])
        sample_index = numpy.asarray(dataset.sample_index)
        self.starts = self.doc_starts[sample_index[:, 0]] + sample_index[:, 1]

    def window(self, array: numpy.ndarray, begin: int, size: int) -> numpy.ndarray:
        """``array[begin : begin + size]``, zero-filled past the end of the stream."""
        out = numpy.zeros(size, dtype=numpy.int64)
        part = array[begin : begin + size]
        out[: len(part)] = part
        return out


def check_split(sft: SFTDataset, gpt: GPTDataset, raw_tokens, raw_masks) -> Tuple[int, int]:
    """Every sample: SFT == GPT except loss_mask == GPT loss_mask * raw mask of the label.

    Returns:
        The number of trained labels and of padded samples seen.
    """
    assert isinstance(sft, SFTDataset) and type(gpt) is GPTDataset
    assert len(sft) == len(gpt) > 0
    config = sft.config
    extra = int(config.add_extra_token_to_sequence)
    stream = Stream(sft, raw_tokens, raw_masks)
    trained = padded = 0
    for i in range(len(sft)):
        got, ref = sft[i], gpt[i]
        assert got.keys() == ref.keys()
        for key in ref:
            if key != "loss_mask":
                assert torch.equal(got[key], ref[key]), (i, key)
        start = int(stream.starts[int(sft.shuffle_index[i])])
        text = stream.window(stream.tokens, start, SEQ_LENGTH + extra)
        # The reconstruction agrees with the dataset (pad positions read 0 in both).
        assert got["tokens"].tolist() == text[:SEQ_LENGTH].tolist()
        if extra:
            assert got["labels"].tolist() == text[1:].tolist()
        # Label t is stream token start + t + 1; the window is 0 past the stream (padding), and
        # without the extra token the sample's last label is a pad and the window stops before it.
        label_mask = stream.window(stream.mask, start + 1, SEQ_LENGTH - 1 + extra)
        label_mask = numpy.pad(label_mask, (0, 1 - extra))
        expected = ref["loss_mask"] * torch.from_numpy(label_mask).float()
        assert got["loss_mask"].dtype == ref["loss_mask"].dtype
        assert torch.equal(got["loss_mask"], expected), i
        assert set(got["loss_mask"].unique().tolist()) <= {0.0, 1.0}
        trained += int(got["loss_mask"].sum())
        padded += start + SEQ_LENGTH + extra > len(stream.tokens)
    return trained, padded


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------


def test_loss_mask_prefix():
    assert loss_mask_prefix("d/sft_chat_document") == "d/sft_chat_loss_mask"
    assert loss_mask_prefix("s3://b/x_chat_document") == "s3://b/x_chat_loss_mask"
    with pytest.raises(ValueError, match="must end with '_chat_document'"):
        loss_mask_prefix("d/corpus_text_document")


def test_samples_pack_and_cut_documents(chat_prefix, megatron_tokenizer, raw, tmp_path):
    """The fixture exercises what the alignment tests are about."""
    (train, _, _), _ = build_pair(
        make_config(chat_prefix, megatron_tokenizer, tmp_path), [None, None, None]
    )
    sample_index = numpy.asarray(train.sample_index)
    parts = sample_index[1:, 0] - sample_index[:-1, 0] + 1
    assert parts.max() >= 3  # a sample holding pieces of three or more conversations
    assert (sample_index[:, 1] > 0).sum() >= 5  # samples starting inside a conversation
    raw_tokens, raw_masks = raw
    assert len(raw_tokens) == len(CONVERSATIONS)
    assert min(map(len, raw_tokens)) < SEQ_LENGTH < 3 * SEQ_LENGTH < max(map(len, raw_tokens))
    # Every conversation starts with mask 0 (BOS), so no label crossing a boundary is trained.
    assert all(mask[0] == 0 for mask in raw_masks)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"eod_mask_loss": True, "create_attention_mask": False},
        {"add_extra_token_to_sequence": False},
        {"inter_document_masking": True},
    ],
    ids=["default", "eod_mask_loss", "no_extra_token", "inter_document_masking"],
)
def test_matches_gpt_dataset_except_assistant_loss_mask(
    chat_prefix, megatron_tokenizer, raw, tmp_path, overrides
):
    # Three epochs of train (shuffled across epochs) and a padded partial validation sample.
    config = make_config(
        chat_prefix,
        megatron_tokenizer,
        tmp_path,
        split="70,30,0",
        drop_last_partial_validation_sequence=False,
        **overrides,
    )
    (sft_train, sft_valid, sft_test), (gpt_train, gpt_valid, _) = build_pair(config, [200, None, 0])
    assert sft_test is None
    assert len(sft_train) >= 200
    assert len(numpy.asarray(sft_train.document_index)) > 2 * len(sft_train.indices)
    trained, padded = check_split(sft_train, gpt_train, *raw)
    assert trained > 0 and padded == 0
    trained, padded = check_split(sft_valid, gpt_valid, *raw)
    assert trained > 0 and padded == 1  # the partial last validation sample


def test_trained_labels_are_exactly_the_assistant_text(
    chat_prefix, megatron_tokenizer, hf_tokenizer, raw, tmp_path
):
    """Across all samples each assistant token is trained once; decoded, they are the turns."""
    (train, _, _), _ = build_pair(
        make_config(chat_prefix, megatron_tokenizer, tmp_path), [150, None, None]
    )
    raw_tokens, raw_masks = raw
    stream = Stream(train, raw_tokens, raw_masks)
    trained = numpy.zeros(len(stream.tokens), dtype=numpy.int64)
    covered_end = 0
    for i in range(len(train)):
        sample = train[i]
        start = int(stream.starts[int(train.shuffle_index[i])])
        positions = start + 1 + numpy.flatnonzero(sample["loss_mask"].numpy())
        # The label at a trained position is that stream token.
        assert sample["labels"].numpy()[positions - start - 1].tolist() == (
            stream.tokens[positions].tolist()
        )
        trained[positions] += 1
        covered_end = max(covered_end, start + SEQ_LENGTH + 1)
    assert trained.max() == 1  # never trained twice, even where samples meet
    checked = 0
    for k, document in enumerate(stream.documents):
        begin, end = int(stream.doc_starts[k]), int(stream.doc_starts[k + 1])
        if end > covered_end:
            break
        flags = trained[begin:end]
        assert flags.tolist() == raw_masks[document].tolist()
        tokens = stream.tokens[begin:end]
        runs, current = [], []
        for token, flag in zip(tokens.tolist(), flags.tolist()):
            if flag:
                current.append(token)
            elif current:
                runs.append(current)
                current = []
        assert not current  # the trailing newline after the last [e~[ is never trained
        decoded = [hf_tokenizer.decode(run) for run in runs]
        assert decoded == assistant_texts(CONVERSATIONS[document]["messages"]), document
        checked += 1
    assert checked > len(CONVERSATIONS)  # more than one epoch of conversations checked


def test_eod_mask_loss_does_not_change_the_sft_loss(chat_prefix, megatron_tokenizer, tmp_path):
    """In chat data the token after an EOD ([e~[) always has mask 0, so eod_mask_loss is moot."""
    sizes = [60, None, None]
    (plain, _, _), (plain_gpt, _, _) = build_pair(
        make_config(chat_prefix, megatron_tokenizer, tmp_path), sizes
    )
    (eod, _, _), (eod_gpt, _, _) = build_pair(
        make_config(chat_prefix, megatron_tokenizer, tmp_path, eod_mask_loss=True), sizes
    )
    gpt_differs = False
    for i in range(len(plain)):
        assert torch.equal(plain[i]["loss_mask"], eod[i]["loss_mask"])
        gpt_differs |= not torch.equal(plain_gpt[i]["loss_mask"], eod_gpt[i]["loss_mask"])
    assert gpt_differs  # GPTDataset's own mask does change: the property is not vacuous


def test_padding_sample_and_pickling(chat_prefix, megatron_tokenizer, tmp_path):
    (train, _, _), (gpt, _, _) = build_pair(
        make_config(chat_prefix, megatron_tokenizer, tmp_path), [None, None, None]
    )
    padding = train[None]
    assert torch.equal(padding["tokens"], gpt[None]["tokens"])
    assert not padding["loss_mask"].any()
    # DataLoader workers receive a pickled copy; it must read the same mask.
    clone = pickle.loads(pickle.dumps(train))
    for i in range(len(train)):
        assert torch.equal(clone[i]["loss_mask"], train[i]["loss_mask"])
        assert torch.equal(clone[i]["tokens"], train[i]["tokens"])


def test_deferred_index_mmap(chat_prefix, megatron_tokenizer, tmp_path):
    """With the indices memory-mapped lazily from the cache, the mask reader loads them too."""
    (built, _, _), _ = build_pair(
        make_config(chat_prefix, megatron_tokenizer, tmp_path), [None, None, None]
    )
    deferred, _, _ = sft_train_valid_test_datasets_provider(
        [None, None, None],
        make_config(chat_prefix, megatron_tokenizer, tmp_path, defer_npy_index_mmap=True),
    )
    assert deferred.shuffle_index is None and len(deferred) == len(built)
    for i in range(len(built)):
        assert torch.equal(deferred[i]["loss_mask"], built[i]["loss_mask"])
        assert torch.equal(deferred[i]["tokens"], built[i]["tokens"])


def test_blend_of_chat_datasets(chat_prefix, megatron_tokenizer, tokenizer_dir, tmp_path):
    other = _write_chat_dataset(tmp_path, "other", CONVERSATIONS[::-1][:8], tokenizer_dir)
    config = make_config(
        None, megatron_tokenizer, tmp_path, blend=([chat_prefix, other], [0.7, 0.3]), split="8,1,1"
    )
    train, valid, test = sft_train_valid_test_datasets_provider([50, 6, 6], config)
    for blended in (train, valid, test):
        assert isinstance(blended, BlendedDataset)
        assert all(isinstance(ds, SFTDataset) for ds in blended.datasets)
    for i in range(len(train)):
        sample = train[i]
        ds = train.datasets[sample["dataset_id"]]
        direct = ds[int(train.dataset_sample_index[i])]
        assert torch.equal(sample["loss_mask"], direct["loss_mask"])
    assert sum(int(train[i]["loss_mask"].sum()) for i in range(len(train))) > 0


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def _copy_tokens(chat_prefix: str, new_prefix: str) -> str:
    for ext in (".bin", ".idx"):
        shutil.copy(chat_prefix + ext, new_prefix + ext)
    return new_prefix


def _write_mask(prefix: str, sequences: List[numpy.ndarray], dtype=numpy.uint8) -> None:
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for sequence in sequences:
        builder.add_document(numpy.asarray(sequence, dtype=dtype), [len(sequence)])
    builder.finalize(prefix + ".idx")


def _build(prefix: str, tokenizer, cache: Path, **overrides):
    return sft_train_valid_test_datasets_provider(
        [None, None, None], make_config(prefix, tokenizer, cache, **overrides)
    )


def test_missing_loss_mask(chat_prefix, megatron_tokenizer, tmp_path):
    prefix = _copy_tokens(chat_prefix, str(tmp_path / "lonely_chat_document"))
    with pytest.raises(FileNotFoundError, match="lonely_chat_loss_mask.bin/.idx not found"):
        _build(prefix, megatron_tokenizer, tmp_path)


def test_not_a_chat_prefix(chat_prefix, megatron_tokenizer, tmp_path):
    prefix = _copy_tokens(chat_prefix, str(tmp_path / "corpus_text_document"))
    with pytest.raises(ValueError, match="is not a chat token dataset"):
        _build(prefix, megatron_tokenizer, tmp_path)


@pytest.mark.parametrize("problem", ["length", "count", "dtype"])
def test_mismatched_loss_mask(chat_prefix, megatron_tokenizer, raw, tmp_path, problem):
    prefix = _copy_tokens(chat_prefix, str(tmp_path / "bad_chat_document"))
    masks = [m.copy() for m in raw[1]]
    dtype = numpy.uint8
    if problem == "length":
        masks[3] = masks[3][:-1]
        masks[7] = numpy.append(masks[7], 0)
        match = "2 sequence lengths differ, the first is sequence 3 with"
    elif problem == "count":
        masks = masks[:-1]
        match = f"has {len(masks)} sequences but the token dataset .* has {len(masks) + 1}"
    else:
        dtype = numpy.uint16
        match = "holds uint16, expected uint8"
    _write_mask(loss_mask_prefix(prefix), masks, dtype)
    with pytest.raises(ValueError, match=match):
        _build(prefix, megatron_tokenizer, tmp_path)


@pytest.mark.parametrize("flag", ["reset_position_ids", "reset_attention_mask"])
def test_reset_flags_are_refused(chat_prefix, megatron_tokenizer, tmp_path, flag):
    with pytest.raises(ValueError, match=f"does not support {flag}.*ends every turn"):
        _build(chat_prefix, megatron_tokenizer, tmp_path, **{flag: True})


def test_mock_data_is_refused(megatron_tokenizer, tmp_path):
    config = make_config(None, megatron_tokenizer, tmp_path, blend=None, split=None)
    assert config.mock
    with pytest.raises(ValueError, match="SFT needs chat data with loss masks"):
        sft_train_valid_test_datasets_provider([10, None, None], config)
