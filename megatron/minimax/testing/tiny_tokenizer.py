# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
r"""A tiny byte-level BPE tokenizer with MiniMax-M2's special tokens and chat-template structure.

:func:`build_tiny_tokenizer` trains a byte-level BPE (the ``tokenizers`` library) on a small
in-memory corpus, appends MiniMax-M2's special tokens after the regular vocabulary (as the release
does: regular ids first, then ``]!p~[``, ..., ``]~!b[``, ``<think>`` ...) and attaches a Jinja
chat template with the structure of the stock MiniMax-M2.5 template (architecture notes,
section 6)::

    ]~!b[]~b]system\n{system}[e~[\n
    ]~b]user\n{text}[e~[\n
    ]~b]ai\n<think>\n{reasoning}\n</think>\n\n{content}[e~[\n
    ]~b]tool\n<response>{result}</response>[e~[\n
    generation prompt: ]~b]ai\n<think>\n

with the ``<think>`` block only for assistant turns after the last user message, tool calls as
``\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="k">v</parameter>\n</invoke>\n
</minimax:tool_call>`` after the content, and consecutive tool messages sharing one ``]~b]tool``.

The directory it writes loads with ``transformers.AutoTokenizer.from_pretrained(dir)`` as a fast
tokenizer, so it exercises the same code paths as the released tokenizer. All ids are below
:data:`TINY_MAX_VOCAB` (1001, the tiny test model's ``vocab_size``). The build is deterministic:
the same arguments always give byte-identical ``tokenizer.json`` files.
"""

import logging
from pathlib import Path
from typing import List, Tuple, Union

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from megatron.minimax.data.preprocess import BOS_TOKEN, END_OF_TURN, ROLE_PREFIX

__all__ = [
    "BOS_TOKEN",
    "DEFAULT_SYSTEM_PROMPT",
    "EOS_TOKEN",
    "ROLE_PREFIX",
    "SPECIAL_TOKENS",
    "TINY_CHAT_TEMPLATE",
    "TINY_MAX_VOCAB",
    "build_tiny_tokenizer",
]

logger = logging.getLogger(__name__)

EOS_TOKEN = END_OF_TURN
"""The tokenizer's EOS is MiniMax-M2's end-of-turn token ``[e~[``."""

SPECIAL_TOKENS: Tuple[str, ...] = (
    "]!p~[",
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<reponame>",
    ROLE_PREFIX,
    END_OF_TURN,
    "]!d~[",
    "<function_call>",
    "]<]image[>[",
    "]<]video[>[",
    "]<]vision pad[>[",
    BOS_TOKEN,
    "<think>",
    "</think>",
    "<minimax:tool_call>",
    "</minimax:tool_call>",
)
"""The release's special tokens that the chat format and the data tools use, in release id order.

The release has 54; the ones left out (more FIM and multimodal markers) play no part in text or
chat data, and a smaller set keeps the tiny vocabulary small.
"""

TINY_MAX_VOCAB = 1001
"""Every id of the tiny tokenizer is below this (the tiny test model's ``vocab_size``)."""

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Your name is MiniMax-M2.5 and is built by MiniMax."
)
"""System text the stock M2.5 template writes when the conversation has no system message."""

# Written for this project after the stock template's documented structure. Whitespace control
# (`{%-`/`-%}`) everywhere so that only the explicit string literals reach the output.
TINY_CHAT_TEMPLATE = r"""
{%- macro visible_text(content) -%}
    {%- if content is none -%}
    {%- elif content is string -%}{{- content -}}
    {%- else -%}
        {%- for part in content -%}
            {%- if part is string -%}{{- part -}}
            {%- elif part.type == 'text' -%}{{- part.text -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- set turns = messages -%}
{%- set system_text = '' -%}
{%- if turns and turns[0].role == 'system' -%}
    {%- set system_text = visible_text(turns[0].content) -%}
    {%- set turns = turns[1:] -%}
{%- endif -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in turns -%}
    {%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{{- ']~!b[]~b]system\n' -}}
{%- if system_text -%}{{- system_text -}}
{%- else -%}
    {{- 'You are a helpful assistant. Your name is MiniMax-M2.5 and is built by MiniMax.' -}}
{%- endif -%}
{%- if tools -%}
    {{- '\n\n# Tools\nYou may call one or more tools to assist with the user query.\n' -}}
    {{- 'Here are the tools available in JSONSchema format:\n\n<tools>\n' -}}
    {%- for tool in tools -%}
        {%- set schema = tool.function if tool.function is defined else tool -%}
        {{- '<tool>' ~ (schema | tojson) ~ '</tool>\n' -}}
    {%- endfor -%}
    {{- '</tools>\n\nWhen making tool calls, use XML format to invoke tools and pass ' -}}
    {{- 'parameters:\n' -}}
    {{- '\n<minimax:tool_call>\n<invoke name="tool-name">\n' -}}
    {{- '<parameter name="param-key">param-value</parameter>\n</invoke>\n</minimax:tool_call>' -}}
{%- endif -%}
{{- '[e~[\n' -}}
{%- for m in turns -%}
    {%- if m.role == 'user' -%}
        {{- ']~b]user\n' ~ visible_text(m.content) ~ '[e~[\n' -}}
    {%- elif m.role == 'assistant' -%}
        {%- set content = visible_text(m.content) -%}
        {%- set reasoning = '' -%}
        {%- if m.reasoning_content is string -%}
            {%- set reasoning = m.reasoning_content -%}
        {%- elif '</think>' in content -%}
            {%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') -%}
            {%- set content = content.split('</think>')[-1].strip('\n') -%}
        {%- endif -%}
        {{- ']~b]ai\n' -}}
        {%- if reasoning and loop.index0 > ns.last_user -%}
            {{- '<think>\n' ~ reasoning ~ '\n</think>\n\n' -}}
        {%- endif -%}
        {{- content -}}
        {%- if m.tool_calls -%}
            {{- '\n<minimax:tool_call>\n' -}}
            {%- for call in m.tool_calls -%}
                {%- set fn = call.function if call.function is defined else call -%}
                {{- '<invoke name="' ~ fn.name ~ '">\n' -}}
                {%- for key, value in (fn.arguments or {}) | items -%}
                    {{- '<parameter name="' ~ key ~ '">' -}}
                    {{- value if value is string else (value | tojson) -}}
                    {{- '</parameter>\n' -}}
                {%- endfor -%}
                {{- '</invoke>\n' -}}
            {%- endfor -%}
            {{- '</minimax:tool_call>' -}}
        {%- endif -%}
        {{- '[e~[\n' -}}
    {%- elif m.role == 'tool' -%}
        {%- if loop.first or turns[loop.index0 - 1].role != 'tool' -%}
            {{- ']~b]tool' -}}
        {%- endif -%}
        {{- '\n<response>' ~ visible_text(m.content) ~ '</response>' -}}
        {%- if loop.last or turns[loop.index0 + 1].role != 'tool' -%}{{- '[e~[\n' -}}{%- endif -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- ']~b]ai\n<think>\n' -}}{%- endif -%}
""".strip()
"""Chat template with the stock MiniMax-M2.5 template's structure (see the module docstring)."""

