"""The "group" twin's return bootstraps a cut completion with V(s_T), exactly as the LenVM's Monte-Carlo return does."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenvm_rl.core import group_length_advantages, length_gae


def test_a_hand_computed_group_of_eos_and_cut_rows():
    # gamma 0.5; rows: EOS at L=1, EOS at L=2, cut at L=2 with V(s_T) = -0.5, cut at L=3 with V(s_T) = -0.25
    lengths = torch.tensor([1, 2, 2, 3])
    final_values = torch.tensor([0.0, 0.0, -0.5, -0.25])
    # G = -(1 - gamma^L (1 + V)): -(1 - .5), -(1 - .25), -(1 - .25 * .5), -(1 - .125 * .75)
    G = torch.tensor([-0.5, -0.75, -0.875, -0.90625])
    expected = G - G.mean()
    torch.testing.assert_close(group_length_advantages(lengths, 0.5, 4, final_values), expected)
    # without the bootstrap a cut row counts only its tokens: the cut L=2 row ties the EOS L=2 row
    plain = group_length_advantages(lengths, 0.5, 4)
    assert plain[1] == plain[2] and expected[2] < expected[1]


def test_terminated_rows_with_zero_final_value_are_unchanged():
    lengths = torch.tensor([3, 7, 1, 4])
    torch.testing.assert_close(group_length_advantages(lengths, 0.9, 2, torch.zeros(4)),
                               group_length_advantages(lengths, 0.9, 2))


def test_final_values_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="final_values has shape"):
        group_length_advantages(torch.tensor([1, 2]), 0.9, 2, torch.zeros(3))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_the_twin_return_is_the_lenvm_monte_carlo_return_at_s0(data):
    n, width = 4, 6
    gamma = data.draw(st.floats(0.5, 0.99))
    lengths = torch.tensor(data.draw(st.lists(st.integers(1, width), min_size=n, max_size=n)))
    cut = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    values = -torch.tensor(data.draw(st.lists(st.floats(0.0, 1.0), min_size=n * width, max_size=n * width)))
    values = values.reshape(n, width)
    final_values = torch.where(cut, -torch.tensor(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))), 0.0)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    _, returns = length_gae(torch.where(mask, values, 0.0), mask, final_values, gamma, 1.0)
    expected = returns[:, 0] - returns[:, 0].mean()
    torch.testing.assert_close(group_length_advantages(lengths, gamma, n, final_values), expected,
                               atol=1e-5, rtol=1e-5)
