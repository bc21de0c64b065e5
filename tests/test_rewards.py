"""Tests for lenvm_rl.rewards: the GSM8K answer parser, the GSM8K rewards and the TRL re-exports."""

from __future__ import annotations

import json
from decimal import Decimal
from itertools import islice
from pathlib import Path

import pytest
import trl.rewards
from hypothesis import given
from hypothesis import strategies as st

import lenvm_rl.rewards as rewards
from lenvm_rl.rewards import (
    extract_answer,
    get_cosine_scaled_reward,
    get_soft_overlong_punishment,
    gsm8k_correctness_reward,
    gsm8k_format_reward,
)

GSM8K_DIR = Path(__file__).parent / "data" / "gsm8k"  # first rows and every answer form of GSM8K (its README)


def _conv(content):
    return [{"role": "assistant", "content": content}]


# --------------------------------------------------------------------------- extract_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72", "72"),
        ("#### 72", "72"),
        ("####72", "72"),
        ("#### 72\n", "72"),
        ("####\n72", "72"),
        ("#### 72 apples", "72"),  # the number token comes first; words after it are fine
        ("#### 72.", "72"),  # sentence-ending period
        ("#### 1,234", "1234"),
        ("#### 109,200,000", "109200000"),
        ("#### $1,234.50", "1234.5"),
        ("#### $5", "5"),
        ("#### -5", "-5"),
        ("#### -$5", "-5"),
        ("#### $-5", "-5"),
        ("#### +5", "5"),
        ("#### -1,000.", "-1000"),
        ("#### 72.0", "72"),
        ("#### 72.00", "72"),
        ("#### 0.50", "0.5"),
        ("#### .5", "0.5"),
        ("#### 007", "7"),
        ("#### 100", "100"),  # no exponent form ("1E+2")
        ("#### -0", "0"),
        ("#### -0.000", "0"),
        ("#### 12345678901234567890123456789012345", "12345678901234567890123456789012345"),  # no rounding
    ],
)
def test_extract_answer_by_hand(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "The answer is 72",  # no marker
        "72",
        "#### The answer is 72",  # marker followed by text
        "####",
        "#### ",
        "#### 72apples",
        "#### **72**",
        "#### 72,",
        "#### 12,34",  # not thousands groups
        "#### 1,2345",
        "#### ,123",
        "#### 1.2.3",
        "#### 72..",
        "#### --5",
        "#### $",
        "#### -",
        "#### .",
        "#### 1e5",
        "#### ٧٢",  # non-ASCII digits are not accepted
        "#### 5\n#### oops",  # the last marker decides; no fallback to an earlier one
    ],
)
def test_extract_answer_none(text):
    assert extract_answer(text) is None


def test_extract_answer_last_marker_wins():
    assert extract_answer("#### 5\nWait, let me redo that.\n#### 7") == "7"
    assert extract_answer("##### 5") == "5"  # the last "####" inside "#####"


def test_numerically_equal_answers_compare_equal():
    forms = ["72", "72.0", "72.00", "$72", "072", "+72", "72."]
    assert {extract_answer(f"#### {form}") for form in forms} == {"72"}
    assert extract_answer("#### 72.5") != extract_answer("#### 72.05")


# --------------------------------------------------------------------------- gsm8k_correctness_reward


def test_correctness_standard_format():
    completions = [
        "... #### 72",
        "... #### 72.0",
        "... #### 71",
        "no marker, the answer is 72",
        "#### 1,234",
        "#### -3",
        "#### $1,234.50",
    ]
    gold = ["... #### 72", "72", "72", "72", "1234", "#### -3", "1234.5"]
    assert gsm8k_correctness_reward(completions, answer=gold) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_correctness_bare_number_vs_full_solution_gold():
    completion = ["Step 1.\n#### 18"]
    assert gsm8k_correctness_reward(completion, answer=["Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18"]) == [
        1.0
    ]
    assert gsm8k_correctness_reward(completion, answer=["18"]) == [1.0]
    assert gsm8k_correctness_reward(completion, answer=[" 18\n"]) == [1.0]
    assert gsm8k_correctness_reward(completion, answer=["$18.00"]) == [1.0]
    assert gsm8k_correctness_reward(completion, answer=[18]) == [1.0]
    assert gsm8k_correctness_reward(completion, answer=[18.0]) == [1.0]
    assert gsm8k_correctness_reward(completion, answer=[Decimal("18.000")]) == [1.0]
    assert gsm8k_correctness_reward(completion, answer=["19"]) == [0.0]


def test_correctness_exact_no_tolerance():
    assert gsm8k_correctness_reward(["#### 0.30000000000000001"], answer=["0.3"]) == [0.0]
    assert gsm8k_correctness_reward(["#### 0.3"], answer=[0.3]) == [1.0]


def test_correctness_last_marker_wins():
    assert gsm8k_correctness_reward(["#### 72\nHmm, no.\n#### 70"], answer=["72"]) == [0.0]
    assert gsm8k_correctness_reward(["#### 70\nHmm, no.\n#### 72"], answer=["72"]) == [1.0]


def test_correctness_conversational_format():
    completions = [
        _conv("Reasoning...\n#### 72"),
        _conv([{"type": "text", "text": "Reasoning...\n"}, {"type": "text", "text": "#### 72"}]),
        [
            {"role": "assistant", "content": "#### 5"},
            {"role": "tool", "content": "x"},
            {"role": "assistant", "content": "#### 72"},
        ],  # last message decides
        [{"role": "assistant", "content": "#### 72"}, {"role": "assistant", "content": "done"}],
        _conv("#### 71"),
        _conv(None),
        [],
    ]
    assert gsm8k_correctness_reward(completions, answer=["72"] * len(completions)) == [
        1.0,
        1.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]


