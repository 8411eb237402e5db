# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Supervised fine-tuning on the chat data of ``tools/preprocess_data.py --mode chat``.

Chat mode writes two indexed datasets with the same sequence lengths: ``P_chat_document`` (token
ids) and ``P_chat_loss_mask`` (uint8, ``mask[j] == 1`` iff token ``j`` is assistant text, i.e. a
training target). megatron-core's :class:`~megatron.core.datasets.gpt_dataset.GPTDataset` reads
only the tokens and would train on every token. :class:`SFTDataset` is a ``GPTDataset`` over
``P_chat_document`` that also reads ``P_chat_loss_mask`` and restricts the loss to assistant
tokens; everything else (sample packing, document/sample/shuffle indices and their cache, tokens,
labels, attention mask, position ids, ``cu_seqlens``) is the parent's, unchanged.

Alignment
---------

``GPTDataset`` packs documents back to back into one stream (in the order of its document index)
and cuts it into samples of ``S = sequence_length`` inputs. With ``add_extra_token_to_sequence``
(the default) sample ``k`` reads ``S + 1`` stream tokens ``text = stream[b_k : b_k + S + 1]``,
where ``b_{k+1} = b_k + S``, so consecutive samples overlap by one token, and returns::

    tokens = text[:-1]      labels = text[1:]      (label t = text[t + 1])

