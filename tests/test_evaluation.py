import math
import random

import pytest
import torch
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.core import length_to_value, prompt_boundary_mre, value_to_length
from lenvm_rl.evaluation import (
    FRACTIONS,
    NOISE_FLOOR_ROW,
    SPLIT_HALF_ROW,
    PromptLengthBaseline,
    constant_baseline_value,
    evaluate_constant,
    evaluate_lenvm,
    evaluate_policy,
    evaluate_prompt_length_baseline,
    format_policy_table,
    format_report,
    noise_floor,
    paired_policy_difference,
    policy_prompt_means,
    prompt_length_baseline,
    split_half_mre,
)

GAMMA = 0.9
EOS = 2
L_HAT = math.log(0.5) / math.log(GAMMA)  # 6.5788...: the length a constant V = -0.5 predicts


def make_record(prompt_index, sample_index, prompt_ids, length, finish_reason="eos", seed=0):
    rng = random.Random(seed * 1000 + prompt_index * 100 + sample_index)
    completion_ids = [rng.randrange(128) for _ in range(length)]
    if finish_reason == "eos":
        completion_ids[-1] = EOS
    return {
        "prompt_index": prompt_index, "sample_index": sample_index,
        "prompt": [{"role": "user", "content": f"prompt {prompt_index}"}],
        "prompt_ids": list(prompt_ids), "completion_ids": completion_ids, "completion_length": length,
        # a completion cut at the limit has exactly max_new_tokens tokens (check_record): its own limit here
        "finish_reason": finish_reason, "sampler": {"max_new_tokens": length if finish_reason == "length" else 8},
    }


PROMPT_A, PROMPT_B, PROMPT_C = [5, 17, 99], [42, 7], [1, 64, 3, 120]
# prompt 0: two EOS-terminated samples of lengths 1 and 2; prompt 1: one of length 4.
RECORDS = [
    make_record(0, 0, PROMPT_A, 1),
    make_record(0, 1, PROMPT_A, 2),
    make_record(1, 0, PROMPT_B, 4),
]


@pytest.fixture(scope="module")
def constant_model():
    """A real tiny LenVM whose head outputs z = 0 everywhere, so V = -sigmoid(0) = -0.5 at every state."""
    model = LenVM(tiny_backbone("llama", vocab_size=128), gamma=GAMMA)
    with torch.no_grad():
        model.v_head.summary.weight.zero_()
        model.v_head.summary.bias.fill_(0.0)
    return model


@pytest.fixture(scope="module")
def random_model():
    model = LenVM(tiny_backbone("llama", vocab_size=128, seed=3), gamma=GAMMA)
    with torch.no_grad():
        model.v_head.summary.bias.fill_(-1.0)  # values spread around -0.27, lengths of a few tokens
    return model


def random_records(num_prompts=4, samples=3, seed=0):
    rng = random.Random(seed)
    records = []
    for p in range(num_prompts):
        prompt_ids = [rng.randrange(128) for _ in range(rng.randint(1, 6))]
        for s in range(samples):
            censored = (p + s) % 5 == 4
            records.append(make_record(p, s, prompt_ids, rng.randint(1, 9), "length" if censored else "eos", seed))
    return records


def assert_same(a, b, tol=1e-5):
    assert a.value_mse == pytest.approx(b.value_mse, abs=tol)
    assert a.prompt_mre == pytest.approx(b.prompt_mre, abs=tol)
    assert list(a.positionwise_re) == list(b.positionwise_re) == list(FRACTIONS)
    for f in FRACTIONS:
        assert a.positionwise_re[f] == pytest.approx(b.positionwise_re[f], abs=tol)
    assert (a.num_prompts, a.num_completions, a.num_censored) == (b.num_prompts, b.num_completions, b.num_censored)


