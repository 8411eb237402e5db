# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Tokenise JSONL into Megatron indexed datasets for MiniMax-M2 pretraining and SFT.

Two modes, both reading one JSON object per line and writing through megatron-core's
:class:`~megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder`:

**text** (pretraining). Each value under a ``json_keys`` key is tokenised as plain text (no BOS,
special-token strings in the text are matched as special tokens, as in ``tokenizer(text)``),
optionally followed by the tokenizer's EOS id (``[e~[``, 200020 for MiniMax-M2). Output per key
``K``: ``{prefix}_{K}_document.bin/.idx``, one sequence (= one document) per non-empty value.

**chat** (SFT). Each row holds an OpenAI-style conversation under ``messages`` (the key is
configurable) and optionally a ``tools`` list; messages are ``{"role": "system" | "user" |
"assistant" | "tool", "content": ..., "reasoning_content": ..., "tool_calls": [...]}``. The
conversation is rendered with the tokenizer's own chat template
(``tokenizer.apply_chat_template``), so the tokens are exactly what the template produces, and
tokenised with a fast tokenizer with ``return_offsets_mapping``. Output, two indexed datasets with
the same number of sequences and the same sequence lengths:

* ``{prefix}_chat_document.bin/.idx``: token ids (dtype from the vocabulary size: uint16 below
  65500 ids, else int32);
* ``{prefix}_chat_loss_mask.bin/.idx``: uint8, ``1`` where the token is to be trained on, ``0``
  elsewhere. Sequence ``i`` of the mask aligns element by element with sequence ``i`` of the
  tokens: ``mask[j]`` says whether token ``j`` is a training target (the label at input position
  ``j - 1`` after the usual one-token shift).

