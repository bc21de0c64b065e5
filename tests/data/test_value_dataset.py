import pytest
import torch

from lenvm_rl.data import ValueDataCollator, build_value_dataset, gamma_from_records


def record(prompt_ids, completion_ids, finish_reason="eos", prompt_index=0, sample_index=0):
    return {"prompt_index": prompt_index, "sample_index": sample_index, "prompt_ids": prompt_ids,
            "completion_ids": completion_ids, "completion_length": len(completion_ids), "finish_reason": finish_reason}


RECORDS = [
    record([5, 6, 7], [8, 9, 2]),               # L = 3, ends with EOS (id 2)
    record([5], [2], sample_index=1),            # empty answer: just the EOS, L = 1
    record([5, 6], [8, 9, 10, 11], "length", prompt_index=1),  # cut at the limit: censored
]


def test_examples_hold_ids_and_lengths():
    ds = build_value_dataset(RECORDS)
    assert ds["input_ids"] == [[5, 6, 7, 8, 9, 2], [5, 2], [5, 6, 8, 9, 10, 11]]
    assert ds["prompt_length"] == [3, 1, 2] and ds["completion_length"] == [3, 1, 4]
    assert ds["terminated"] == [True, True, False] and ds["length"] == [6, 2, 6]
    assert len(build_value_dataset(RECORDS, censored="drop")) == 2


@pytest.mark.parametrize("side", ["right", "left"])
def test_targets_by_hand_with_either_padding(side):
    gamma = 0.5
    batch = ValueDataCollator(gamma=gamma, pad_token_id=2, padding_side=side)(list(build_value_dataset(RECORDS)))
    # Row 0: prompt 5 6 7, completion 8 9 EOS (L=3): s_0 at token 7 -> -(1 - 0.5**3) = -0.875,
    # then -(1 - 0.5**2) = -0.75 at 8, -0.5 at 9, and 0 at the EOS. The prompt tokens 5, 6 get none.
    # Row 1: prompt 5, completion EOS (L=1): -0.5 at 5, 0 at the EOS.
    # Row 2: censored under "infinite": -1 at s_0 (token 6) and at every completion token.
    expected = [[None, None, -0.875, -0.75, -0.5, 0.0], [-0.5, 0.0], [None, -1.0, -1.0, -1.0, -1.0, -1.0]]
    for row, want in enumerate(expected):
        real = batch["attention_mask"][row].bool()
        targets = batch["targets"][row][real].tolist()
        mask = batch["target_mask"][row][real].tolist()
        assert mask == [w is not None for w in want]
        assert targets == pytest.approx([0.0 if w is None else w for w in want])
        assert not batch["target_mask"][row][~real].any()
    pad = batch["input_ids"][1] == 2
    assert pad.sum() == 5  # four pads plus the real EOS; the mask, not the id, tells them apart
    assert batch["attention_mask"][1].sum() == 2


def test_eos_exactly_at_the_limit_is_a_finished_completion():
    batch = ValueDataCollator(gamma=0.5)(list(build_value_dataset([record([1], [3, 2])])))
    assert batch["targets"][0].tolist() == pytest.approx([-0.75, -0.5, 0.0])


def test_gamma_from_records_uses_the_99th_percentile_length():
    records = [record([1], [3] * n) for n in range(1, 101)]
    l99 = torch.quantile(torch.arange(1, 101).float(), 0.99).item()
    assert gamma_from_records(records) == pytest.approx(0.01 ** (1 / l99))


@pytest.mark.parametrize(
    "records, kwargs, message",
    [
        ([], {}, "records is empty"),
        ([record([], [2])], {}, "prompt_ids is empty"),
        ([{**record([1], [2]), "completion_length": 5}], {}, r"completion_length=5 but it has 1 completion_ids"),
        ([record([1], [3], "length")], {"censored": "drop"}, "every completion was cut"),
        (RECORDS, {"censored": "ignore"}, "censored must be 'infinite' or 'drop'"),
    ],
)
def test_bad_records(records, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_value_dataset(records, **kwargs)