def test_correctness_accepts_trainer_kwargs_and_logs():
    logged = {}

    def log_extra(column, values):
        logged[column] = values

    out = gsm8k_correctness_reward(
        ["#### 72", "nothing"],
        answer=["#### 72", "#### 3"],
        prompts=["q1", "q2"],
        completion_ids=[[1, 2], [3]],
        question=["q1", "q2"],
        trainer_state=object(),
        log_extra=log_extra,
        log_metric=lambda name, value: None,
    )
    assert out == [1.0, 0.0]
    assert logged == {"gsm8k_gold": ["72", "3"], "gsm8k_pred": ["72", ""]}


@pytest.mark.parametrize(
    "bad", ["", "seventy-two", "Work...\n#### seventy-two", "#### ", "12,34", None, float("nan"), True]
)
def test_correctness_unparseable_gold_names_the_row(bad):
    with pytest.raises(ValueError, match=r"row 2\b") as info:
        gsm8k_correctness_reward(["#### 1", "#### 2", "#### 3"], answer=["1", "#### 2", bad])
    assert repr(bad) in str(info.value)


def test_correctness_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        gsm8k_correctness_reward(["#### 1", "#### 2"], answer=["1"])


def test_bad_completion_type_is_an_error():
    with pytest.raises(TypeError, match="completion"):
        gsm8k_format_reward([42])


@given(st.integers())
def test_property_comma_grouped_integer_is_correct(n):
    assert gsm8k_correctness_reward([f"Some work.\n#### {n:,}"], answer=[str(n)]) == [1.0]
    assert extract_answer(f"#### {n:,}") == str(n)


@given(st.integers(), st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=5))
def test_property_canonical_form_is_value_exact(whole, frac, pad):
    """Trailing fractional zeros never matter; the canonical string parses back to the same exact value."""
    text = f"{whole}.{frac:06d}" + "0" * pad
    canonical = extract_answer(f"#### {text}")
    assert Decimal(canonical) == Decimal(text)
    assert extract_answer(f"#### {canonical}") == canonical
    assert "E" not in canonical and not canonical.endswith(".")


def test_real_gsm8k_solutions_score_themselves_correct():
    with open(GSM8K_DIR / "train.jsonl") as f:
        rows = [json.loads(line) for line in islice(f, 50)]
    assert len(rows) == 50
    answers = [row["answer"] for row in rows]
    assert gsm8k_correctness_reward(answers, answer=answers) == [1.0] * 50
    assert gsm8k_correctness_reward([_conv(a) for a in answers], answer=answers) == [1.0] * 50
    assert gsm8k_format_reward(answers) == [1.0] * 50
    # Bare-number gold (the text after the marker) agrees with full-solution gold.
    bare = [a.rsplit("####", 1)[1].strip() for a in answers]
    assert gsm8k_correctness_reward(answers, answer=bare) == [1.0] * 50


def test_every_real_gsm8k_answer_form_parses():
    """The shipped rows hold every form of final answer in GSM8K: bare, with thousands separators, negative."""
    parsed = {}
    for split in ("train", "test"):
        with open(GSM8K_DIR / f"{split}.jsonl") as f:
            for i, line in enumerate(f):
                answer = json.loads(line)["answer"]
                parsed[answer.rsplit("####", 1)[1].strip()] = extract_answer(answer)
                assert extract_answer(answer) is not None, (split, i, answer)
    assert len(parsed) > 100
    assert (parsed["18"], parsed["1,450,000"], parsed["109,200,000"], parsed["-47"]) == (
        "18", "1450000", "109200000", "-47")


# --------------------------------------------------------------------------- gsm8k_format_reward


def test_format_reward():
    completions = [
        "#### 72",
        "#### 71",  # wrong but well formed
        "#### $1,234.50",
        "The answer is 72",
        "#### seventy-two",
        "#### 5\n#### oops",
        _conv("work\n#### -3"),
        _conv([{"type": "text", "text": "#### 4"}]),
        _conv("no answer"),
    ]
    assert gsm8k_format_reward(completions, answer=["72"] * len(completions), completion_ids=None) == [
        1.0,
        1.0,
        1.0,
        0.0,
        0.0,
        0.0,
        1.0,
        1.0,
        0.0,
    ]


# --------------------------------------------------------------------------- TRL re-exports and public API


def test_trl_reexports_are_the_trl_objects():
    assert get_soft_overlong_punishment is trl.rewards.get_soft_overlong_punishment
    assert get_cosine_scaled_reward is trl.rewards.get_cosine_scaled_reward
    punish = get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20)
    assert punish(completion_ids=[[1] * 80, [1] * 90, [1] * 101], completions=["", "", ""]) == [0.0, -0.5, -1.0]


def test_all_lists_public_names():
    public = {name for name in vars(rewards) if not name.startswith("_") and callable(getattr(rewards, name))}
    public -= {"annotations", "Any", "Callable", "Decimal", "InvalidOperation", "Sequence"}
    assert set(rewards.__all__) == public
    assert sorted(rewards.__all__) == [
        "extract_answer",
        "get_cosine_scaled_reward",
        "get_soft_overlong_punishment",
        "gsm8k_correctness_reward",
        "gsm8k_format_reward",
    ]