The mask is ``1`` exactly on the assistant turns' trainable text: everything after the ``]~b]ai\\n``
role header up to and including the turn's end-of-turn token ``[e~[`` (reasoning block
``<think>\\n...\\n</think>\\n\\n``, content, ``<minimax:tool_call>`` block, ``[e~[``). It is ``0``
on the BOS ``]~!b[``, every role header, the system, user and tool turns, and the ``\\n`` after
each ``[e~[`` (the template makes it part of the next turn). Spans are found on the rendered text
(the source of truth) and mapped to tokens by character offsets; a token is masked in only when its
whole character span lies inside an assistant span, so a token that merges the header's ``\\n``
with the start of the content stays ``0``.

MiniMax-M2's template renders reasoning only for assistant turns after the last user message;
earlier assistant turns lose their ``<think>`` block. By default one sample per conversation is
written, rendered in full: its last round (the last user message and the assistant/tool turns after
it) keeps its reasoning, earlier assistant turns contribute their content and tool calls only. With
``split_multiturn`` one sample is written per round instead, rendered up to and including that
round's last assistant turn and masked on that round's assistant turns only, so every turn's
reasoning is trained with the context the model sees when it generates that turn. Messages after
the conversation's last assistant turn carry no loss and are not rendered (a trailing user
message would also make the template drop the last turn's reasoning).

Rows are processed in chunks by a process pool; results are consumed in input order, so the output
is byte-identical for any number of workers. Outputs are written under temporary names and renamed
into place at the end, so an interrupted run never leaves a partial dataset under the final name.
"""

import json
import logging
import multiprocessing
import os
import re
import sys
import time
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy
from tqdm import tqdm
from transformers import AutoTokenizer

from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

__all__ = [
    "ASSISTANT_HEADER",
    "BOS_TOKEN",
    "END_OF_TURN",
    "ROLE_PREFIX",
    "ChatSample",
    "PreprocessConfig",
    "PreprocessError",
    "PreprocessStats",
    "chat_output_prefixes",
    "encode_chat",
    "encode_text",
    "find_assistant_spans",
    "load_tokenizer",
    "preprocess",
    "text_output_prefix",
]

logger = logging.getLogger(__name__)

BOS_TOKEN = "]~!b["
"""MiniMax-M2 beginning of conversation (id 200034)."""

ROLE_PREFIX = "]~b]"
"""Starts every turn (id 200019); the role name after it is ordinary text."""

END_OF_TURN = "[e~["
"""End of turn, also the tokenizer's EOS (id 200020)."""

ASSISTANT_HEADER = ROLE_PREFIX + "ai\n"
"""Header of an assistant turn; the trainable text starts right after it."""

MODES = ("text", "chat")
ROLES = ("system", "user", "assistant", "tool")

_DEFAULT_JSON_KEYS = {"text": ("text",), "chat": ("messages",)}
_TOOLS_KEY = "tools"


class PreprocessError(Exception):
    """Bad input, bad path or bad data; the message is one line, fit for a CLI error."""


# ---------------------------------------------------------------------------------------------
# Output names
# ---------------------------------------------------------------------------------------------


def text_output_prefix(output_prefix: str, json_key: str) -> str:
    """Indexed-dataset prefix of text mode: ``{output_prefix}_{json_key}_document``."""
    return f"{output_prefix}_{json_key}_document"


def chat_output_prefixes(output_prefix: str) -> Tuple[str, str]:
    """Indexed-dataset prefixes of chat mode: ``(tokens, loss mask)``."""
    return f"{output_prefix}_chat_document", f"{output_prefix}_chat_loss_mask"


# ---------------------------------------------------------------------------------------------
# Tokenizer and encoding
# ---------------------------------------------------------------------------------------------


def load_tokenizer(tokenizer_dir: str, chat: bool = False) -> Any:
    """Load a HF tokenizer from a local directory, never from the hub.

    Args:
        tokenizer_dir: Directory with ``tokenizer.json`` / ``tokenizer_config.json``.
        chat: Also require what chat mode needs: a fast tokenizer (character offsets) and a chat
            template that renders MiniMax-M2 turns.

    Returns:
        The tokenizer.

    Raises:
        PreprocessError: if the directory does not exist or does not hold a usable tokenizer.
    """
    if not os.path.isdir(tokenizer_dir):
        raise PreprocessError(f"tokenizer directory not found: {tokenizer_dir}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except Exception as exc:  # transformers raises many types for unusable directories
        raise PreprocessError(
            f"cannot load a tokenizer from {tokenizer_dir}: {_one_line(exc)}"
        ) from None
    if chat:
        if not getattr(tokenizer, "is_fast", False):
            raise PreprocessError(
                f"chat mode needs a fast tokenizer (tokenizer.json) for character offsets; "
                f"{tokenizer_dir} has a slow one"
            )
        if not getattr(tokenizer, "chat_template", None):
            raise PreprocessError(f"the tokenizer in {tokenizer_dir} has no chat template")
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        try:
            spans = find_assistant_spans(tokenizer.apply_chat_template(probe, tokenize=False))
            if len(spans) != 1:
                raise ValueError(
                    f"one assistant message rendered as {len(spans)} {ASSISTANT_HEADER!r} turns"
                )
        except Exception as exc:
            raise PreprocessError(
                f"the chat template in {tokenizer_dir} does not render MiniMax-M2 turns "
                f"({ROLE_PREFIX}role ... {END_OF_TURN}): {_one_line(exc)}"
            ) from None
    return tokenizer


def encode_text(tokenizer: Any, text: str, eod_id: Optional[int] = None) -> numpy.ndarray:
    """Token ids of ``text`` (no BOS), then ``eod_id`` if given and the text is not empty.

    Args:
        tokenizer: A HF tokenizer.
        text: The document.
        eod_id: Id to append after the document, usually ``tokenizer.eos_token_id``.

    Returns:
        int64 array; empty for an empty document (no EOD either, so it can be skipped).
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids and eod_id is not None:
        ids.append(eod_id)
    return numpy.asarray(ids, dtype=numpy.int64)


@dataclass
class ChatSample:
    """One training sequence of chat mode.

    Attributes:
        tokens: int64 token ids.
        loss_mask: uint8, same length; 1 on tokens that are training targets.
    """

    tokens: numpy.ndarray
    loss_mask: numpy.ndarray


def find_assistant_spans(rendered: str) -> List[Tuple[int, int]]:
    """Character spans of the assistant turns' trainable text in a rendered MiniMax-M2 conversation.

    The text must be ``[BOS]`` followed by turns, each ``]~b]{role}...[e~[`` plus ``\\n`` (the last
    turn's ``\\n`` may be missing), with exactly one ``[e~[`` per turn.

    Args:
        rendered: Output of the chat template.

    Returns:
        ``[start, end)`` per assistant turn in order: from right after ``]~b]ai\\n`` to right after
        the turn's ``[e~[``.

    Raises:
        ValueError: if the text does not have that structure, e.g. because a message contains a
            control string such as ``[e~[`` or ``]~b]``.
    """
    starts = [m.start() for m in re.finditer(re.escape(ROLE_PREFIX), rendered)]
    if not starts:
        raise ValueError(f"no {ROLE_PREFIX} turn in the rendered conversation")
    if rendered[: starts[0]] not in ("", BOS_TOKEN) or rendered.count(BOS_TOKEN) > 1:
        raise ValueError(f"{BOS_TOKEN} is not only at the start of the rendered conversation")
    spans = []
    for i, start in enumerate(starts):
        last = i + 1 == len(starts)
        end = len(rendered) if last else starts[i + 1]
        turn = rendered[start:end]
        eot = turn.find(END_OF_TURN)
        eot_end = eot + len(END_OF_TURN)
        well_formed = (
            eot >= 0
            and turn.count(END_OF_TURN) == 1
            and (turn[eot_end:] == "\n" or (last and eot_end == len(turn)))
        )
        if not well_formed:
            raise ValueError(
                f"turn at character {start} ({turn[:24]!r}...) is not closed by exactly one "
                f"{END_OF_TURN} plus a newline; does a message contain {ROLE_PREFIX} or "
                f"{END_OF_TURN}?"
            )
        if turn.startswith(ASSISTANT_HEADER):
            spans.append((start + len(ASSISTANT_HEADER), start + eot_end))
    return spans


def _mask_from_offsets(
    offsets: Sequence[Tuple[int, int]], spans: Sequence[Tuple[int, int]]
) -> numpy.ndarray:
    """1 for every token whose character span lies inside one of ``spans``.

    Containment rather than overlap keeps a token that straddles a span boundary out, and also
    works for tokenizers that trim whitespace from offsets (an all-space token then gets an empty
    span at a position inside the turn).
    """
    offsets_array = numpy.asarray(offsets, dtype=numpy.int64).reshape(-1, 2)
    mask = numpy.zeros(len(offsets_array), dtype=numpy.uint8)
    for start, end in spans:
        mask[(offsets_array[:, 0] >= start) & (offsets_array[:, 1] <= end)] = 1
    return mask


def _normalize_messages(messages: Any) -> List[Dict[str, Any]]:
    """Validated shallow copies of the messages, with JSON-string tool arguments parsed.

    OpenAI data stores ``tool_calls[*].function.arguments`` as a JSON string; MiniMax-M2's template
    iterates them as a mapping to write one ``<parameter>`` per argument.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {i} is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}, expected one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            # The template renders a system message only in first position and drops others.
            raise ValueError(f"message {i} is a system message; only the first may be")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ValueError(f"message {i} content must be a string, a list of parts or null")
        copy = dict(message)
        if role == "assistant" and copy.get("tool_calls"):
            copy["tool_calls"] = [_normalize_tool_call(call, i) for call in copy["tool_calls"]]
        out.append(copy)
    return out


def _normalize_tool_call(call: Any, index: int) -> Dict[str, Any]:
    """A tool call with its ``arguments`` as a mapping."""
    if not isinstance(call, Mapping):
        raise ValueError(f"message {index} has a tool call that is not an object")
    call = dict(call)
    holder = dict(call["function"]) if isinstance(call.get("function"), Mapping) else call
    arguments = holder.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise ValueError(f"message {index} has tool call arguments that are not JSON") from None
    if arguments is not None and not isinstance(arguments, Mapping):
        raise ValueError(f"message {index} has tool call arguments that are not an object")
    holder["arguments"] = arguments or {}
    if holder is not call:
        call["function"] = holder
    return call


def _render_sample(
    tokenizer: Any,
    messages: List[Dict[str, Any]],
    tools: Optional[List[Any]],
    num_assistant: int,
    num_trained: int,
) -> ChatSample:
    """Render ``messages``, tokenise, and mask the last ``num_trained`` of its assistant turns."""
    rendered = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=False
    )
    spans = find_assistant_spans(rendered)
    if len(spans) != num_assistant:
        raise ValueError(
            f"the rendered conversation has {len(spans)} assistant turns for {num_assistant} "
            f"assistant messages; does a message contain {ASSISTANT_HEADER!r}?"
        )
    encoding = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    tokens = numpy.asarray(encoding["input_ids"], dtype=numpy.int64)
    mask = _mask_from_offsets(encoding["offset_mapping"], spans[len(spans) - num_trained :])
    return ChatSample(tokens=tokens, loss_mask=mask)


def encode_chat(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Optional[List[Any]] = None,
    split_multiturn: bool = False,
) -> List[ChatSample]:
    """Tokens and loss masks of one conversation (see the module docstring for the semantics).

    Args:
        tokenizer: A fast HF tokenizer whose chat template renders MiniMax-M2 turns.
        messages: OpenAI-style messages.
        tools: Tool schemas passed to the template, as in ``apply_chat_template(tools=...)``.
        split_multiturn: One sample per round (user message plus the assistant and tool turns after
            it), each trained on that round's assistant turns only, instead of one sample for the
            whole conversation.

    Returns:
        The samples in conversation order; empty if there is no assistant message.

    Raises:
        ValueError: for malformed messages, template errors (as raised by the template) or a
            rendering without the MiniMax-M2 turn structure.
    """
    normalized = _normalize_messages(list(messages))
    if tools is not None and not isinstance(tools, list):
        raise ValueError(f"{_TOOLS_KEY} must be a list")
    # Rounds of assistant message indices; a new round starts at every user message.
    rounds: List[List[int]] = [[]]
    for i, message in enumerate(normalized):
        if message["role"] == "user":
            rounds.append([])
        elif message["role"] == "assistant":
            rounds[-1].append(i)
    rounds = [r for r in rounds if r]
    if not rounds:
        return []
    if not split_multiturn:
        last = rounds[-1][-1]
        total = sum(len(r) for r in rounds)
        return [_render_sample(tokenizer, normalized[: last + 1], tools, total, total)]
    samples = []
    seen = 0
    for assistant_indices in rounds:
        seen += len(assistant_indices)
        prefix = normalized[: assistant_indices[-1] + 1]
        samples.append(_render_sample(tokenizer, prefix, tools, seen, len(assistant_indices)))
    return samples


# ---------------------------------------------------------------------------------------------
# Configuration and results
# ---------------------------------------------------------------------------------------------


@dataclass
class PreprocessConfig:
    """What :func:`preprocess` reads, how it tokenises, and where it writes.

    Attributes:
        input_path: JSONL file, one JSON object per line (blank lines are ignored).
        output_prefix: Output path prefix; see :func:`text_output_prefix` and
            :func:`chat_output_prefixes`. Its directory must exist.
        tokenizer_dir: Local HF tokenizer directory.
        mode: ``"text"`` or ``"chat"``.
        json_keys: Keys to read; default ``("text",)`` in text mode, ``("messages",)`` in chat mode
            (exactly one key there).
        append_eod: Text mode: append the tokenizer's EOS id to every document.
        split_multiturn: Chat mode: one sample per round; see :func:`encode_chat`.
        workers: Worker processes; 1 encodes in this process.
        chunk_size: Rows per task sent to a worker.
        max_documents: Stop after this many input rows.
        progress: Show a progress bar on stderr.
    """

    input_path: str
    output_prefix: str
    tokenizer_dir: str
    mode: str = "text"
    json_keys: Optional[Sequence[str]] = None
    append_eod: bool = False
    split_multiturn: bool = False
    workers: int = 1
    chunk_size: int = 256
    max_documents: Optional[int] = None
    progress: bool = False

    def resolved_json_keys(self) -> Tuple[str, ...]:
        """``json_keys``, or the mode's default."""
        return tuple(self.json_keys) if self.json_keys else _DEFAULT_JSON_KEYS[self.mode]

    def validate(self) -> None:
        """Check options and paths (not the tokenizer's content).

        Raises:
            PreprocessError: on the first problem found.
        """
        if self.mode not in MODES:
            raise PreprocessError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not os.path.isfile(self.input_path):
            raise PreprocessError(f"input file not found: {self.input_path}")
        if not os.path.isdir(self.tokenizer_dir):
            raise PreprocessError(f"tokenizer directory not found: {self.tokenizer_dir}")
        out_dir = os.path.dirname(self.output_prefix) or "."
        if not os.path.basename(self.output_prefix):
            raise PreprocessError(
                f"output prefix must not end with a separator: {self.output_prefix}"
            )
        if not os.path.isdir(out_dir):
            raise PreprocessError(f"output directory does not exist: {out_dir}")
        keys = self.resolved_json_keys()
        if any(not key for key in keys) or len(set(keys)) != len(keys):
            raise PreprocessError("json keys must be non-empty and distinct")
        if self.mode == "chat" and len(keys) != 1:
            raise PreprocessError("chat mode reads exactly one json key (the messages list)")
        if self.append_eod and self.mode != "text":
            raise PreprocessError(
                f"append_eod applies to text mode only; chat samples already end with "
                f"{END_OF_TURN}"
            )
        if self.split_multiturn and self.mode != "chat":
            raise PreprocessError("split_multiturn applies to chat mode only")
        for name in ("workers", "chunk_size"):
            if getattr(self, name) < 1:
                raise PreprocessError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_documents is not None and self.max_documents < 1:
            raise PreprocessError(f"max_documents must be at least 1, got {self.max_documents}")


@dataclass
class PreprocessStats:
    """Summary of a :func:`preprocess` run.

    Attributes:
        rows: Input rows read (non-blank lines).
        sequences: Sequences written, summed over text-mode keys; chat samples in chat mode.
        tokens: Tokens written, summed over text-mode keys (EOD included).
        loss_tokens: Chat mode: tokens with loss mask 1.
        skipped: Empty text values (text mode) or conversations without an assistant message
            (chat mode); they write nothing.
        output_prefixes: Prefixes of the indexed datasets written.
        seconds: Wall time.
    """

    rows: int = 0
    sequences: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    skipped: int = 0
    output_prefixes: List[str] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EncodeSettings:
    """What a worker needs; picklable for spawn-started pools."""

    tokenizer_dir: str
    mode: str
    json_keys: Tuple[str, ...]
    eod_id: Optional[int]
    split_multiturn: bool


@dataclass
class _ChunkResult:
    """Encoded rows of one chunk, in order, or the first row error.

    ``rows`` holds per row: text mode, one array per json key (possibly empty); chat mode, a list
    of :class:`ChatSample`.
    """

    rows: List[Any] = field(default_factory=list)
    error: Optional[Tuple[int, str]] = None


_WORKER: Dict[str, Any] = {}


def _init_worker(settings: _EncodeSettings) -> None:
    """Pool initializer: load the tokenizer once per process."""
    _WORKER["settings"] = settings
    _WORKER["tokenizer"] = load_tokenizer(settings.tokenizer_dir, chat=settings.mode == "chat")


def _encode_row(raw: bytes, settings: _EncodeSettings, tokenizer: Any) -> Any:
    """Encode one JSONL line; raises ValueError with a message for the user."""
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 at byte {exc.start}") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for key in settings.json_keys:
        if key not in row:
            raise ValueError(
                f"missing key {key!r} (keys present: {', '.join(sorted(row)) or 'none'})"
            )
    if settings.mode == "text":
        arrays = []
        for key in settings.json_keys:
            if not isinstance(row[key], str):
                raise ValueError(f"key {key!r} must be a string, got {type(row[key]).__name__}")
            arrays.append(encode_text(tokenizer, row[key], settings.eod_id))
        return arrays
    return encode_chat(
        tokenizer,
        row[settings.json_keys[0]],
        tools=row.get(_TOOLS_KEY),
        split_multiturn=settings.split_multiturn,
    )


def _encode_chunk(chunk: List[Tuple[int, bytes]]) -> _ChunkResult:
    """Encode a chunk of ``(line number, raw line)`` in the worker's process."""
    settings: _EncodeSettings = _WORKER["settings"]
    tokenizer = _WORKER["tokenizer"]
    result = _ChunkResult()
    for line_number, raw in chunk:
        try:
            result.rows.append(_encode_row(raw, settings, tokenizer))
        except Exception as exc:  # any failure is reported with its line; the run then stops
            result.error = (line_number, _one_line(exc))
            break
    return result


def _read_chunks(
    path: str, chunk_size: int, max_rows: Optional[int]
) -> Iterator[Tuple[List[Tuple[int, bytes]], int]]:
    """Yield ``(chunk of (line number, raw line), bytes read for it)``, skipping blank lines."""
    with open(path, "rb") as f:
        chunk: List[Tuple[int, bytes]] = []
        nbytes = 0
        rows = 0
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                nbytes += len(line)
                continue
            if max_rows is not None and rows >= max_rows:
                break
            nbytes += len(line)
            chunk.append((line_number, line))
            rows += 1
            if len(chunk) == chunk_size:
                yield chunk, nbytes
                chunk, nbytes = [], 0
        if chunk or nbytes:
            yield chunk, nbytes


def _ordered_imap(
    settings: _EncodeSettings, chunks: Iterator[Tuple[List[Tuple[int, bytes]], int]], workers: int
) -> Iterator[Tuple[_ChunkResult, int]]:
    """Encode chunks on ``workers`` processes, yielding results in input order.

    ``Pool.imap`` feeds its task queue from a thread that reads the whole input ahead of the
    workers, so memory would grow with the file; here at most ``2 * workers`` chunks are in flight.
    """
    if workers == 1:
        _init_worker(settings)
        for chunk, nbytes in chunks:
            yield _encode_chunk(chunk), nbytes
        return
    # Not fork: this process may already run threads (torch, the tokenizers thread pool), and
    # forking a multi-threaded process can deadlock the child. A fork server preloaded with this
    # module (and so torch, megatron-core and transformers' AutoTokenizer) pays the slow imports
    # once instead of once per spawned worker.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # "__main__" first, as in the default list: a CLI script can set up warning filters there.
        context.set_forkserver_preload(["__main__", __name__])
    else:
        context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(settings,)) as pool:
        pending: Deque[Tuple[Any, int]] = deque()
        for chunk, nbytes in chunks:
            pending.append((pool.apply_async(_encode_chunk, (chunk,)), nbytes))
            if len(pending) >= 2 * workers:
                result, done_bytes = pending.popleft()
                yield result.get(), done_bytes
        while pending:
            result, done_bytes = pending.popleft()
            yield result.get(), done_bytes


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


