"""Tests for lenvm_rl.core.decoding: hand-computed cases, hypothesis properties, input validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenvm_rl.core.decoding import (
    add_end_candidate,
    constraint_mask,
    remaining_target,
    select_candidates,
    soft_equal,
    soft_equal_beta,
    tilt,
)

FAST = settings(max_examples=50, deadline=None)
INF = math.inf


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def logp(probs):
    return t(probs).log()


# ============================================================================ candidate sets


def test_select_candidates_top_k_sorted_with_full_log_probs():
    logits = t([[0.0, 2.0, 1.0, -1.0]])
    ids, lp, mask = select_candidates(logits, top_k=3)
    assert ids.tolist() == [[1, 2, 0]]
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1)[:, [1, 2, 0]])
    assert mask.all()


def test_select_candidates_top_p_keeps_the_crossing_token():
    logits = logp([[0.5, 0.3, 0.15, 0.05]])
    _, _, mask = select_candidates(logits, top_k=4, top_p=0.7)  # 0.5 < 0.7 keeps 0.3; 0.8 >= 0.7 stops
    assert mask.tolist() == [[True, True, False, False]]
    _, _, mask = select_candidates(logits, top_k=4, top_p=0.1)
    assert mask.tolist() == [[True, False, False, False]]


def test_select_candidates_min_p_and_banned_tokens():
    logits = logp([[0.5, 0.3, 0.15, 0.05]])
    _, _, mask = select_candidates(logits, top_k=4, min_p=0.25)  # keep p >= 0.125
    assert mask.tolist() == [[True, True, True, False]]
    banned = t([[1.0, -INF, -INF, 0.0]])
    ids, _, mask = select_candidates(banned, top_k=4)
    assert ids[0, :2].tolist() == [0, 3] and mask.tolist() == [[True, True, False, False]]


def test_select_candidates_top_k_larger_than_vocab():
    ids, _, mask = select_candidates(t([[1.0, 2.0]]), top_k=16)
    assert ids.tolist() == [[1, 0]] and mask.all()


# probabilities 0.4, 0.3, 0.2, 0.06, 0.03, 0.01 over tokens 0..5; top-3 are tokens 0, 1, 2
SIX = logp([[0.4, 0.3, 0.2, 0.06, 0.03, 0.01]])


def test_add_end_candidate_appends_the_most_probable_end_token_where_forced():
    ids, lp, mask = select_candidates(SIX, top_k=3)
    ends = torch.tensor([5, 4])  # token 4 (p 0.03) is the more probable end token
    new_ids, new_lp, new_mask = add_end_candidate(SIX, ids, lp, mask, ends, True)
    assert new_ids.tolist() == [[0, 1, 2, 4]] and new_mask.tolist() == [[True, True, True, True]]
    assert new_lp[0, 3].item() == pytest.approx(math.log(0.03), abs=1e-6)
    torch.testing.assert_close(new_lp[:, :3], lp)
    # not forced: the column is there but out of the set
    _, _, off = add_end_candidate(SIX, ids, lp, mask, ends, False)
    assert off.tolist() == [[True, True, True, False]]


def test_add_end_candidate_unmasks_an_end_token_already_among_the_candidates():
    ids, lp, mask = select_candidates(SIX, top_k=4, min_p=0.4)  # keeps p >= 0.16: tokens 0, 1, 2, not 3
    assert mask.tolist() == [[True, True, True, False]]
    new_ids, _, new_mask = add_end_candidate(SIX, ids, lp, mask, torch.tensor([3]), True)
    assert new_ids.tolist() == [[0, 1, 2, 3, 3]]  # the repeat stays out of the set
    assert new_mask.tolist() == [[True, True, True, True, False]]


def test_add_end_candidate_per_row_and_never_a_banned_token():
    logits = torch.cat([SIX, SIX.clone()])
    logits[1, 4] = -INF  # banned in row 1 (e.g. by min_new_tokens)
    ids, lp, mask = select_candidates(logits, top_k=3)
    _, new_lp, new_mask = add_end_candidate(logits, ids, lp, mask, torch.tensor([4]), t([True, True], torch.bool))
    assert new_mask[:, 3].tolist() == [True, False] and new_lp[1, 3].item() == -INF
    _, _, rows = add_end_candidate(SIX.expand(2, -1), *select_candidates(SIX.expand(2, -1), top_k=3),
                                   torch.tensor([4]), t([False, True], torch.bool))
    assert rows[:, 3].tolist() == [False, True]
    with pytest.raises(ValueError, match="end_ids is empty"):
        add_end_candidate(SIX, ids[:1], lp[:1], mask[:1], torch.tensor([], dtype=torch.long), True)


def test_equal_and_at_most_end_at_the_target_once_the_end_token_is_a_candidate():
    ids, lp, mask = select_candidates(SIX, top_k=3)
    _, _, mask = add_end_candidate(SIX, ids, lp, mask, torch.tensor([5]), True)
    lengths = t([[4.0, 2.0, 9.0, 0.0]])  # the end token's remaining length is 0
    for constraint in ("equal", "at_most"):
        for remaining in (0, -2):  # at the target, or past it
            assert constraint_mask(lengths, mask, constraint, remaining)[0].tolist() == [False, False, False, True]


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_k=0), "top_k"), (dict(top_k=2, top_p=0.0), "top_p"), (dict(top_k=2, min_p=1.5), "min_p"),
])
def test_select_candidates_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_candidates(t([[1.0, 2.0]]), **kwargs)


# ============================================================================ tilting


def test_tilt_hand_computed():
    # p = (0.5, 0.5), u = (0.2, 0.6), beta = -5: p' ∝ (e^-1, e^-3)
    out = tilt(logp([[0.5, 0.5]]), t([[0.2, 0.6]]), torch.ones(1, 2, dtype=torch.bool), -5.0)
    expected = torch.tensor([math.exp(-1.0), math.exp(-3.0)])
    torch.testing.assert_close(out.exp()[0], expected / expected.sum())


def test_tilt_sign_negative_beta_favours_shorter():
    lp, u, mask = logp([[0.5, 0.5]]), t([[0.1, 0.9]]), torch.ones(1, 2, dtype=torch.bool)
    assert tilt(lp, u, mask, -1.0).exp()[0, 0] > 0.5 > tilt(lp, u, mask, 1.0).exp()[0, 0]


def test_tilt_per_row_beta_and_mask():
    lp = logp([[0.25, 0.25, 0.5], [0.25, 0.25, 0.5]])
    u = t([[0.1, 0.5, 0.9], [0.1, 0.5, 0.9]])
    mask = t([[1, 1, 0], [1, 1, 1]], torch.bool)
    out = tilt(lp, u, mask, t([0.0, 2.0]))
    torch.testing.assert_close(out[0].exp(), t([0.5, 0.5, 0.0]))
    assert out[0, 2] == -INF
    w = t([0.25 * math.exp(0.2), 0.25 * math.exp(1.0), 0.5 * math.exp(1.8)])
    torch.testing.assert_close(out[1].exp(), w / w.sum())


@FAST
@given(st.lists(st.floats(-20, 5), min_size=2, max_size=8), st.integers(0, 10_000))
def test_tilt_beta_zero_is_the_base_distribution(logits, seed):
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(t([logits]), -1)
    u = torch.rand(lp.shape, generator=g)
    out = tilt(lp, u, torch.ones_like(lp, dtype=torch.bool), 0.0)
    torch.testing.assert_close(out, lp, atol=1e-6, rtol=0)


@FAST
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=8), st.floats(-50, 50), st.floats(0.1, 20), st.integers(0, 999))
def test_tilt_expected_u_is_monotone_in_beta(logits, beta, step, seed):
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(t([logits]), -1)
    u = torch.rand(lp.shape, generator=g)
    mask = torch.ones_like(lp, dtype=torch.bool)
    mean = lambda b: (tilt(lp, u, mask, b).exp() * u).sum()  # noqa: E731
    assert mean(beta + step) >= mean(beta) - 1e-5
    assert torch.isclose(tilt(lp, u, mask, beta).exp().sum(), torch.tensor(1.0))


# ============================================================================ hard constraints

LENGTHS = t([[10.0, 3.0, 7.0, 30.0]])
ALL = torch.ones(1, 4, dtype=torch.bool)


@pytest.mark.parametrize("constraint, remaining, pick", [
    ("equal", 8.0, 2),     # |7 - 8| = 1 is the smallest
    ("equal", 25.0, 3),    # |30 - 25| = 5 < |10 - 25|
    ("equal", 0.0, 1),     # nearest to ending now
    ("at_most", 100.0, 1),  # the shortest
    ("at_least", 5.0, 3),  # the longest while the target is not met
])
def test_constraint_picks_hand_built(constraint, remaining, pick):
    chosen = constraint_mask(LENGTHS, ALL, constraint, remaining)
    assert chosen.sum() == 1 and chosen[0, pick]


def test_at_least_releases_once_the_target_is_met():
    mask = t([[1, 1, 0, 1]], torch.bool)
    assert torch.equal(constraint_mask(LENGTHS, mask, "at_least", 0.0), mask)
    assert torch.equal(constraint_mask(LENGTHS, mask, "at_least", -3.0), mask)


def test_constraint_respects_the_candidate_set_and_ties():
    mask = t([[1, 0, 1, 1]], torch.bool)  # the shortest (3) is not a candidate
    assert constraint_mask(LENGTHS, mask, "at_most", 0.0)[0].tolist() == [False, False, True, False]
    tied = t([[4.0, 6.0, 4.0]])  # equal distance to 5: the first (most probable) wins
    assert constraint_mask(tied, torch.ones(1, 3, dtype=torch.bool), "equal", 5.0)[0].tolist() == [True, False, False]


def test_constraint_per_row_remaining_and_infinite_lengths():
    lengths = t([[2.0, INF, 900.0], [2.0, INF, 900.0]])
    every = torch.ones(2, 3, dtype=torch.bool)
    chosen = constraint_mask(lengths, every, "equal", t([1.0, 1e6]))  # an infinite length is never close
    assert chosen.tolist() == [[True, False, False], [False, False, True]]
    assert constraint_mask(lengths, every, "at_least", 5.0)[:, 1].all()


@FAST
@given(st.lists(st.floats(0, 500), min_size=1, max_size=8), st.floats(-10, 500, width=32),
       st.sampled_from(["equal", "at_most", "at_least"]), st.integers(0, 999))
def test_constraint_picks_one_candidate_of_the_set(lengths, remaining, constraint, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(1, len(lengths), generator=g) < 0.6
    mask[0, 0] = True
    chosen = constraint_mask(t([lengths]), mask, constraint, remaining)
    assert not (chosen & ~mask).any()
    if constraint == "at_least" and remaining <= 0:
        assert torch.equal(chosen, mask)
        return
    assert chosen.sum() == 1
    picked = t(lengths)[chosen[0]].item()
    allowed = t(lengths)[mask[0]]
    best = {"equal": (allowed - remaining).abs().min(), "at_most": allowed.min(), "at_least": allowed.max()}[constraint]
    value = abs(picked - remaining) if constraint == "equal" else picked
    assert value == pytest.approx(best.item())


def test_remaining_target_counts_eos_and_differs_from_the_reference_by_one():
    # target 10 tokens with EOS; 6 generated, so a candidate makes 7 and 3 more (EOS included) end at 10
    assert remaining_target(10, 6) == 3
    assert remaining_target(10, 0) == 9 and remaining_target(10, 9) == 0 and remaining_target(10, 12) == -3
    # candidates predicting 2, 3 and 4 more tokens: "equal" picks the one that ends at exactly 10 (7 + 3) ...
    lengths, every = t([[2.0, 3.0, 4.0]]), torch.ones(1, 3, dtype=torch.bool)
    assert constraint_mask(lengths, every, "equal", remaining_target(10, 6))[0].tolist() == [False, True, False]
    # ... where the reference's r = T - t = 4 picks the one that ends at 11: its target_length 10 is our 11
    assert constraint_mask(lengths, every, "equal", 10 - 6)[0].tolist() == [False, False, True]
    assert constraint_mask(lengths, every, "equal", remaining_target(11, 6))[0].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="generated must be >= 0"):
        remaining_target(10, -1)


def test_unknown_constraint_names_the_argument():
    with pytest.raises(ValueError, match="constraint must be"):
        constraint_mask(LENGTHS, ALL, "exactly", 3.0)
    with pytest.raises(ValueError, match="mask has shape"):
        constraint_mask(LENGTHS, ALL[:, :2], "equal", 3.0)


# ============================================================================ soft equal


def test_soft_equal_hits_the_target_mean():
    lp, u, mask = logp([[0.7, 0.2, 0.1]]), t([[0.9, 0.5, 0.1]]), torch.ones(1, 3, dtype=torch.bool)
    out = soft_equal(lp, u, mask, 0.4)
    assert (out.exp() * u).sum().item() == pytest.approx(0.4, abs=1e-4)
    assert soft_equal_beta(lp, u, mask, 0.4).item() < 0  # the base mean 0.74 is too long


def test_soft_equal_target_at_base_mean_gives_beta_zero_and_saturates():
    lp, u, mask = logp([[0.5, 0.5]]), t([[0.2, 0.6]]), torch.ones(1, 2, dtype=torch.bool)
    assert soft_equal_beta(lp, u, mask, 0.4).item() == pytest.approx(0.0, abs=1e-3)
    assert soft_equal_beta(lp, u, mask, 0.0).item() == -1e4  # unreachable: all but picks the shortest
    assert soft_equal(lp, u, mask, 0.99).exp()[0, 1].item() == pytest.approx(1.0)


@FAST
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=6), st.floats(0.05, 0.95), st.integers(0, 999))
def test_soft_equal_mean_matches_any_reachable_target(logits, target, seed):
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(t([logits]), -1)
    u = torch.rand(lp.shape, generator=g)
    mask = torch.ones_like(lp, dtype=torch.bool)
    mean = (soft_equal(lp, u, mask, target).exp() * u).sum().item()
    lo, hi = u.min().item(), u.max().item()
    assert mean == pytest.approx(min(max(target, lo), hi), abs=2e-3)
