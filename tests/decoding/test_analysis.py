"""Analysis and evaluation helpers: hand-built traces and completions, and a tiny-model trade-off sweep."""

import math
import struct

import pytest
import torch
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.core import length_to_value
from lenvm_rl.decoding import (
    GuidedCompletion,
    LengthReport,
    answer_length,
    average_over_targets,
    budget_baseline,
    evaluation,
    horizon_shifts,
    length_instruction,
    length_report,
    length_score_benchmark,
    length_tokens,
    lenvm_token_target,
    plot_tradeoff,
    trace_html,
    trace_td_residuals,
    tradeoff_sweep,
)
from lenvm_rl.decoding.evaluation import tilt_point, tradeoff_point
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
    assert math.isnan(length_report([50], [100], "at_most").score_se)  # no sample sd from one completion
    with pytest.raises(ValueError, match="target_lengths must be > 0"):
        length_report([5], 0, "equal")
    with pytest.raises(ValueError, match="constraint must be"):
        length_report([5], 3, "exactly")


def test_length_report_standard_errors_hand_computed():
    # 4 completions at target 100: scores 100 e^-2.5, 100, 100 e^-1, 100; lengths 50, 100, 150, 100
    report = length_report([50, 100, 150, 100], 100, "equal")
    scores = [100 * math.exp(-2.5), 100.0, 100 * math.exp(-1.0), 100.0]
    mean = sum(scores) / 4
    assert report.n == 4 and report.score == pytest.approx(mean, rel=1e-6)
    # score_se = sample sd / sqrt(n) = sqrt(sum (s - mean)^2 / 3 / 4) = 23.1209... here
    assert report.score_se == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in scores) / 3 / 4), rel=1e-5)
    assert report.score_se == pytest.approx(23.1209, abs=1e-3)
    # lengths: mean 100, deviations -50, 0, 50, 0 -> sqrt(5000 / 3 / 4) = 20.412
    assert report.mean_length == 100.0 and report.mean_length_se == pytest.approx(math.sqrt(5000 / 12))


def test_length_instruction_appends_the_target():
    messages = length_instruction("What is 2 + 2?", 64, "at_most")
    assert messages == [{"role": "user", "content": "What is 2 + 2?\n\nAnswer in at most 64 tokens."}]
    words = length_instruction("Tell a story.", 100, "equal", unit="words")
    assert words[-1]["content"] == "Tell a story.\n\nAnswer in exactly 100 words."
    with pytest.raises(ValueError, match="unit must be one of"):
        length_instruction("Hi", 5, "equal", unit="characters")


def test_length_report_drops_answers_of_one_word_or_fewer_as_lifebench():
    # lengths 0, 1 dropped; 50 and 150 at target 100 score 100 e^-2.5 and 100 e^-1
    report = length_report([0, 1, 50, 150], 100, "equal", drop_short=True)
    assert (report.n, report.dropped) == (2, 2) and report.mean_length == 100.0
    assert report.score == pytest.approx((100 * math.exp(-2.5) + 100 * math.exp(-1.0)) / 2, rel=1e-6)
    assert report.abs_deviation == pytest.approx(0.5) and report.deviation == pytest.approx(0.0)
    everything = length_report([0, 1, 50, 150], 100, "equal")
    assert (everything.n, everything.dropped) == (4, 0)
    gone = length_report([1, 0], 10, "equal", drop_short=True)
    assert (gone.n, gone.dropped) == (0, 2) and math.isnan(gone.score) and math.isnan(gone.mean_length)


def test_answer_length_counts_tokens_before_eos_or_lifebench_words():
    ended = GuidedCompletion(prompt="p", text="Hello, world! 中文", token_ids=[7] * 6, length=6, finish_reason="eos")
    cut = GuidedCompletion(prompt="p", text="one two", token_ids=[7] * 6, length=6, finish_reason="length")
    assert answer_length(ended) == 5 and answer_length(cut) == 6  # the EOS is no token of the answer
    assert answer_length(ended, "words") == 4 and answer_length(cut, "words") == 2


def test_lenvm_token_target_adds_the_eos():
    assert lenvm_token_target(32) == 33  # 32 answer tokens, then EOS
    assert lenvm_token_target(10, "words") == 11  # the reference's client: a word target as a token target
    assert lenvm_token_target(10, "words", tokens_per_word=1.34) == 14  # round(13.4) + 1
    for bad, message in ((dict(target=0), "target must be a positive integer"),
                         (dict(target=5, unit="words", tokens_per_word=0.0), "tokens_per_word must be > 0")):
        with pytest.raises(ValueError, match=message):
            lenvm_token_target(**bad)


def _report(score):
    return LengthReport(score=score, deviation=0.0, abs_deviation=0.0, mean_length=1.0, n=1)


def test_average_over_targets_weighs_every_target_the_same():
    results = {32: {"lenvm": _report(40.0), "prompt-only": _report(10.0)},
               64: {"lenvm": _report(60.0), "prompt-only": _report(math.nan)},  # every answer dropped
               128: {"lenvm": _report(20.0), "prompt-only": _report(30.0)}}
    assert average_over_targets(results) == {"lenvm": pytest.approx(40.0), "prompt-only": pytest.approx(20.0)}