# A cl100k/Qwen2-style split: letters with at most one leading non-letter, digits one at a time,
# punctuation runs with their trailing newlines, newline runs, other whitespace.
_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_REGULAR_VOCAB_SIZE = 720

_CORPUS: Tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Your name is MiniMax and you answer questions.",
    "What is the weather like in Paris today? It is sunny and warm.",
    "Let me think about this step by step before I answer the user.",
    "The user asks for the sum of two numbers, so I add them: 12 + 30 = 42.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    'import json\ndata = json.loads(\'{"city": "Paris", "days": 3}\')\n',
    "system user ai tool assistant response think reasoning answer question",
    "user ai user ai system tool user ai tool ai system user ai",
    '<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n</invoke>\n',
    '<tools>\n<tool>{"name": "search", "parameters": {"type": "object"}}</tool>\n</tools>',
    "The tool returned a result. The temperature is 21 degrees and the sky is clear.",
    "Hello! How can I help you today? I can write code, explain ideas and plan tasks.",
    "Thanks, that was useful. Can you also tell me about Berlin and London?",
    "First, I need to find the right tool. Then I call it with the city name.",
    "Megatron trains large language models with tensor, pipeline and expert parallelism.",
    "A mixture of experts routes every token to the top two experts of eight.",
    "Tokens, documents, samples and loss masks are written to indexed datasets.",
    "She said: \"It's fine, we'll see.\" They're here and I'm ready; you've won.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2026-01-01",
    "Une phrase en français, ein deutscher Satz, una frase en español.",
    "Unicode test: café, naïve, Zürich, 東京, Москва, emoji 🙂.",
    "    indented line\n\ttabbed line\n\n\nblank lines above\n",
    "JSON: {\"role\": \"assistant\", \"content\": \"Sure, here it is.\"}",
)


def _train_bpe() -> Tokenizer:
    """Byte-level BPE trained on :data:`_CORPUS`, with the special tokens appended after it."""
    tokenizer = Tokenizer(models.BPE())
    # NFC as in Qwen2-family tokenizers; the data tools must cope with a normalizer being present.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Untrimmed offsets: every character of the text belongs to exactly one token's span.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_REGULAR_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # Repetition gives frequent words and the role names enough counts to become single tokens.
    corpus: List[str] = list(_CORPUS) * 3
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def build_tiny_tokenizer(out_dir: Union[str, Path]) -> Path:
    """Write a tiny MiniMax-M2-style tokenizer to ``out_dir``.

    Args:
        out_dir: Directory to create (parents included) or reuse; existing tokenizer files in it
            are overwritten.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`, loadable with
        ``transformers.AutoTokenizer.from_pretrained(out_dir)``.

    Raises:
        RuntimeError: if the trained vocabulary does not fit in :data:`TINY_MAX_VOCAB` ids.
    """
    # transformers is heavy to import; only the build needs it.
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = _train_bpe()
    vocab_size = backend.get_vocab_size(with_added_tokens=True)
    if vocab_size > TINY_MAX_VOCAB:
        raise RuntimeError(f"tiny tokenizer has {vocab_size} ids, more than {TINY_MAX_VOCAB}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=END_OF_TURN,
        # The release has no pad token; the usual choice for training is the end-of-turn token.
        pad_token=END_OF_TURN,
        model_max_length=1 << 20,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out))
    logger.debug("wrote tiny tokenizer with %d ids to %s", vocab_size, out)
    return out