class _AtomicIndexedDataset:
    """An ``IndexedDatasetBuilder`` writing to temporary names, renamed into place by ``commit``."""

    def __init__(self, prefix: str, dtype: type) -> None:
        self.prefix = prefix
        suffix = f".tmp-{os.getpid()}"
        self.final_bin, self.final_idx = prefix + ".bin", prefix + ".idx"
        self.tmp_bin, self.tmp_idx = self.final_bin + suffix, self.final_idx + suffix
        self.builder = IndexedDatasetBuilder(self.tmp_bin, dtype=dtype)

    def add(self, array: numpy.ndarray) -> None:
        """Append one sequence as one document."""
        self.builder.add_document(array, [int(array.size)])

    def finalize(self) -> None:
        """Close the data file and write the index, still under the temporary names."""
        self.builder.finalize(self.tmp_idx)

    def commit_bin(self) -> None:
        """Move the data file into place."""
        os.replace(self.tmp_bin, self.final_bin)

    def commit_idx(self) -> None:
        """Move the index into place; the dataset is complete from here on."""
        os.replace(self.tmp_idx, self.final_idx)

    def discard(self) -> None:
        """Close and delete whatever was written."""
        if not self.builder.data_file.closed:
            self.builder.data_file.close()
        for path in (self.tmp_bin, self.tmp_idx):
            if os.path.exists(path):
                os.remove(path)