def test_constant_head_metrics_by_hand(constant_model):
    result = evaluate_lenvm(constant_model, RECORDS)
    # G_t = -(1 - 0.9**(L - t)) at s_0 .. s_L; V = -0.5 everywhere.
    # L=1: G = -0.1, 0           -> errors 0.4, 0.5
    # L=2: G = -0.19, -0.1, 0    -> errors 0.31, 0.4, 0.5
    # L=4: G = -0.3439, -0.271, -0.19, -0.1, 0 -> errors 0.1561, 0.229, 0.31, 0.4, 0.5
    squared = [0.4**2, 0.5**2, 0.31**2, 0.4**2, 0.5**2, 0.1561**2, 0.229**2, 0.31**2, 0.4**2, 0.5**2]
    assert result.value_mse == pytest.approx(sum(squared) / 10, abs=1e-6)
    # L_GT: prompt 0 ln(mean(0.9, 0.81)) / ln 0.9 = ln(0.855) / ln 0.9 = 1.486836; prompt 1: 4.
    l_gt = [1.48683602265324, 4.0]
    assert result.prompt_mre == pytest.approx(sum(abs(L_HAT - l) / l for l in l_gt) / 2, rel=1e-5)
    # standard error over 2 prompts: |e_0 - e_1| / 2
    e_0, e_1 = (abs(L_HAT - l) / l for l in l_gt)
    assert result.prompt_mre_se == pytest.approx(abs(e_0 - e_1) / 2, rel=1e-5)
    # k = floor(f * L); remaining L - k. L=1: 1,1,1,1; L=2: 2,2,1,1; L=4: 4,3,2,1.
    remaining = {0.0: [1, 2, 4], 0.25: [1, 2, 3], 0.5: [1, 1, 2], 0.75: [1, 1, 1]}
    for f, rem in remaining.items():
        assert result.positionwise_re[f] == pytest.approx(sum(abs(L_HAT - r) / r for r in rem) / 3, rel=1e-5)
    assert (result.num_prompts, result.num_completions, result.num_censored) == (2, 3, 0)


def test_evaluate_constant_matches_the_constant_head_lenvm(constant_model):
    records = random_records(seed=1)
    assert_same(evaluate_constant(-0.5, records, GAMMA), evaluate_lenvm(constant_model, records, batch_size=4))


def test_constant_baseline_value_is_the_mean_return_under_the_censoring_policy():
    train = [make_record(0, 0, PROMPT_A, 1), make_record(0, 1, PROMPT_A, 3),
             make_record(1, 0, PROMPT_B, 7, "length")]
    # "drop": mean(-(1 - 0.5), -(1 - 0.125)) = -0.6875
    assert constant_baseline_value(train, 0.5, censored="drop") == pytest.approx(-0.6875, abs=1e-7)
    # "infinite" (default, as in training): the censored record counts as -1: (-0.5 - 0.875 - 1) / 3
    assert constant_baseline_value(train, 0.5) == pytest.approx(-2.375 / 3, abs=1e-7)
    only_censored = [make_record(1, 0, PROMPT_B, 7, "length")]
    assert constant_baseline_value(only_censored, 0.5) == -1.0
    with pytest.raises(ValueError, match="censored='drop' leaves none"):
        constant_baseline_value(only_censored, 0.5, censored="drop")
    with pytest.raises(ValueError, match="censored must be"):
        constant_baseline_value(train, 0.5, censored="ignore")


def test_censored_records_are_counted_and_are_a_lower_bound_for_the_prompt_mre():
    records = RECORDS + [
        make_record(1, 1, PROMPT_B, 3, "length"),  # prompt 1: L = 4 (eos) and >= 3 (censored)
        make_record(2, 0, PROMPT_C, 5, "length"),  # prompt 2: only censored, L_GT = 5
    ]
    uncensored = evaluate_constant(-0.5, RECORDS, GAMMA)
    result = evaluate_constant(-0.5, records, GAMMA)
    assert (result.num_prompts, result.num_completions, result.num_censored) == (3, 5, 2)
    assert result.value_mse == pytest.approx(uncensored.value_mse, abs=1e-7)
    assert result.positionwise_re == pytest.approx(uncensored.positionwise_re, abs=1e-7)
    # prompt 1: ln(mean(0.9**4, 0.9**3)) / ln 0.9 = 3.486836 (the censored 3 counts as if it ended).
    l_gt = [1.48683602265324, 3.4868360226532404, 5.0]
    assert result.prompt_mre == pytest.approx(sum(abs(L_HAT - l) / l for l in l_gt) / 3, rel=1e-5)

    all_censored = evaluate_constant(-0.5, records[-1:], GAMMA)
    assert math.isnan(all_censored.value_mse) and all(math.isnan(e) for e in all_censored.positionwise_re.values())
    assert all_censored.prompt_mre == pytest.approx(abs(L_HAT - 5.0) / 5.0, rel=1e-5)


