import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.trainer_pt_utils import LengthGroupedSampler

from lenvm_rl.data import ShuffledLengthGroupedSampler


def batches_of(sampler, size):
    order = list(sampler)
    return [order[i : i + size] for i in range(0, len(order), size)]


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 600), min_size=1, max_size=300), size=st.integers(1, 9),
       mult=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_every_index_once_batches_from_one_sorted_mega_batch_longest_first(lengths, size, mult, seed):
    sampler = ShuffledLengthGroupedSampler(lengths, size, torch.Generator().manual_seed(seed), mega_batch_mult=mult)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths))) and len(sampler) == len(lengths)
    batches = batches_of(sampler, size)
    assert all(len(b) == size for b in batches[:-1])  # only the remainder is short, and it is last
    for batch in batches:
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert lengths[batches[0][0]] == max(lengths)  # an out-of-memory error shows at step 1
    # the same seed gives the same order (exact resume)
    assert list(ShuffledLengthGroupedSampler(lengths, size, torch.Generator().manual_seed(seed),
                                             mega_batch_mult=mult)) == order


def test_batch_order_does_not_sweep_from_long_to_short_like_transformers():
    lengths = list(range(1, 1601))  # 1,600 completions in batches of 8: mega-batches of 50 batches
    ours = batches_of(ShuffledLengthGroupedSampler(lengths, 8, torch.Generator().manual_seed(0)), 8)
    theirs = batches_of(LengthGroupedSampler(8, lengths=lengths, generator=torch.Generator().manual_seed(0)), 8)

    def late_over_early(batches):  # mean length of steps 26-50 over steps 2-25, per mega-batch window
        means = [sum(lengths[i] for i in b) / len(b) for b in batches]
        windows = [means[w : w + 50] for w in range(0, 200, 50)]
        return sum(sum(w[25:]) / sum(w[1:25]) * 24 / 25 for w in windows) / len(windows)

    assert late_over_early(theirs) < 0.6  # transformers: the second half of every window is shorter
    assert 0.8 < late_over_early(ours) < 1.25
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in ours)
    assert padding / sum(lengths) < 0.05  # still length-grouped


def test_bad_batch_size():
    import pytest

    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ShuffledLengthGroupedSampler([3, 4], 0)
