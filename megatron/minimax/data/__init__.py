# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Data preparation for MiniMax-M2: JSONL to Megatron indexed datasets (text and chat with loss
masks); ``tools/preprocess_data.py`` is the command line."""

from megatron.minimax.data.preprocess import (
    ChatSample,
    PreprocessConfig,
    PreprocessError,
    PreprocessStats,
    chat_output_prefixes,
    encode_chat,
    encode_text,
    find_assistant_spans,
    load_tokenizer,
    preprocess,
    text_output_prefix,
)

__all__ = [
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