def test_random_lenvm_metrics_match_a_direct_forward_per_record(random_model):
    records = random_records(seed=2)
    result = evaluate_lenvm(random_model, records)
    squared, s0_values, errors = [], {}, {f: [] for f in FRACTIONS}
    for rec in records:
        p, length = len(rec["prompt_ids"]), rec["completion_length"]
        with torch.no_grad():
            values = random_model(torch.tensor([rec["prompt_ids"] + rec["completion_ids"]])).values[0, p - 1 :]
        s0_values.setdefault(rec["prompt_index"], values[0])
        if rec["finish_reason"] != "eos":
            continue
        targets = length_to_value(torch.arange(length, -1, -1), GAMMA)  # G_t for t = 0 .. L
        squared += ((values - targets) ** 2).tolist()
        for f in FRACTIONS:
            k = math.floor(f * length)
            errors[f].append(abs(value_to_length(values[k], GAMMA).item() - (length - k)) / (length - k))
    assert result.num_censored == sum(r["finish_reason"] == "length" for r in records) > 0
    assert result.value_mse == pytest.approx(sum(squared) / len(squared), rel=1e-4)
    for f in FRACTIONS:
        assert result.positionwise_re[f] == pytest.approx(sum(errors[f]) / len(errors[f]), rel=1e-4)
    lengths = torch.tensor([[r["completion_length"] for r in records if r["prompt_index"] == p] for p in range(4)])
    expected_mre = prompt_boundary_mre(torch.stack([s0_values[p] for p in range(4)]), lengths, GAMMA)
    assert result.prompt_mre == pytest.approx(expected_mre.item(), rel=1e-4)


def test_random_lenvm_results_do_not_depend_on_record_order_or_batch_size(random_model):
    records = random_records(seed=4)
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    random_model.train()
    reference = evaluate_lenvm(random_model, records, batch_size=16)
    assert random_model.training  # the caller's mode is restored
    random_model.eval()
    assert_same(reference, evaluate_lenvm(random_model, shuffled, batch_size=1))
    assert_same(reference, evaluate_lenvm(random_model, shuffled, batch_size=5))


def test_bad_records_are_rejected_with_clear_errors(constant_model):
    with pytest.raises(ValueError, match="records is empty"):
        evaluate_lenvm(constant_model, [])
    mismatched = [make_record(0, 0, PROMPT_A, 1), make_record(0, 1, PROMPT_B, 2)]
    with pytest.raises(ValueError, match="prompt_index=0 sample_index=1: prompt_ids differ"):
        evaluate_constant(-0.5, mismatched, GAMMA)
    bad_length = [make_record(0, 0, PROMPT_A, 1), {**make_record(1, 3, PROMPT_B, 2), "completion_length": 3}]
    with pytest.raises(ValueError, match="prompt_index=1 sample_index=3: completion_length=3 but it has 2"):
        evaluate_lenvm(constant_model, bad_length)
    with pytest.raises(ValueError, match="records is empty"):
        constant_baseline_value([], GAMMA)


def test_format_report_lists_every_row_and_its_numbers(constant_model):
    rows = {
        "LenVM": evaluate_lenvm(constant_model, RECORDS),
        "constant baseline": evaluate_constant(constant_baseline_value(RECORDS, GAMMA), RECORDS, GAMMA),
    }
    report = format_report(rows)
    lines = report.splitlines()
    assert lines[0] == "2 prompts / 3 completions / 0 censored"
    assert all(c in lines[1] for c in ("value MSE", "prompt MRE", "RE@0%", "RE@25%", "RE@50%", "RE@75%"))
    for line, (name, row) in zip(lines[2:], rows.items()):
        assert line.startswith(name)
        assert f"{row.value_mse:.4g}" in line and f"{row.prompt_mre:.1%} ± {row.prompt_mre_se:.1%}" in line
        assert all(f"{e:.1%}" in line for e in row.positionwise_re.values())
    assert len(lines) == 4
    with pytest.raises(ValueError, match="other records"):
        format_report({**rows, "other": evaluate_constant(-0.5, RECORDS[:2], GAMMA)})


# ----------------------------------------------------------------------------- prompt-length baseline, references


def linear_records(prompt_tokens, samples=2, first_index=0):
    """Records whose every completion has the length whose value ``-(1 - GAMMA**L)`` is ``-0.1 * P``, P the
    prompt's tokens (1 <= P <= 9): a value exactly linear in P (lengths need not be whole for the fit)."""
    lengths = {p: round(math.log(1 - 0.1 * p) / math.log(GAMMA)) for p in prompt_tokens}
    return [make_record(first_index + i, s, list(range(1, p + 1)), lengths[p])
            for i, p in enumerate(prompt_tokens) for s in range(samples)]