The mask is read from ``P_chat_loss_mask`` through the very same ``(document, offset, length)``
slices (``GPTDataset``'s own sample query, run with the mask as low-level dataset), giving
``mask_text`` aligned element by element with ``text``. Label ``t`` is the stream token at
``b_k + t + 1``, so it is trained iff that token is an assistant token::

    loss_mask[t] = gpt_loss_mask[t] * mask_text[t + 1]

where ``gpt_loss_mask`` is what ``GPTDataset`` returns for the same sample and config (its EOD
and padding masking is kept). Consequences:

* Every stream token but the first is the label of exactly one sample (the overlap token is the
  last label of sample ``k`` and the first input of sample ``k + 1``), so a document cut between
  samples loses no assistant token and trains none twice.
* Across a document boundary inside a sample (token ``t`` ends conversation A, ``t + 1`` starts
  conversation B) the label is B's first token, the BOS ``]~!b[`` or a role header, whose mask is
  always 0: predicting the next conversation from the previous one is never trained.
* ``eod_mask_loss`` zeroes the loss where the *input* ``tokens[t]`` is the tokenizer's EOD. For
  MiniMax-M2 that is the end-of-turn token ``[e~[``; in chat data it is always followed by the
  turn's ``\\n`` or by the next conversation's first token, both mask 0, so ``eod_mask_loss``
  does not change the SFT loss mask. The ``[e~[`` that closes an assistant turn is a *label* with
  mask 1 and stays trained, so the model learns to stop.
* Padding (the last validation sample with ``drop_last_partial_validation_sequence=False``) has
  label mask 0; the ``idx=None`` padding sample has an all-zero loss mask, as in ``GPTDataset``.
* Without ``add_extra_token_to_sequence`` a sample reads ``S`` tokens, ``labels`` is ``text``
  shifted left with the last label a pad, and ``loss_mask[t] = gpt_loss_mask[t] *
  mask_text[t + 1]`` for ``t < S - 1`` and ``0`` for ``t = S - 1``: the first token of every
  sample is never a label, as in ``GPTDataset``.

``reset_position_ids`` and ``reset_attention_mask`` are refused: ``GPTDataset`` resets at every
EOD token, and in chat data the EOD (``[e~[``) ends every *turn*, not every conversation, so
they would hide earlier turns from the model. ``inter_document_masking`` (``cu_seqlens`` from the
true document lengths) isolates packed conversations correctly and is supported.

Use it wherever ``GPTDataset`` is used, with the same :class:`GPTDatasetConfig` and the token
prefixes (``P_chat_document``) as the blend; see
:func:`sft_train_valid_test_datasets_provider`.
"""

import copy
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy
import torch

from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.object_storage_utils import ObjectStorageConfig, is_object_storage_path
from megatron.core.datasets.utils import Split
from megatron.minimax.data.preprocess import chat_output_prefixes

__all__ = [
    "SFTDataset",
    "loss_mask_prefix",
    "open_loss_mask_dataset",
    "sft_train_valid_test_datasets_provider",
]

# The suffixes chat mode appends to its output prefix, taken from the writer so they cannot drift.
TOKENS_SUFFIX, LOSS_MASK_SUFFIX = chat_output_prefixes("")


def loss_mask_prefix(token_prefix: str) -> str:
    """The loss-mask dataset prefix that belongs to a chat token dataset prefix.

    Args:
        token_prefix: ``P_chat_document``, as written by ``tools/preprocess_data.py --mode chat``.

    Returns:
        ``P_chat_loss_mask``.

    Raises:
        ValueError: if ``token_prefix`` does not end with ``_chat_document``.
    """
    if not token_prefix.endswith(TOKENS_SUFFIX):
        raise ValueError(
            f"SFT data path {token_prefix!r} is not a chat token dataset: it must end with "
            f"{TOKENS_SUFFIX!r} (written by tools/preprocess_data.py --mode chat, next to its "
            f"{LOSS_MASK_SUFFIX!r} loss mask)"
        )
    return token_prefix[: -len(TOKENS_SUFFIX)] + LOSS_MASK_SUFFIX


def _open_indexed_dataset(path_prefix: str, config: GPTDatasetConfig) -> IndexedDataset:
    """Open an indexed dataset the way ``GPTDataset.build_low_level_dataset`` opens the tokens.

    ``sequences_per_dataset`` and ``token_dtype_code`` are not passed: they describe the token
    dataset (its dtype in particular), not the uint8 mask, whose header is read instead.
    """
    if is_object_storage_path(path_prefix):
        assert config.object_storage_cache_path is not None
        return IndexedDataset(
            path_prefix,
            multimodal=False,
            mmap=config.mmap_bin_files,
            object_storage_config=ObjectStorageConfig(
                path_to_idx_cache=config.object_storage_cache_path
            ),
        )
    return IndexedDataset(path_prefix, multimodal=False, mmap=config.mmap_bin_files)


def open_loss_mask_dataset(
    token_dataset: IndexedDataset, config: GPTDatasetConfig
) -> IndexedDataset:
    """Open the loss mask of a chat token dataset and check that it matches the tokens.

    Args:
        token_dataset: The ``P_chat_document`` dataset.
        config: The dataset config (for ``mmap_bin_files`` and object storage).

    Returns:
        The ``P_chat_loss_mask`` dataset: uint8, one sequence per token sequence, same lengths.

    Raises:
        ValueError: if the token prefix is not a chat prefix, or the mask is not uint8 or its
            sequence count or lengths differ from the tokens'.
        FileNotFoundError: if the mask dataset does not exist.
    """
    token_prefix = token_dataset.path_prefix
    mask_prefix = loss_mask_prefix(token_prefix)
    if not IndexedDataset.exists(mask_prefix):
        raise FileNotFoundError(
            f"SFT loss mask {mask_prefix}.bin/.idx not found for the token dataset "
            f"{token_prefix}; tools/preprocess_data.py --mode chat writes both"
        )
    mask_dataset = _open_indexed_dataset(mask_prefix, config)
    if mask_dataset.index.dtype != numpy.uint8:
        raise ValueError(
            f"SFT loss mask {mask_prefix} holds {numpy.dtype(mask_dataset.index.dtype).name}, "
            f"expected uint8 0/1 values"
        )
    num_tokens, num_masks = len(token_dataset), len(mask_dataset)
    if num_tokens != num_masks:
        raise ValueError(
            f"SFT loss mask {mask_prefix} has {num_masks} sequences but the token dataset "
            f"{token_prefix} has {num_tokens}"
        )
    token_lengths, mask_lengths = token_dataset.sequence_lengths, mask_dataset.sequence_lengths
    differ = numpy.flatnonzero(token_lengths != mask_lengths)
    if differ.size:
        first = int(differ[0])
        raise ValueError(
            f"SFT loss mask {mask_prefix} does not align with the token dataset {token_prefix}: "
            f"{differ.size} sequence lengths differ, the first is sequence {first} with "
            f"{token_lengths[first]} tokens and {mask_lengths[first]} mask values"
        )
    return mask_dataset


def _check_config(config: GPTDatasetConfig) -> None:
    """Refuse the options that are wrong for chat data; see the module docstring."""
    resets = [
        name for name in ("reset_position_ids", "reset_attention_mask") if getattr(config, name)
    ]
    if resets:
        raise ValueError(
            f"SFTDataset does not support {' and '.join(resets)}: GPTDataset resets them at every "
            f"EOD token, and in chat data the EOD ([e~[) ends every turn, not every conversation; "
            f"use inter_document_masking to keep packed conversations apart"
        )


class SFTDataset(GPTDataset):
    """A ``GPTDataset`` over chat tokens whose loss mask covers only assistant tokens.

    Built like ``GPTDataset`` (same constructor, same config, same indices), from a
    ``P_chat_document`` prefix; the loss mask is read from the sibling ``P_chat_loss_mask``. Each
    sample is ``GPTDataset``'s sample with ``loss_mask[t]`` multiplied by the mask value of token
    ``t + 1`` (the label); see the module docstring for the alignment.

    Args:
        indexed_dataset: The token dataset ``P_chat_document``.
        dataset_path: Its path prefix.
        indexed_indices: The sequence indices of this split.
        num_samples: The number of samples to draw, None for one epoch.
        index_split: The split.
        config: The GPT dataset config.

    Raises:
        ValueError, FileNotFoundError: see :func:`open_loss_mask_dataset`; ValueError also for
            ``reset_position_ids`` / ``reset_attention_mask``.
    """

    def __init__(
        self,
        indexed_dataset: IndexedDataset,
        dataset_path: Optional[str],
        indexed_indices: numpy.ndarray,
        num_samples: Optional[int],
        index_split: Split,
        config: GPTDatasetConfig,
    ) -> None:
        # Before the parent builds (and caches) the sample indices, so bad data fails fast.
        _check_config(config)
        self.loss_mask_dataset = open_loss_mask_dataset(indexed_dataset, config)
        super().__init__(
            indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config
        )
        # The parent reads tokens with self.dataset.get(document, offset, length) inside its
        # sample query. A shallow copy of this dataset that differs only in its low-level dataset
        # runs that same query over the mask: same indices (shared), same slices, same padding,
        # with no second copy of the sample-indexing logic to keep in sync.
        self._loss_mask_reader = copy.copy(self)
        self._loss_mask_reader.dataset = self.loss_mask_dataset

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: GPTDatasetConfig) -> IndexedDataset:
        """The token dataset, after checking that its loss mask exists and matches.

        The builder calls this once per prefix before building any split, so a missing or
        mismatched mask is reported here, not as a cache-directory error of the constructor.

        Args:
            dataset_path: The ``P_chat_document`` prefix.
            config: The config.

        Returns:
            The token ``IndexedDataset``, as ``GPTDataset.build_low_level_dataset`` returns it.
        """
        _check_config(config)
        token_dataset = GPTDataset.build_low_level_dataset(dataset_path, config)
        open_loss_mask_dataset(token_dataset, config)
        return token_dataset

    def __getitem__(self, idx: Optional[int]) -> Dict[str, torch.Tensor]:
        """``GPTDataset``'s sample with the loss restricted to assistant labels.

        Args:
            idx: The sample index, or None for a padding sample (all-zero loss mask).

        Returns:
            The same keys and tensors as ``GPTDataset.__getitem__``; only ``loss_mask`` differs.
        """
        sample = super().__getitem__(idx)
        if idx is None:
            # The parent already zeroed the loss of the padding sample.
            return sample
        sample["loss_mask"] = sample["loss_mask"] * self._label_mask(idx)
        return sample

    def _label_mask(self, idx: int) -> torch.Tensor:
        """1.0 where label ``t`` of sample ``idx`` is an assistant token, else 0.0."""
        mask_text, _, document_lengths = (
            self._loss_mask_reader._query_document_sample_shuffle_indices(idx)
        )
        # Past the real data the query appends the pad id (possibly -1), not mask values.
        num_real = sum(document_lengths)
        is_target = numpy.zeros(mask_text.shape[0], dtype=numpy.float32)
        is_target[:num_real] = mask_text[:num_real] != 0
        # Label t is token t + 1 of the sample text. Without the extra token the last label is
        # the parent's pad, and the token after the sample is not read.
        label_mask = is_target[1:]
        if not self.config.add_extra_token_to_sequence:
            label_mask = numpy.append(label_mask, numpy.float32(0.0))
        return torch.from_numpy(label_mask)


def sft_train_valid_test_datasets_provider(
    train_val_test_num_samples: Sequence[Optional[int]],
    config: GPTDatasetConfig,
    is_built_on_rank: Callable[[], bool] = lambda: True,
) -> List[Optional[Union[SFTDataset, BlendedDataset]]]:
    """Build the train, validation and test SFT datasets, as ``pretrain_gpt`` builds GPT ones.

    ``BlendedMegatronDatasetBuilder(SFTDataset, ...)`` instead of ``GPTDataset``: blends,
    ``split``, ``blend_per_split``, caching and distributed building behave the same. A
    ``pretrain()`` provider wraps it, e.g.::

        def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
            config = core_gpt_dataset_config_from_args(get_args())  # blend of P_chat_document
            return sft_train_valid_test_datasets_provider(
                train_val_test_num_samples,
                config,
                partial(is_dataset_built_on_rank, vp_stage=vp_stage),
            )

    Args:
        train_val_test_num_samples: Samples per split (None: one epoch).
        config: The GPT dataset config; its blend(s) name ``P_chat_document`` prefixes.
        is_built_on_rank: Whether this rank reads data (called only with torch.distributed up).

    Returns:
        ``[train, valid, test]``: an ``SFTDataset``, a ``BlendedDataset`` of them, or None each.

    Raises:
        ValueError: for mock data (``blend`` and ``blend_per_split`` unset), which has no loss
            masks, and the errors of :class:`SFTDataset`.
    """
    if config.mock:
        raise ValueError("SFT needs chat data with loss masks: set blend or blend_per_split")
    return BlendedMegatronDatasetBuilder(
        SFTDataset, list(train_val_test_num_samples), is_built_on_rank, config
    ).build()
