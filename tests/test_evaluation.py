import math
import random

import pytest
import torch
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.core import length_to_value, prompt_boundary_mre, value_to_length
from lenvm_rl.evaluation import (
    FRACTIONS,
    constant_baseline_value,
    evaluate_constant,
    evaluate_lenvm,
    format_report,
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
        "finish_reason": finish_reason, "sampler": {"max_new_tokens": 8},
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
        assert f"{row.value_mse:.4g}" in line and f"{row.prompt_mre:.1%}" in line
        assert all(f"{e:.1%}" in line for e in row.positionwise_re.values())
    assert len(lines) == 4
    with pytest.raises(ValueError, match="other records"):
        format_report({**rows, "other": evaluate_constant(-0.5, RECORDS[:2], GAMMA)})