def test_prompt_length_baseline_is_a_line_in_value_space():
    train = linear_records([2, 3, 5, 8])
    values = {p: -(1 - GAMMA ** round(math.log(1 - 0.1 * p) / math.log(GAMMA))) for p in (2, 3, 5, 8)}
    baseline = prompt_length_baseline(train, GAMMA)
    assert isinstance(baseline, PromptLengthBaseline) and baseline.gamma == GAMMA
    assert baseline.slope == pytest.approx(-0.1, abs=0.01) and baseline.intercept == pytest.approx(0.0, abs=0.02)
    assert baseline.min_value == pytest.approx(values[8])
    test = linear_records([4, 3, 6], samples=3, first_index=10)
    expected = [math.log(1 + baseline.slope * p + baseline.intercept) / math.log(GAMMA) for p in (4, 3, 6)]
    assert baseline.predict_lengths(test).tolist() == pytest.approx(expected, rel=1e-5)  # prompt_index order
    row = evaluate_prompt_length_baseline(baseline, test)
    assert row.prompt_mre < 0.1  # the lengths are whole tokens, so the line is only near-exact
    assert math.isnan(row.value_mse) and all(math.isnan(e) for e in row.positionwise_re.values())
    assert list(row.positionwise_re) == list(FRACTIONS)
    assert (row.num_prompts, row.num_completions, row.num_censored) == (3, 9, 0)


def test_prompt_length_baseline_targets_predictions_and_errors():
    # targets are mean values, censored samples at their lower bound: prompt A (3 tokens) samples 1 and 2 ->
    # -(1 - (0.9 + 0.81) / 2) = -0.145; prompt B (2 tokens) samples 4 (eos) and 3 (cut) -> -(1 - (0.6561 + 0.729) / 2)
    # = -0.30745. Two points: an exact line.
    train = RECORDS[:2] + [make_record(1, 0, PROMPT_B, 4), make_record(1, 1, PROMPT_B, 3, "length")]
    baseline = prompt_length_baseline(train, GAMMA)
    assert (baseline.slope, baseline.intercept) == pytest.approx((0.16245, -0.63235), abs=1e-6)
    assert baseline.min_value == pytest.approx(-0.30745)
    # one prompt token: -0.4699, below what the fit saw, so clamped to -0.30745 -> ln(0.69255) / ln(0.9) tokens;
    # eight prompt tokens: +0.6672, clamped to -(1 - 0.9) -> 1 token
    near = [make_record(0, 0, [7], 2), make_record(0, 1, [7], 2)]
    far = [make_record(0, 0, list(range(8)), 2), make_record(0, 1, list(range(8)), 2)]
    assert baseline.predict_lengths(near).tolist() == pytest.approx([math.log(0.69255) / math.log(GAMMA)], rel=1e-5)
    assert baseline.predict_lengths(far).tolist() == pytest.approx([1.0], rel=1e-5)
    row = evaluate_prompt_length_baseline(baseline, far)
    assert row.prompt_mre == pytest.approx(0.5, rel=1e-5) and math.isnan(row.prompt_mre_se)  # |1 - 2| / 2
    with pytest.raises(ValueError, match="at least 2 training prompts, got 1"):
        prompt_length_baseline(RECORDS[:2], GAMMA)
    with pytest.raises(ValueError, match="all 2 training prompts have 3 tokens: the slope"):
        prompt_length_baseline(RECORDS[:2] + [make_record(5, 0, [1, 2, 3], 4)], GAMMA)
    with pytest.raises(ValueError, match="records is empty"):
        prompt_length_baseline([], GAMMA)


def test_prompt_length_baseline_with_one_sample_per_prompt_is_not_biased_long():
    """With one sample per prompt a fit of lengths targets the mean length, longer than the return-consistent one;
    the value-space fit targets E[gamma**L]. Prompts of 2 and 3 tokens, each sampling lengths 1 or 30 evenly."""
    train = [make_record(2 * k + j, 0, [5] * (2 + j), (1, 30)[k % 2]) for k in range(40) for j in range(2)]
    baseline = prompt_length_baseline(train, GAMMA)
    truth = math.log((GAMMA + GAMMA ** 30) / 2) / math.log(GAMMA)  # 6.3: far below the mean length 15.5
    test = [make_record(0, 0, [5, 5], 2)]
    assert baseline.predict_lengths(test).item() == pytest.approx(truth, rel=1e-3)


