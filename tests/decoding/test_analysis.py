"""Analysis and evaluation helpers: hand-built traces and completions, and a tiny-model trade-off sweep."""

import math

import pytest
import torch
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.core import length_to_value
from lenvm_rl.decoding import (
    GuidedCompletion,
    budget_baseline,
    horizon_shifts,
    length_instruction,
    length_report,
    length_tokens,
    plot_tradeoff,
    trace_html,
    trace_td_residuals,
    tradeoff_sweep,
)
from lenvm_rl.predict import LengthTrace

GAMMA = 0.9


def make_trace(tokens, lengths):
    lengths = torch.tensor(lengths, dtype=torch.float32)
    return LengthTrace(tokens=list(tokens), token_ids=list(range(len(tokens))),
                       values=length_to_value(lengths, GAMMA), lengths=lengths)


def test_horizon_shifts_hand_computed():
    # predicted remaining 5 -> 4 (on track: 0) -> 6 (pushed 3 later) -> 0 (ended 5 early)
    trace = make_trace(["a", "b", "c"], [5.0, 4.0, 6.0, 0.0])
    torch.testing.assert_close(horizon_shifts(trace), torch.tensor([0.0, 3.0, -5.0]))


def test_td_residuals_hand_computed_and_zero_on_a_consistent_trace():
    consistent = make_trace(["a", "b", "c"], [3.0, 2.0, 1.0, 0.0])
    torch.testing.assert_close(trace_td_residuals(consistent, GAMMA), torch.zeros(3), atol=1e-6, rtol=0)
    trace = make_trace(["a", "b"], [1.0, 2.0, 0.0])
    v0, v1 = -(1 - GAMMA), -(1 - GAMMA**2)
    expected = torch.tensor([-(1 - GAMMA) + GAMMA * v1 - v0, -(1 - GAMMA) + 0.0 - v1])
    torch.testing.assert_close(trace_td_residuals(trace, GAMMA), expected)
    cut = trace_td_residuals(trace, GAMMA, ended=False)  # bootstraps from the last value (0 here)
    torch.testing.assert_close(cut, expected)


def test_length_tokens_rank_by_mean_shift():
    traces = [make_trace(["First", ",", "so", "<eos>"], [10.0, 14.0, 12.0, 5.0, 0.0]),
              make_trace(["First", "so", ",", "<eos>"], [10.0, 12.0, 6.0, 10.0, 0.0])]
    # shifts: First +5, +3; "," -1, +5; "so" -6, -5
    found = length_tokens(traces, min_count=2)
    assert [x.token for x in found["raise"]] == ["First", ","]
    assert found["raise"][0].mean_shift == pytest.approx(4.0) and found["raise"][0].raise_fraction == 1.0
    assert [(x.token, x.count) for x in found["lower"]] == [("so", 2)]
    assert found["lower"][0].mean_shift == pytest.approx(-5.5)
    assert length_tokens(traces, min_count=3) == {"raise": [], "lower": []}
    with pytest.raises(ValueError, match="min_count"):
        length_tokens(traces, min_count=0)


def test_trace_html_is_self_contained_and_escaped():
    page = trace_html(make_trace(["<b>", "x\n", "&"], [3.0, 2.0, 1.0, 0.0]), gamma=GAMMA, prompt="1 < 2")
    assert page.startswith("<!DOCTYPE html>") and "&lt;b&gt;" in page and "&amp;" in page and "1 &lt; 2" in page
    assert page.count("<span style=\"background:hsl(") == 3 and "remaining=2.0" in page
    assert "http" not in page and "<script" not in page


def test_length_report_uses_the_lifebench_score():
    report = length_report([50, 100, 150], 100, "equal")
    expected = (100 * math.exp(-2.5) + 100 + 100 * math.exp(-1.0)) / 3
    assert report.score == pytest.approx(expected, rel=1e-5)
    assert report.deviation == pytest.approx(0.0) and report.abs_deviation == pytest.approx(1 / 3)
    assert length_report([50], [100], "at_most").score == 100.0
    with pytest.raises(ValueError, match="target_lengths must be > 0"):
        length_report([5], 0, "equal")
    with pytest.raises(ValueError, match="constraint must be"):
        length_report([5], 3, "exactly")


def test_length_instruction_appends_the_target():
    messages = length_instruction("What is 2 + 2?", 64, "at_most")
    assert messages == [{"role": "user", "content": "What is 2 + 2?\n\nAnswer in at most 64 tokens."}]


def _completion(length, reason="eos"):
    return GuidedCompletion(prompt="p", text="", token_ids=[0] * length, length=length, finish_reason=reason)


def test_budget_baseline_truncates_and_counts_cut_answers_wrong():
    completions = [_completion(50), _completion(150), _completion(80), _completion(200, "length")]
    point = budget_baseline(completions, [True, True, False, True], 100)
    assert point.method == "budget" and point.setting == 100
    assert point.accuracy == pytest.approx(0.25)  # only the 50-token correct answer fits
    assert point.mean_length == pytest.approx((50 + 100 + 80 + 100) / 4)
    with pytest.raises(ValueError, match="one correctness flag per completion"):
        budget_baseline(completions, [True], 100)


def test_tradeoff_sweep_and_plot_on_tiny_models(smollm2_tokenizer, tmp_path):
    vocab = len(smollm2_tokenizer)
    policy = tiny_backbone("llama", vocab_size=vocab, seed=0)
    lenvm = LenVM(tiny_backbone("llama", vocab_size=vocab, seed=1), gamma=GAMMA).eval()
    points = tradeoff_sweep(policy, smollm2_tokenizer, lenvm, ["What is 2 + 2?", "Hi"], ["4", "#### 1"],
                            betas=[0.0, -50.0], budgets=[2, 4], max_new_tokens=4, top_k=4)
    assert [(p.method, p.setting) for p in points] == [("tilt", 0.0), ("budget", 2), ("budget", 4), ("tilt", -50.0)]
    assert all(0 <= p.accuracy <= 1 and 0 < p.mean_length <= 4 for p in points)
    png = plot_tradeoff(points, tmp_path / "plots" / "tradeoff.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
