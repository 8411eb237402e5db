# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""The calibration report (calibration itself runs in test_hf_export.py's launch)."""

from megatron.minimax.quantization.calibration import CalibrationReport


def test_report_names_the_experts_without_tokens():
    report = CalibrationReport(
        num_sequences=1, num_tokens=4, tokens_per_expert={0: [3, 0, 5, 0], 1: [2, 2, 2, 2]}
    )
    assert report.experts_without_tokens() == {0: [1, 3]}
    summary = report.summary()
    assert summary.splitlines()[0] == "calibrated on 1 sequences (4 tokens)"
    assert "2 experts processed no calibration token (layer 0: [1, 3])" in summary
    assert "input scales are the ones all experts of their layer share" in summary


def test_report_when_every_expert_saw_tokens():
    report = CalibrationReport(
        num_sequences=2, num_tokens=8, tokens_per_expert={0: [4, 4], 1: [7, 1]}
    )
    assert report.experts_without_tokens() == {}
    assert report.summary().splitlines()[1] == (
        "every expert of every layer processed calibration tokens (at least 1)"
    )