def test_length_score_benchmark_gives_the_lenvm_arm_the_instructed_prompt(smollm2_tokenizer, monkeypatch):
    vocab = len(smollm2_tokenizer)
    policy = tiny_backbone("llama", vocab_size=vocab, seed=0)
    lenvm = LenVM(tiny_backbone("llama", vocab_size=vocab, seed=1), gamma=GAMMA).eval()
    calls = []

    def recording_generate(policy, tokenizer, prompts, **kwargs):  # the real generate, its arguments recorded
        out = guided_generate(policy, tokenizer, prompts, **kwargs)
        calls.append((prompts, kwargs, out))
        return out

    guided_generate = evaluation.guided_generate
    monkeypatch.setattr(evaluation, "guided_generate", recording_generate)
    prompts = ["What is 2 + 2?", "Hi"]
    results = length_score_benchmark(policy, smollm2_tokenizer, lenvm, prompts, [3, 4], unit="tokens", top_k=4,
                                     max_new_tokens_factor=1.0)
    assert len(calls) == 6 and list(results) == [3, 4]
    for i, target in enumerate([3, 4]):
        (plain, _, _), (instructed, base, _), (guided, kwargs, out) = calls[3 * i : 3 * i + 3]
        assert plain == prompts and instructed == guided == [length_instruction(p, target) for p in prompts]
        assert kwargs["guidance"].target == target + 1 and kwargs["max_new_tokens"] == target + 1
        assert kwargs["guidance"].min_p == base["guidance"].min_p == 0.1  # the same candidate set in every arm
        lengths = [c.length - (c.finish_reason == "eos") for c in out]
        kept = [n for n in lengths if n > 1]
        report = results[target]["lenvm"]
        assert (report.n, report.dropped) == (len(kept), len(lengths) - len(kept))
        assert report.mean_length == pytest.approx(sum(kept) / len(kept))


def _completion(length, reason="eos", text=""):
    return GuidedCompletion(prompt="p", text=text, token_ids=[0] * length, length=length, finish_reason=reason)


# 4 completions: (length, finish reason, text, correct)
FOUR = [_completion(50, text="2 + 2 = 4\n#### 4"), _completion(150, text="... #### 4"),
        _completion(80, text="#### 5"), _completion(200, "length", text="#### 4 and on and on")]
FOUR_CORRECT = [True, True, False, True]


def test_budget_baseline_truncates_and_counts_cut_answers_wrong():
    point = budget_baseline(FOUR, FOUR_CORRECT, 100)
    assert point.method == "budget" and point.setting == 100 and point.n == 4
    # within the budget with EOS: the 50- and 80-token completions
    assert point.accuracy == pytest.approx(0.25)  # only the 50-token correct answer fits
    assert point.accuracy_se == pytest.approx(math.sqrt(0.25 * 0.75 / 3))  # sample SE of 0/1 flags: 0.25
    assert point.answer_rate == pytest.approx(0.5)  # 50 (#### 4) and 80 (#### 5); 150 and 200 are cut
    assert point.answer_rate_se == pytest.approx(math.sqrt(0.5 * 0.5 / 3))  # 0.2887
    # lengths min(L, 100): 50, 100, 80, 100 -> mean 82.5, squared deviations 1056.25 + 306.25 + 6.25 + 306.25
    assert point.mean_length == pytest.approx(82.5)
    assert point.mean_length_se == pytest.approx(math.sqrt(1675 / 3 / 4))  # 11.81
    # an answer that fits but ended without EOS (max_new_tokens below the budget) does not count
    cut = budget_baseline([_completion(40, "length", text="#### 4")], [True], 100)
    assert (cut.accuracy, cut.answer_rate, cut.mean_length, cut.n) == (0.0, 0.0, 40.0, 1)
    assert math.isnan(cut.mean_length_se)
    with pytest.raises(ValueError, match="one correctness flag per completion"):
        budget_baseline(FOUR, [True], 100)


def test_tilt_point_counts_completions_as_they_are():
    point = tilt_point(FOUR, FOUR_CORRECT, -20)
    assert (point.method, point.setting, point.n) == ("tilt", -20.0, 4)
    assert point.accuracy == pytest.approx(0.75) and point.accuracy_se == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    assert point.answer_rate == 1.0 and point.answer_rate_se == 0.0  # every text has a parseable #### N
    # lengths 50, 150, 80, 200: mean 120, squared deviations 4900 + 900 + 1600 + 6400 = 13800
    assert point.mean_length == pytest.approx(120.0) and point.mean_length_se == pytest.approx(math.sqrt(1150))
    no_answer = tilt_point([_completion(10, text="The answer is 4"), _completion(30, text="#### x")], [False] * 2, 0)
    assert no_answer.answer_rate == 0.0 and no_answer.mean_length_se == pytest.approx(10.0)  # sd 14.14 / sqrt 2
    with pytest.raises(ValueError, match="as many"):
        tradeoff_point("tilt", 0, [1, 2], [True], [True, False])


def test_tradeoff_sweep_and_plot_on_tiny_models(smollm2_tokenizer, tmp_path):
    vocab = len(smollm2_tokenizer)
    policy = tiny_backbone("llama", vocab_size=vocab, seed=0)
    lenvm = LenVM(tiny_backbone("llama", vocab_size=vocab, seed=1), gamma=GAMMA).eval()
    points = tradeoff_sweep(policy, smollm2_tokenizer, lenvm, ["What is 2 + 2?", "Hi"], ["4", "#### 1"],
                            betas=[0.0, -50.0], budgets=[2, 4], max_new_tokens=4, top_k=4)
    assert [(p.method, p.setting) for p in points] == [("tilt", 0.0), ("budget", 2), ("budget", 4), ("tilt", -50.0)]
    assert all(0 <= p.accuracy <= p.answer_rate <= 1 and 0 < p.mean_length <= 4 and p.n == 2 for p in points)
    assert all(p.accuracy_se >= 0 and p.answer_rate_se >= 0 and p.mean_length_se >= 0 for p in points)
    png = plot_tradeoff(points, tmp_path / "plots" / "tradeoff.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1200, 480)  # two panels side by side, 10 x 4 inches at 120 dpi
