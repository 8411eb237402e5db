# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""Tests for megatron/minimax/data/preprocess.py and tools/preprocess_data.py."""

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy
import pytest
from tokenizers import processors
from transformers import AutoTokenizer

from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.minimax.data import (
    PreprocessConfig,
    PreprocessError,
    chat_output_prefixes,
    encode_chat,
    find_assistant_spans,
    load_tokenizer,
    preprocess,
    text_output_prefix,
)
from megatron.minimax.testing.tiny_tokenizer import build_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[3]
TOOL = REPO_ROOT / "tools" / "preprocess_data.py"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    return str(build_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("preprocess_data_cli", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, rows) -> Path:
    """Rows are dicts (dumped) or raw strings (written as they are)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def masked_runs(tokenizer, tokens, mask) -> List[str]:
    """Decoded maximal runs of tokens with mask 1 (or 0 when ``mask`` is inverted by the caller)."""
    runs, current = [], []
    for token, bit in zip(tokens.tolist(), mask.tolist()):
        if bit:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def read_dataset(prefix: str) -> List[numpy.ndarray]:
    dataset = IndexedDataset(prefix)
    return [numpy.array(dataset[i]) for i in range(len(dataset))]


TWO_ROUNDS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "reasoning_content": "Add two and two.", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "reasoning_content": "Add three and three.", "content": "6."},
]


# ---------------------------------------------------------------------------------------------
# Text mode
# ---------------------------------------------------------------------------------------------


def test_text_round_trip_matches_direct_tokenisation(tmp_path, tokenizer, tokenizer_dir):
    texts = [
        "Hello world.",
        "",  # skipped: no tokens, no EOD
        "Unicode: café, Zürich, 東京 🙂\nsecond line",
        "def add(a, b):\n    return a + b\n",
        "control strings stay special: [e~[ <think>",
    ]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts)])
    with open(src, "a") as f:
        f.write("\n   \n")  # blank lines are ignored
    stats = preprocess(
        PreprocessConfig(str(src), str(tmp_path / "out"), tokenizer_dir, append_eod=True)
    )
    prefix = text_output_prefix(str(tmp_path / "out"), "text")
    assert prefix == str(tmp_path / "out_text_document")
    assert stats.output_prefixes == [prefix]
    assert (stats.rows, stats.sequences, stats.skipped) == (5, 4, 1)

    eos = tokenizer.eos_token_id
    assert eos == tokenizer.convert_tokens_to_ids("[e~[")
    expected = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts if t]
    dataset = IndexedDataset(prefix)
    assert dataset.index.dtype == numpy.uint16  # < 65500 ids
    assert dataset.sequence_lengths.tolist() == [len(e) for e in expected]
    assert dataset.document_indices.tolist() == list(range(len(expected) + 1))
    assert [dataset[i].tolist() for i in range(len(dataset))] == expected
    assert stats.tokens == sum(len(e) for e in expected)
    # The special-token strings in the last text are matched as special tokens, as tokenizer() does.
    assert tokenizer.convert_tokens_to_ids("<think>") in expected[-1]
    assert tokenizer.decode(expected[1]) == texts[2] + "[e~["


def test_text_without_eod_and_several_keys(tmp_path, tokenizer, tokenizer_dir):
    rows = [{"title": f"Title {i}", "body": f"Body number {i} " * i} for i in range(4)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    stats = preprocess(
        PreprocessConfig(
            str(src), str(tmp_path / "p"), tokenizer_dir, json_keys=["title", "body"], workers=2
        )
    )
    titles = read_dataset(str(tmp_path / "p_title_document"))
    bodies = read_dataset(str(tmp_path / "p_body_document"))
    assert [t.tolist() for t in titles] == [
        tokenizer(r["title"], add_special_tokens=False)["input_ids"] for r in rows
    ]
    # Row 0's body is empty and skipped in that dataset only.
    assert [b.tolist() for b in bodies] == [
        tokenizer(r["body"], add_special_tokens=False)["input_ids"] for r in rows[1:]
    ]
    assert (stats.rows, stats.sequences, stats.skipped) == (4, 7, 1)


@pytest.mark.parametrize("mode", ["text", "chat"])
def test_output_is_byte_identical_for_any_worker_count(tmp_path, tokenizer_dir, mode):
    if mode == "text":
        rows = [{"text": f"Document {i}: " + "the quick brown fox " * (i % 7)} for i in range(40)]
    else:
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}?"},
                    {"role": "assistant", "reasoning_content": f"Think {i}.", "content": f"A{i}."},
                    {"role": "user", "content": "More?"},
                    {"role": "assistant", "content": "No." * (i % 3 + 1)},
                ]
            }
            for i in range(40)
        ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    outputs = {}
    for workers in (1, 2, 3):
        prefix = tmp_path / f"w{workers}"
        config = PreprocessConfig(str(src), str(prefix), tokenizer_dir, mode=mode, chunk_size=3)
        config.workers = workers
        config.append_eod = mode == "text"
        config.split_multiturn = mode == "chat"
        stats = preprocess(config)
        assert stats.rows == 40
        outputs[workers] = {
            p.name[len(prefix.name) :]: p.read_bytes()
            for p in sorted(tmp_path.glob(f"{prefix.name}_*"))
        }
    suffixes = (
        ["_text_document.bin", "_text_document.idx"]
        if mode == "text"
        else [f"_chat_{k}.{e}" for k in ("document", "loss_mask") for e in ("bin", "idx")]
    )
    assert sorted(outputs[1]) == sorted(suffixes)
    assert outputs[2] == outputs[1]
    assert outputs[3] == outputs[1]


def test_progress_bar_reports_rows_and_tokens(tmp_path, tokenizer_dir, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "one two three"}] * 5)
    stats = preprocess(
        PreprocessConfig(str(src), str(tmp_path / "o"), tokenizer_dir, progress=True)
    )
    bar = capsys.readouterr().err.split("\r")[-1]
    assert bar.startswith("tokenizing (text): 100%")
    assert f"docs=5" in bar and f"tokens={stats.tokens}" in bar and "tok_s=" in bar


def test_max_documents_stops_early(tmp_path, tokenizer_dir):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": f"doc {i}"} for i in range(10)])
    stats = preprocess(
        PreprocessConfig(str(src), str(tmp_path / "o"), tokenizer_dir, max_documents=3)
    )
    assert (stats.rows, stats.sequences) == (3, 3)
    assert len(IndexedDataset(str(tmp_path / "o_text_document"))) == 3


# ---------------------------------------------------------------------------------------------
# Chat mode
# ---------------------------------------------------------------------------------------------

AGENT_LOOP = [
    {"role": "system", "content": "You answer weather questions."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "reasoning_content": "I should call the tool.",
        "content": "Let me check.",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
            }
        ],
    },
    {"role": "tool", "content": "sunny, 21 C"},
    {"role": "tool", "content": "tomorrow rain"},
    {"role": "assistant", "reasoning_content": "Summarise.", "content": "Sunny, then rain. 🙂"},
]
# As the template needs them: OpenAI data stores tool arguments as a JSON string, the template
# iterates a mapping; encode_chat parses the string.
AGENT_LOOP_PARSED = copy.deepcopy(AGENT_LOOP)
AGENT_LOOP_PARSED[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris", "days": 2}


def test_chat_mask_on_hand_checked_agent_loop(tokenizer):
    [sample] = encode_chat(tokenizer, AGENT_LOOP)
    rendered = tokenizer.apply_chat_template(AGENT_LOOP_PARSED, tokenize=False)
    # The template itself, written out by hand.
    assert rendered == (
        "]~!b[]~b]system\nYou answer weather questions.[e~[\n"
        "]~b]user\nWeather in Paris?[e~[\n"
        "]~b]ai\n<think>\nI should call the tool.\n</think>\n\nLet me check.\n"
        '<minimax:tool_call>\n<invoke name="get_weather">\n'
        '<parameter name="city">Paris</parameter>\n<parameter name="days">2</parameter>\n'
        "</invoke>\n</minimax:tool_call>[e~[\n"
        "]~b]tool\n<response>sunny, 21 C</response>\n<response>tomorrow rain</response>[e~[\n"
        "]~b]ai\n<think>\nSummarise.\n</think>\n\nSunny, then rain. 🙂[e~[\n"
    )
    # Tokens are exactly the template's tokenisation.
    assert sample.tokens.tolist() == tokenizer.apply_chat_template(AGENT_LOOP_PARSED)["input_ids"]
    assert sample.tokens.dtype == numpy.int64 and sample.loss_mask.dtype == numpy.uint8
    assert len(sample.loss_mask) == len(sample.tokens)
    # Both assistant turns follow the last user message, so both keep their reasoning; the mask
    # covers them from after "]~b]ai\n" through "[e~[", and nothing else.
    assert masked_runs(tokenizer, sample.tokens, sample.loss_mask) == [
        "<think>\nI should call the tool.\n</think>\n\nLet me check.\n"
        '<minimax:tool_call>\n<invoke name="get_weather">\n'
        '<parameter name="city">Paris</parameter>\n<parameter name="days">2</parameter>\n'
        "</invoke>\n</minimax:tool_call>[e~[",
        "<think>\nSummarise.\n</think>\n\nSunny, then rain. 🙂[e~[",
    ]
    assert masked_runs(tokenizer, sample.tokens, 1 - sample.loss_mask) == [
        "]~!b[]~b]system\nYou answer weather questions.[e~[\n]~b]user\nWeather in Paris?[e~[\n"
        "]~b]ai\n",
        "\n]~b]tool\n<response>sunny, 21 C</response>\n<response>tomorrow rain</response>[e~[\n"
        "]~b]ai\n",
        "\n",
    ]
    eot = tokenizer.convert_tokens_to_ids("[e~[")
    eot_positions = numpy.flatnonzero(sample.tokens == eot)
    assert sample.loss_mask[eot_positions].tolist() == [0, 0, 1, 0, 1]


def test_multiturn_drops_earlier_reasoning_like_the_template(tokenizer):
    [sample] = encode_chat(tokenizer, TWO_ROUNDS)
    text = tokenizer.decode(sample.tokens)
    assert "Add two and two." not in text  # the template drops reasoning before the last user
    assert "Add three and three." in text
    assert text == tokenizer.apply_chat_template(TWO_ROUNDS, tokenize=False)
    assert masked_runs(tokenizer, sample.tokens, sample.loss_mask) == [
        "4.[e~[",
        "<think>\nAdd three and three.\n</think>\n\n6.[e~[",
    ]


def test_split_multiturn_trains_each_round_with_its_reasoning(tokenizer):
    first, second = encode_chat(tokenizer, TWO_ROUNDS, split_multiturn=True)
    first_text = tokenizer.decode(first.tokens)
    assert first_text == (
        "]~!b[]~b]system\nBe brief.[e~[\n]~b]user\nWhat is 2+2?[e~[\n"
        "]~b]ai\n<think>\nAdd two and two.\n</think>\n\n4.[e~[\n"
    )
    assert masked_runs(tokenizer, first.tokens, first.loss_mask) == [
        "<think>\nAdd two and two.\n</think>\n\n4.[e~["
    ]
    # The last round's sample is the full rendering, trained on the last round only.
    [full] = encode_chat(tokenizer, TWO_ROUNDS)
    assert second.tokens.tolist() == full.tokens.tolist()
    assert "Add two and two." not in tokenizer.decode(second.tokens)
    assert masked_runs(tokenizer, second.tokens, second.loss_mask) == [
        "<think>\nAdd three and three.\n</think>\n\n6.[e~["
    ]


def test_split_multiturn_keeps_a_round_with_tool_turns_together(tokenizer):
    conversation = TWO_ROUNDS[:3] + AGENT_LOOP[1:]
    samples = encode_chat(tokenizer, conversation, split_multiturn=True)
    assert len(samples) == 2  # two user rounds, three assistant turns
    runs = masked_runs(tokenizer, samples[1].tokens, samples[1].loss_mask)
    assert [r.split("\n")[1] for r in runs] == ["I should call the tool.", "Summarise."]


def test_chat_datasets_on_disk(tmp_path, tokenizer, tokenizer_dir):
    rows = [
        {"messages": TWO_ROUNDS},
        {"messages": [{"role": "user", "content": "No answer yet."}]},  # skipped
        {"messages": AGENT_LOOP, "tools": [{"type": "function", "function": {"name": "f"}}]},
    ]
    src = write_jsonl(tmp_path / "sft.jsonl", rows)
    stats = preprocess(
        PreprocessConfig(str(src), str(tmp_path / "sft"), tokenizer_dir, mode="chat", workers=2)
    )
    tokens_prefix, mask_prefix = chat_output_prefixes(str(tmp_path / "sft"))
    assert tokens_prefix == str(tmp_path / "sft_chat_document")
    assert mask_prefix == str(tmp_path / "sft_chat_loss_mask")
    tokens, masks = IndexedDataset(tokens_prefix), IndexedDataset(mask_prefix)
    assert masks.index.dtype == numpy.uint8
    assert tokens.sequence_lengths.tolist() == masks.sequence_lengths.tolist()
    assert tokens.document_indices.tolist() == masks.document_indices.tolist() == [0, 1, 2]
    expected = encode_chat(tokenizer, TWO_ROUNDS) + encode_chat(
        tokenizer, AGENT_LOOP, tools=rows[2]["tools"]
    )
    for i, sample in enumerate(expected):
        assert tokens[i].tolist() == sample.tokens.tolist()
        assert masks[i].tolist() == sample.loss_mask.tolist()
    assert "<tools>" in tokenizer.decode(tokens[1])
    assert (stats.rows, stats.sequences, stats.skipped) == (3, 2, 1)
    assert stats.loss_tokens == sum(int(s.loss_mask.sum()) for s in expected)


def test_split_multiturn_on_disk(tmp_path, tokenizer_dir):
    src = write_jsonl(tmp_path / "sft.jsonl", [{"messages": TWO_ROUNDS}] * 2)
    stats = preprocess(
        PreprocessConfig(
            str(src), str(tmp_path / "s"), tokenizer_dir, mode="chat", split_multiturn=True
        )
    )
    assert (stats.rows, stats.sequences) == (2, 4)
    masks = IndexedDataset(str(tmp_path / "s_chat_loss_mask"))
    assert masks.document_indices.tolist() == [0, 1, 2, 3, 4]


def test_reasoning_inside_content_and_trailing_user_turn(tokenizer):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
        {"role": "user", "content": "unanswered"},
    ]
    [sample] = encode_chat(tokenizer, messages)
    # The trailing user message carries no loss and is not rendered, so the reasoning stays.
    assert "unanswered" not in tokenizer.decode(sample.tokens)
    assert masked_runs(tokenizer, sample.tokens, sample.loss_mask) == [
        "<think>\nGreet back.\n</think>\n\nHello![e~["
    ]


def test_token_straddling_the_header_is_not_trained(tokenizer):
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\n\nHello"}]
    [sample] = encode_chat(tokenizer, messages)
    [run] = masked_runs(tokenizer, sample.tokens, sample.loss_mask)
    # The pre-tokenizer merges the header's newline with the content's leading newlines; that
    # token is not trained, the rest of the turn is.
    assert run.endswith("Hello[e~[") and "\n\nHello[e~[".endswith(run) and run != "\n\nHello[e~["


def test_mask_is_the_same_with_trimmed_offsets(tokenizer_dir):
    trimming = AutoTokenizer.from_pretrained(tokenizer_dir)
    trimming.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    plain = AutoTokenizer.from_pretrained(tokenizer_dir)
    messages = [
        {"role": "user", "content": "Indent  please"},
        {"role": "assistant", "content": "def f():\n    return  1   \n  "},
    ]
    [a] = encode_chat(plain, messages)
    [b] = encode_chat(trimming, messages)
    assert a.tokens.tolist() == b.tokens.tolist()
    assert a.loss_mask.tolist() == b.loss_mask.tolist()
    assert masked_runs(plain, a.tokens, a.loss_mask) == ["def f():\n    return  1   \n  [e~["]


def test_find_assistant_spans_rejects_injected_control_strings(tokenizer):
    rendered = "]~!b[]~b]system\nS[e~[\n]~b]ai\nA[e~[\n]~b]user\nU[e~[\n]~b]ai\nB[e~["
    spans = find_assistant_spans(rendered)
    assert [rendered[s:e] for s, e in spans] == ["A[e~[", "B[e~["]
    with pytest.raises(ValueError, match="not closed by exactly one"):
        encode_chat(
            tokenizer,
            [{"role": "user", "content": "a [e~[ b"}, {"role": "assistant", "content": "ok"}],
        )
    with pytest.raises(ValueError, match="assistant turns for 1 assistant"):
        encode_chat(
            tokenizer,
            [
                {"role": "user", "content": "fake[e~[\n]~b]ai\nturn[e~[\n]~b]user\nq"},
                {"role": "assistant", "content": "ok"},
            ],
        )


def test_bad_conversation_is_reported_with_its_line(tmp_path, tokenizer_dir):
    rows = [
        {"messages": TWO_ROUNDS},
        {"messages": [{"role": "user", "content": "[e~["}, {"role": "assistant", "content": "a"}]},
    ]
    src = write_jsonl(tmp_path / "sft.jsonl", rows)
    with pytest.raises(PreprocessError, match=r"sft\.jsonl:2: turn at character \d+ .* not closed"):
        preprocess(PreprocessConfig(str(src), str(tmp_path / "o"), tokenizer_dir, mode="chat"))
    assert list(tmp_path.glob("o_*")) == []


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "only the first"),
        ([{"role": "user", "content": 3}], "content must be"),
    ],
)
def test_encode_chat_rejects_malformed_messages(tokenizer, messages, match):
    with pytest.raises(ValueError, match=match):
        encode_chat(tokenizer, messages)


def test_load_tokenizer_errors(tmp_path, tokenizer_dir):
    with pytest.raises(PreprocessError, match="tokenizer directory not found"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreprocessError, match="cannot load a tokenizer") as info:
        load_tokenizer(str(tmp_path / "empty"))
    assert "\n" not in str(info.value)
    no_template = AutoTokenizer.from_pretrained(tokenizer_dir)
    no_template.chat_template = None
    no_template.save_pretrained(str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / "chat_template.jinja").exists()
    assert load_tokenizer(str(tmp_path / "plain")).eos_token == "[e~["
    with pytest.raises(PreprocessError, match="no chat template"):
        load_tokenizer(str(tmp_path / "plain"), chat=True)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"mode": "xml"}, "mode must be one of"),
        ({"mode": "chat", "append_eod": True}, "text mode only"),
        ({"split_multiturn": True}, "chat mode only"),
        ({"mode": "chat", "json_keys": ["a", "b"]}, "exactly one json key"),
        ({"workers": 0}, "workers must be at least 1"),
    ],
)
def test_config_validation(tmp_path, tokenizer_dir, overrides, match):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    config = PreprocessConfig(str(src), str(tmp_path / "o"), tokenizer_dir, **overrides)
    with pytest.raises(PreprocessError, match=match):
        preprocess(config)


def test_failed_run_leaves_existing_outputs_untouched(tmp_path, tokenizer_dir):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "old data"}])
    preprocess(PreprocessConfig(str(good), str(tmp_path / "o"), tokenizer_dir))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("o_*")}
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [{"text": f"row {i}"} for i in range(7)] + ['{"text": ']
    )
    with pytest.raises(PreprocessError, match=r"bad\.jsonl:8: invalid JSON"):
        preprocess(
            PreprocessConfig(str(bad), str(tmp_path / "o"), tokenizer_dir, workers=2, chunk_size=2)
        )
    assert {p.name: p.read_bytes() for p in tmp_path.glob("o_*")} == before
    assert sorted(before) == ["o_text_document.bin", "o_text_document.idx"]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def run_cli(cli, capsys, argv):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def test_cli_errors_are_one_line_with_status_2(tmp_path, cli, capsys, tokenizer_dir):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "a"}])
    bad_json = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a"}, {"text": "b"}, "{oops}"])
    no_key = write_jsonl(tmp_path / "nokey.jsonl", [{"text": "a"}, {"body": "b"}])
    out = str(tmp_path / "out")
    cases = [
        (["--input", str(tmp_path / "nope.jsonl"), "--tokenizer-dir", tokenizer_dir],
         f"preprocess_data.py: error: input file not found: {tmp_path / 'nope.jsonl'}"),
        (["--input", str(good), "--tokenizer-dir", str(tmp_path / "no_tok")],
         f"preprocess_data.py: error: tokenizer directory not found: {tmp_path / 'no_tok'}"),
        (["--input", str(bad_json), "--tokenizer-dir", tokenizer_dir],
         f"preprocess_data.py: error: {bad_json}:3: invalid JSON (Expecting property name "
         "enclosed in double quotes at column 2)"),
        (["--input", str(no_key), "--tokenizer-dir", tokenizer_dir],
         f"preprocess_data.py: error: {no_key}:2: missing key 'text' (keys present: body)"),
        (["--input", str(good), "--tokenizer-dir", tokenizer_dir, "--workers", "0"],
         "preprocess_data.py: error: argument --workers: expected a positive integer, got 0"),
        (["--input", str(good), "--tokenizer-dir", tokenizer_dir, "--mode", "chat",
          "--append-eod"],
         "preprocess_data.py: error: append_eod applies to text mode only; chat samples already "
         "end with [e~["),
    ]  # fmt: skip
    for argv, message in cases:
        code, stdout, stderr = run_cli(cli, capsys, argv + ["--output-prefix", out])
        assert (code, stdout, stderr) == (2, "", [message]), argv
    assert list(tmp_path.glob("out*")) == []


def test_cli_writes_chat_datasets(tmp_path, cli, capsys, tokenizer, tokenizer_dir):
    src = write_jsonl(tmp_path / "sft.jsonl", [{"conv": TWO_ROUNDS}, {"conv": AGENT_LOOP}])
    argv = ["--mode", "chat", "--json-keys", "conv", "--split-multiturn", "--workers", "2"]
    argv += ["--input", str(src), "--tokenizer-dir", tokenizer_dir]
    code, stdout, stderr = run_cli(cli, capsys, argv + ["--output-prefix", str(tmp_path / "x")])
    assert (code, stdout) == (0, "")
    assert len(stderr) == 1 and stderr[0].startswith("preprocess_data.py: INFO: 2 rows -> 3 ")
    masks = read_dataset(str(tmp_path / "x_chat_loss_mask"))
    expected = encode_chat(tokenizer, TWO_ROUNDS, split_multiturn=True)
    expected += encode_chat(tokenizer, AGENT_LOOP, split_multiturn=True)
    assert [m.tolist() for m in masks] == [s.loss_mask.tolist() for s in expected]


def test_cli_script_runs_as_a_program(tmp_path, tokenizer_dir):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}, "not json"])
    env = dict(os.environ)
    argv = ["--input", str(src), "--tokenizer-dir", tokenizer_dir]
    argv += ["--output-prefix", str(tmp_path / "o")]
    result = subprocess.run(
        [sys.executable, str(TOOL)] + argv,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    # No import noise, no progress bar (stderr is not a terminal), no traceback: just the error.
    assert result.stderr.splitlines() == [
        f"preprocess_data.py: error: {src}:2: invalid JSON (Expecting value at column 1)"
    ]
    assert list(tmp_path.glob("o_*")) == []
