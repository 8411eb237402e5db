# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Tests for megatron/minimax/testing/tiny_tokenizer.py."""

import json

import pytest
from transformers import AutoTokenizer

from megatron.minimax.testing.tiny_tokenizer import (
    DEFAULT_SYSTEM_PROMPT,
    SPECIAL_TOKENS,
    TINY_MAX_VOCAB,
    build_tiny_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tok"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def test_loads_as_a_fast_tokenizer_with_release_special_tokens(tokenizer_dir, tokenizer):
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == [
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert tokenizer.is_fast
    assert len(tokenizer) < TINY_MAX_VOCAB == 1001
    # As in the release: regular ids first, then the special tokens in release order.
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    first = len(tokenizer) - len(SPECIAL_TOKENS)
    assert ids == list(range(first, len(tokenizer)))
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "]~!b[",
        "[e~[",
        "[e~[",
    )
    assert tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("[e~[")
    for token in ("]~b]", "<think>", "</think>", "<minimax:tool_call>", "</minimax:tool_call>"):
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [
            tokenizer.convert_tokens_to_ids(token)
        ]
    # Role words are ordinary text after the role prefix token, as in the release.
    role = tokenizer("]~b]user", add_special_tokens=False)["input_ids"]
    assert role[0] == tokenizer.convert_tokens_to_ids("]~b]") and len(role) >= 2


def test_byte_level_round_trip(tokenizer):
    text = "Mixed: café Zürich 東京 🙂 \t tabs\n\n  and  spaces, code: x = {'a': [1, 2]}\r\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert max(ids) < TINY_MAX_VOCAB
    assert tokenizer.decode(ids) == text
    # Every byte is representable: nothing maps to an unknown token.
    assert tokenizer.unk_token is None


def test_build_is_deterministic(tmp_path, tokenizer_dir):
    again = build_tiny_tokenizer(tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tokenizer_dir / name).read_bytes()


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_template_system_user_and_generation_prompt(tokenizer):
    assert render(tokenizer, [{"role": "user", "content": "Hi"}], add_generation_prompt=True) == (
        f"]~!b[]~b]system\n{DEFAULT_SYSTEM_PROMPT}[e~[\n]~b]user\nHi[e~[\n]~b]ai\n<think>\n"
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Part one. "}, "Part two."]},
    ]
    assert render(tokenizer, messages) == (
        "]~!b[]~b]system\nBe brief.[e~[\n]~b]user\nPart one. Part two.[e~[\n"
    )


def test_template_reasoning_only_after_the_last_user_message(tokenizer):
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "reasoning_content": "R1", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "reasoning_content": "R2", "content": "A2"},
        {"role": "user", "content": "Q3"},
        {"role": "assistant", "content": "<think>\nR3\n</think>\n\nA3"},  # reasoning in content
    ]
    head = f"]~!b[]~b]system\n{DEFAULT_SYSTEM_PROMPT}[e~[\n"
    assert render(tokenizer, messages) == head + (
        "]~b]user\nQ1[e~[\n]~b]ai\nA1[e~[\n"
        "]~b]user\nQ2[e~[\n]~b]ai\nA2[e~[\n"
        "]~b]user\nQ3[e~[\n]~b]ai\n<think>\nR3\n</think>\n\nA3[e~[\n"
    )
    assert render(tokenizer, messages[:4]) == head + (
        "]~b]user\nQ1[e~[\n]~b]ai\nA1[e~[\n"
        "]~b]user\nQ2[e~[\n]~b]ai\n<think>\nR2\n</think>\n\nA2[e~[\n"
    )


def test_template_tools_tool_calls_and_tool_responses(tokenizer):
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
    messages = [
        {"role": "user", "content": "Time?"},
        {
            "role": "assistant",
            "reasoning_content": "Call it.",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_time", "arguments": {"zone": "UTC", "fmt": [24]}}},
                {"name": "get_date", "arguments": {}},
            ],
        },
        {"role": "tool", "content": "12:00"},
        {"role": "tool", "content": "Monday"},
        {"role": "assistant", "content": "Noon, Monday."},
    ]
    rendered = render(tokenizer, messages, tools=[tool])
    system, rest = rendered.split("[e~[\n", 1)
    assert system.startswith(f"]~!b[]~b]system\n{DEFAULT_SYSTEM_PROMPT}\n\n# Tools\n")
    assert "<tools>\n<tool>" + json.dumps(tool["function"]) + "</tool>\n</tools>" in system
    assert system.endswith("</invoke>\n</minimax:tool_call>")
    assert rest == (
        "]~b]user\nTime?[e~[\n"
        "]~b]ai\n<think>\nCall it.\n</think>\n\n\n<minimax:tool_call>\n"
        '<invoke name="get_time">\n<parameter name="zone">UTC</parameter>\n'
        '<parameter name="fmt">[24]</parameter>\n</invoke>\n'
        '<invoke name="get_date">\n</invoke>\n</minimax:tool_call>[e~[\n'
        "]~b]tool\n<response>12:00</response>\n<response>Monday</response>[e~[\n"
        "]~b]ai\nNoon, Monday.[e~[\n"
    )