def test_noise_floor_and_split_half_by_hand():
    # prompt 0: samples 1 and 2; prompt 1: samples 4 and 4 (every resample and split gives 0 error)
    records = RECORDS[:2] + [make_record(1, 0, PROMPT_B, 4), make_record(1, 1, PROMPT_B, 4)]
    # split-half with two samples: (|1 - 2| / 2 + |2 - 1| / 1) / 2 = 0.75 and 0 -> mean 0.375, SE 0.375
    assert split_half_mre(records, GAMMA, num_splits=3) == pytest.approx((0.375, 0.375))
    # noise floor of prompt 0: resamples {1, 1}, {2, 2} w.p. 1/4 each, {1, 2} (error 0) w.p. 1/2
    l_gt = 1.48683602265324
    floor_0 = ((l_gt - 1) / 1 + (2 - l_gt) / 2) / 4
    mean, se = noise_floor(records, GAMMA, num_bootstrap=1000, seed=3)
    assert mean == pytest.approx(floor_0 / 2, abs=0.01) and se == pytest.approx(mean, rel=1e-5)
    assert noise_floor(records, GAMMA, num_bootstrap=50, seed=1) == noise_floor(list(reversed(records)), GAMMA,
                                                                                num_bootstrap=50, seed=1)
    for function in (noise_floor, split_half_mre):
        with pytest.raises(ValueError, match="at least 2 samples per prompt; prompt_index=1 has 1"):
            function(RECORDS, GAMMA)


def test_format_report_with_a_prediction_only_row_and_references(constant_model):
    baseline = PromptLengthBaseline(slope=0.0, intercept=-(1 - GAMMA**2), gamma=GAMMA, min_value=-0.9)  # 2 tokens
    rows = {"LenVM": evaluate_lenvm(constant_model, RECORDS),
            "prompt-length regression": evaluate_prompt_length_baseline(baseline, RECORDS)}
    lines = format_report(rows, {NOISE_FLOOR_ROW: (0.0123, 0.0046), SPLIT_HALF_ROW: (0.25, math.nan)}).splitlines()
    assert len(lines) == 6 and lines[0] == "2 prompts / 3 completions / 0 censored"
    regression = lines[3].split()
    assert lines[3].startswith("prompt-length regression")
    assert regression[2] == "—" and regression[-4:] == ["—"] * 4
    row = rows["prompt-length regression"]
    assert f"{row.prompt_mre:.1%} ± {row.prompt_mre_se:.1%}" in lines[3]
    assert lines[4].startswith(NOISE_FLOOR_ROW) and "1.2% ± 0.5%" in lines[4] and lines[4].count("—") == 5
    assert lines[5].startswith(SPLIT_HALF_ROW) and "25.0%" in lines[5] and "±" not in lines[5]  # no SE: mean only
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns


# ----------------------------------------------------------------------------- policy evaluation