def _commit(datasets: Sequence[_AtomicIndexedDataset]) -> None:
    """Rename data files first and indices last, the first dataset's index at the very end.

    ``IndexedDataset.exists`` needs both files, so a reader never sees a new index without its
    data; in chat mode the token dataset (first) appears only after its loss mask.
    """
    for dataset in datasets:
        dataset.finalize()
    for dataset in datasets:
        dataset.commit_bin()
    for dataset in reversed(datasets):
        dataset.commit_idx()


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def preprocess(config: PreprocessConfig) -> PreprocessStats:
    """Tokenise ``config.input_path`` into indexed datasets; see the module docstring.

    Args:
        config: The run's configuration.

    Returns:
        Counts and the output prefixes.

    Raises:
        PreprocessError: for bad options, paths, tokenizer or data (the message names the input
            line); nothing is left under the output names in that case.
    """
    config.validate()
    started = time.monotonic()
    chat = config.mode == "chat"
    keys = config.resolved_json_keys()
    tokenizer = load_tokenizer(config.tokenizer_dir, chat=chat)
    eod_id = None
    if config.append_eod:
        eod_id = tokenizer.eos_token_id
        if eod_id is None:
            raise PreprocessError(f"the tokenizer in {config.tokenizer_dir} has no EOS token")
    settings = _EncodeSettings(
        tokenizer_dir=config.tokenizer_dir,
        mode=config.mode,
        json_keys=keys,
        eod_id=eod_id,
        split_multiturn=config.split_multiturn,
    )
    token_dtype = DType.optimal_dtype(len(tokenizer))
    if chat:
        prefixes = list(chat_output_prefixes(config.output_prefix))
        dtypes = [token_dtype, numpy.uint8]
    else:
        prefixes = [text_output_prefix(config.output_prefix, key) for key in keys]
        dtypes = [token_dtype] * len(keys)
    stats = PreprocessStats(output_prefixes=prefixes)

    datasets: List[_AtomicIndexedDataset] = []
    bar = tqdm(
        total=os.path.getsize(config.input_path),
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"tokenizing ({config.mode})",
        file=sys.stderr,
        disable=not config.progress,
        dynamic_ncols=True,
    )
    try:
        for prefix, dtype in zip(prefixes, dtypes):
            datasets.append(_AtomicIndexedDataset(prefix, dtype))
        chunks = _read_chunks(config.input_path, config.chunk_size, config.max_documents)
        encode_started = time.monotonic()
        # closing(): on an error the pool is torn down now, not when the generator is collected.
        with closing(_ordered_imap(settings, chunks, config.workers)) as results:
            for result, nbytes in results:
                for row in result.rows:
                    stats.rows += 1
                    _write_row(row, chat, datasets, stats)
                if result.error is not None:
                    line_number, message = result.error
                    raise PreprocessError(f"{config.input_path}:{line_number}: {message}")
                bar.update(nbytes)
                elapsed = max(time.monotonic() - encode_started, 1e-9)
                rate = f"{stats.tokens / elapsed:.3g}"
                bar.set_postfix(docs=stats.rows, tokens=stats.tokens, tok_s=rate, refresh=False)
        _commit(datasets)
    except BaseException:
        for dataset in datasets:
            dataset.discard()
        raise
    finally:
        bar.close()
    stats.seconds = time.monotonic() - started
    logger.info(
        "%d rows -> %d sequences, %d tokens%s in %.1f s; %d skipped; wrote %s",
        stats.rows,
        stats.sequences,
        stats.tokens,
        f" ({stats.loss_tokens} with loss)" if chat else "",
        stats.seconds,
        stats.skipped,
        ", ".join(prefixes),
    )
    if stats.skipped:
        logger.warning(
            "skipped %d %s",
            stats.skipped,
            "conversations without an assistant message" if chat else "empty documents",
        )
    return stats


def _write_row(
    row: Any, chat: bool, datasets: List[_AtomicIndexedDataset], stats: PreprocessStats
) -> None:
    """Append one encoded row to the output datasets and count it."""
    if chat:
        if not row:
            stats.skipped += 1
        for sample in row:
            datasets[0].add(sample.tokens)
            datasets[1].add(sample.loss_mask)
            stats.sequences += 1
            stats.tokens += int(sample.tokens.size)
            stats.loss_tokens += int(sample.loss_mask.sum())
        return
    for dataset, tokens in zip(datasets, row):
        if tokens.size == 0:
            stats.skipped += 1
            continue
        dataset.add(tokens)
        stats.sequences += 1
        stats.tokens += int(tokens.size)


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