def text_record(tokenizer, prompt_index, sample_index, text, finish_reason="eos"):
    """A rollout record whose completion is ``text`` (+ EOS when it ended), tokenized like a sampled one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if finish_reason == "eos":
        ids = ids + [tokenizer.eos_token_id]
    return {"prompt_index": prompt_index, "sample_index": sample_index, "prompt_ids": [1, 2 + prompt_index],
            "completion_ids": ids, "completion_length": len(ids), "finish_reason": finish_reason}


def policy_records(tokenizer):
    # prompt 0 (gold 7): right; parseable but wrong.  prompt 1 (gold 12): right; cut at the limit with no answer.
    return [
        text_record(tokenizer, 0, 0, "3 + 4 = 7\n#### 7"),
        text_record(tokenizer, 0, 1, "#### 8"),
        text_record(tokenizer, 1, 0, "It is 12.\n#### 12"),
        text_record(tokenizer, 1, 1, "Let me think about twelve", finish_reason="length"),
    ]


def test_evaluate_policy_by_hand(smollm2_tokenizer):
    records = policy_records(smollm2_tokenizer)
    row = evaluate_policy(records, ["She has 3 + 4 = 7 apples.\n#### 7", "12"], smollm2_tokenizer)
    # per-prompt means, then mean and standard error over the 2 prompts: SE = |a - b| / 2 for two values
    lengths = [[r["completion_length"] for r in records[:2]], [r["completion_length"] for r in records[2:]]]
    means = [sum(x) / 2 for x in lengths]
    assert row.mean_length == pytest.approx(sum(means) / 2)
    assert row.mean_length_se == pytest.approx(abs(means[0] - means[1]) / 2)
    assert (row.truncated_frac, row.truncated_frac_se) == pytest.approx((0.25, 0.25))  # 0 and 1/2
    assert (row.answer_rate, row.answer_rate_se) == pytest.approx((0.75, 0.25))  # 1 and 1/2
    assert (row.accuracy, row.accuracy_se) == pytest.approx((0.5, 0.0))  # 1/2 and 1/2
    assert (row.num_prompts, row.num_completions) == (2, 4)
    # the EOS token is not part of the parsed text: "#### 7<|im_end|>" is the answer 7
    assert smollm2_tokenizer.decode(records[0]["completion_ids"]).endswith("#### 7<|im_end|>")


def test_evaluate_policy_weights_prompts_equally_and_ignores_record_order(smollm2_tokenizer):
    records = policy_records(smollm2_tokenizer) + [text_record(smollm2_tokenizer, 1, 2, "#### 12")]
    answers = {0: "#### 7", 1: "#### 12"}  # a mapping works as well as a list
    row = evaluate_policy(records, answers, smollm2_tokenizer)
    assert row.accuracy == pytest.approx((1 / 2 + 2 / 3) / 2)  # not the pooled 3/5
    assert row.num_completions == 5
    shuffled = evaluate_policy(list(reversed(records)), answers, smollm2_tokenizer)
    assert vars(shuffled) == pytest.approx(vars(row))


def test_evaluate_policy_errors_and_single_prompt(smollm2_tokenizer):
    records = policy_records(smollm2_tokenizer)
    with pytest.raises(ValueError, match="no gold answer for prompt_index=1"):
        evaluate_policy(records, ["#### 7"], smollm2_tokenizer)
    with pytest.raises(ValueError, match="gold answer at row 2 cannot be parsed"):
        evaluate_policy(records, ["7", "twelve"], smollm2_tokenizer)
    with pytest.raises(ValueError, match="records is empty"):
        evaluate_policy([], ["7"], smollm2_tokenizer)
    one = evaluate_policy(records[:2], ["7"], smollm2_tokenizer)
    assert one.accuracy == 0.5 and math.isnan(one.accuracy_se)  # no spread over prompts with one prompt


def test_paired_policy_difference_by_hand(smollm2_tokenizer):
    records = policy_records(smollm2_tokenizer)
    means = policy_prompt_means(records, ["7", "12"], smollm2_tokenizer)
    assert means["prompt_index"].tolist() == [0, 1]
    assert means["accuracy"].tolist() == [0.5, 0.5] and means["answer_rate"].tolist() == [1.0, 0.5]
    other = policy_prompt_means(records, ["9", "12"], smollm2_tokenizer)  # prompt 0 now all wrong
    diff = paired_policy_difference(means, other)
    # d = (1/2 - 0, 1/2 - 1/2) = (0.5, 0): mean 0.25, SE |0.5 - 0| / 2 = 0.25
    assert diff["accuracy"] == pytest.approx((0.25, 0.25))
    assert diff["mean_length"] == pytest.approx((0.0, 0.0)) and diff["answer_rate"] == pytest.approx((0.0, 0.0))
    with pytest.raises(ValueError, match="the same prompts"):
        paired_policy_difference(means, policy_prompt_means(records[:2], ["7"], smollm2_tokenizer))


def test_format_policy_table(smollm2_tokenizer):
    records = policy_records(smollm2_tokenizer)
    before = evaluate_policy(records, ["7", "12"], smollm2_tokenizer)
    after = evaluate_policy(records, ["9", "12"], smollm2_tokenizer)  # accuracy 0 and 1/2
    lines = format_policy_table({"before": before, "after": after}).splitlines()
    assert lines[0].startswith("2 held-out prompts / 4 completions")
    assert all(c in lines[1] for c in ("mean length", "truncated", "answer rate", "accuracy"))
    assert lines[2].split()[0] == "before" and lines[3].split()[0] == "after"
    assert f"{before.mean_length:.1f} ± {before.mean_length_se:.1f}" in lines[2]
    assert "25.0% ± 25.0%" in lines[2] and "75.0% ± 25.0%" in lines[2] and lines[2].endswith("50.0% ± 0.0%")
    assert lines[3].endswith("25.0% ± 25.0%")
    with pytest.raises(ValueError, match="same held-out set"):
        format_policy_table({"before": before, "after": evaluate_policy(records[:2], ["7"], smollm2_tokenizer)})
    with pytest.raises(ValueError, match="rows is empty"):
        format_policy_table({})
