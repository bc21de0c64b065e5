"""Tests for lenvm_rl.core.seeds: hand-computed values, hypothesis properties, and input validation."""

import math
import statistics

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lenvm_rl.core import (
    interpolate_at_length,
    interpolate_piecewise_at_length,
    paired_seed_differences,
    pooled_standard_error,
    seed_mean,
    seeds_to_resolve,
)

FAST = settings(max_examples=60, deadline=None)
NAN = math.nan


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def close(actual, expected):
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, t(expected), equal_nan=True)


# ============================================================================ hand-computed values


def test_seed_mean_by_hand():
    # 1, 2, 3, 6: mean 3; sd = sqrt((4 + 1 + 0 + 9) / 3); se = sd / 2
    mean, se = seed_mean(t([1.0, 2.0, 3.0, 6.0]))
    close(mean, 3.0)
    close(se, math.sqrt(14 / 3) / 2)
    # trailing metrics: columns (1, 3) and (10, 30): sd sqrt(2) and sqrt(200), se 1 and 10
    mean, se = seed_mean(torch.tensor([[1, 10], [3, 30]]))
    close(mean, [2.0, 20.0])
    close(se, [1.0, 10.0])


def test_one_seed_has_no_between_seed_error():
    mean, se = seed_mean(t([[0.25, 7.0]]))
    close(mean, [0.25, 7.0])
    close(se, [NAN, NAN])


def test_pooled_standard_error_by_hand():
    # sqrt((3**2 + 4**2) / 2); a NaN seed error makes the pool NaN
    close(pooled_standard_error(t([3.0, 4.0])), math.sqrt(12.5))
    close(pooled_standard_error(t([[0.5, 0.0], [0.25, NAN], [0.0, 1.0]])),
          [math.sqrt((0.25 + 0.0625) / 3), NAN])


def test_paired_differences_by_hand():
    # answer rates of lenvm and of the twin at lenvm's length, seeds 0-2: d = 1/8, 3/8, 1/8
    d, mean, se = paired_seed_differences(t([0.5, 0.75, 0.5]), t([0.375, 0.375, 0.375]))
    close(d, [0.125, 0.375, 0.125])
    close(mean, 5 / 24)
    close(se, 1 / 12)  # deviations -1/12, 1/6, -1/12: sd = sqrt((6/144) / 2) = 1/(4 sqrt 3); / sqrt 3


def test_interpolate_at_length_by_hand():
    # twin at s = 0.5: lengths 12, 14, 13, answer 0.5; at s = 1.0: lengths 8, 10, 9, answer 0.25.
    # Targets 10, 12, 11 sit half way at every seed: s* = 0.75, answer 0.375; the length column gives the target.
    lengths = t([[12.0, 14.0, 13.0], [8.0, 10.0, 9.0]])
    metrics = torch.stack([torch.stack([lengths[0], t([0.5] * 3)], dim=-1),
                           torch.stack([lengths[1], t([0.25] * 3)], dim=-1)])  # (2, S, 2)
    s_star, m_star, w = interpolate_at_length((0.5, 1.0), lengths, metrics, t([10.0, 12.0, 11.0]))
    close(w, [0.5, 0.5, 0.5])
    close(s_star, [0.75, 0.75, 0.75])
    close(m_star, [[10.0, 0.375], [12.0, 0.375], [11.0, 0.375]])
    # beyond the shorter point: w = (14 - 12) / (8 - 12) = -0.5 -> s* = 0.25, answer 0.5 + 0.5 * 0.25 = 0.625
    s_star, m_star, w = interpolate_at_length((0.5, 1.0), t([[12.0], [8.0]]), t([[0.5], [0.25]]), t([14.0]))
    close(w, [-0.5])
    close(s_star, [0.25])
    close(m_star, [0.625])


def test_interpolate_piecewise_at_length_by_hand():
    # an arm at s = 0, 0.25, 0.5 (given out of order): lengths 130, 110, 90, answers 0.5, 0.6, 0.4 at every seed.
    # 120 lies half way on segment 0 (s* = 0.125, answer 0.55), 100 half way on segment 1 (s* = 0.375, 0.5);
    # 140 is beyond s = 0 (segment 0, w = -0.5: s* = -0.125, 0.45), 80 beyond s = 0.5 (segment 1, w = 1.5: 0.3)
    order = [1, 0, 2]
    lengths = t([[130.0] * 4, [110.0] * 4, [90.0] * 4])[order]
    metrics = t([[[0.5]] * 4, [[0.6]] * 4, [[0.4]] * 4])[order]
    s_star, m_star, w, segment = interpolate_piecewise_at_length((0.25, 0.0, 0.5), lengths, metrics,
                                                                 t([120.0, 100.0, 140.0, 80.0]))
    close(s_star, [0.125, 0.375, -0.125, 0.625])
    close(m_star, [[0.55], [0.5], [0.45], [0.3]])
    close(w, [0.5, 0.5, -0.5, 1.5])
    assert segment.tolist() == [0, 1, 0, 1]
    # a non-monotone arm (lengths 100, 90, 95): 92 is reached on both segments; the smaller s wins (segment 0)
    _, _, w, segment = interpolate_piecewise_at_length((0.0, 1.0, 2.0), t([[100.0], [90.0], [95.0]]),
                                                       t([[0.0], [1.0], [2.0]]), t([92.0]))
    close(w, [0.8])
    assert segment.tolist() == [0]


def test_seeds_to_resolve_by_hand():
    # (2 * 3 / 1)**2 = 36; (2 * 2.5 / 1)**2 = 25 exactly; a tiny sd still needs 2 seeds; 0 never; NaN unknown
    close(seeds_to_resolve(t([1.0, -1.0, 1.0, 0.2, 0.0, 1.0]), t([3.0, 2.5, 0.0, 0.01, 1.0, NAN])),
          [36.0, 25.0, 2.0, 2.0, math.inf, NAN])
    close(seeds_to_resolve(t(1.0), t(3.0), z=1.0), 9.0)


# ============================================================================ properties

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@FAST
@given(st.lists(finite, min_size=2, max_size=8))
def test_seed_mean_matches_the_standard_library(values):
    mean, se = seed_mean(t(values))
    assert mean.item() == pytest.approx(statistics.fmean(values), abs=1e-9)
    assert se.item() == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)), rel=1e-9, abs=1e-9)


@FAST
@given(st.lists(st.tuples(finite, finite, finite), min_size=2, max_size=8))
def test_pairing_removes_a_shared_seed_effect(rows):
    # a_i = x_i + c_i, b_i = y_i + c_i: the seed effect c_i cancels from every per-seed difference
    x, y, c = (t(list(col)) for col in zip(*rows))
    d, mean, se = paired_seed_differences(x + c, y + c)
    d0, mean0, se0 = paired_seed_differences(x, y)
    torch.testing.assert_close(d, d0, atol=1e-9, rtol=0)
    torch.testing.assert_close(se, se0, atol=1e-7, rtol=1e-7)
    assert mean.item() == pytest.approx(x.mean().item() - y.mean().item(), abs=1e-9)


@FAST
@given(st.lists(st.tuples(finite, finite, finite, finite), min_size=1, max_size=6),
       st.tuples(finite, finite), st.floats(-2, 3))
def test_interpolation_hits_both_points_and_stays_on_the_line(rows, coefs, fraction):
    assume(coefs[0] != coefs[1])
    l_a, l_b, m_a, m_b = (t(list(col)) for col in zip(*rows))
    assume(bool(((l_b - l_a).abs() > 1e-3).all()))
    lengths, metrics = torch.stack([l_a, l_b]), torch.stack([m_a, m_b])
    for target, s, m in ((l_a, coefs[0], m_a), (l_b, coefs[1], m_b)):
        s_star, m_star, _ = interpolate_at_length(coefs, lengths, metrics, target)
        torch.testing.assert_close(s_star, torch.full_like(s_star, s), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(m_star, m, atol=1e-6, rtol=1e-6)
    # any target: w says where it lies; swapping the two points changes nothing
    target = l_a + fraction * (l_b - l_a)
    s_star, m_star, w = interpolate_at_length(coefs, lengths, metrics, target)
    torch.testing.assert_close(w, torch.full_like(w, fraction), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m_star, m_a + w * (m_b - m_a))
    s_swap, m_swap, w_swap = interpolate_at_length(coefs[::-1], lengths.flip(0), metrics.flip(0), target)
    torch.testing.assert_close(s_swap, s_star, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m_swap, m_star, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w_swap, 1 - w, atol=1e-6, rtol=1e-6)


@FAST
@given(st.lists(st.tuples(finite, finite, finite, finite, finite, finite), min_size=1, max_size=6),
       st.floats(-2, 3))
def test_piecewise_interpolation_is_the_two_point_one_on_its_segment(rows, fraction):
    l0, l1, l2, m0, m1, m2 = (t(list(col)) for col in zip(*rows))
    assume(bool(((l1 - l0).abs() > 1e-3).all() and ((l2 - l1).abs() > 1e-3).all()))
    lengths, metrics, coefs = torch.stack([l0, l1, l2]), torch.stack([m0, m1, m2]), (0.0, 0.5, 1.5)
    target = l1 + fraction * (l2 - l1)
    s_star, m_star, w, segment = interpolate_piecewise_at_length(coefs, lengths, metrics, target)
    for k in (0, 1):
        s_k, m_k, w_k = interpolate_at_length(coefs[k : k + 2], lengths[k : k + 2], metrics[k : k + 2], target)
        chosen = segment == k
        torch.testing.assert_close(s_star[chosen], s_k[chosen])
        torch.testing.assert_close(m_star[chosen], m_k[chosen])
        torch.testing.assert_close(w[chosen], w_k[chosen])
        if k == 0:  # segment 0 is taken whenever it brackets the target
            assert bool((chosen | (w_k < 0) | (w_k > 1)).all())
    # two coefficients: exactly interpolate_at_length
    two = interpolate_piecewise_at_length(coefs[:2], lengths[:2], metrics[:2], target)
    for a, b in zip(two[:3], interpolate_at_length(coefs[:2], lengths[:2], metrics[:2], target)):
        torch.testing.assert_close(a, b)


@FAST
@given(st.floats(1e-3, 1e2), st.floats(1e-3, 1e2), st.floats(0.5, 4))
def test_seeds_to_resolve_is_the_smallest_sufficient_number(difference, sd, z):
    n = int(seeds_to_resolve(t(difference), t(sd), z).item())
    assert n >= 2 and z * sd / math.sqrt(n) <= difference * (1 + 1e-9)
    if n > 2:
        assert z * sd / math.sqrt(n - 1) > difference * (1 - 1e-9)


# ============================================================================ validation


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least one seed"):
        seed_mean(t([]))
    with pytest.raises(ValueError, match=r"shape \(S, \*\)"):
        seed_mean(t(1.0))
    with pytest.raises(ValueError, match=">= 0"):
        pooled_standard_error(t([0.1, -0.1]))
    with pytest.raises(ValueError, match="pair the same seeds"):
        paired_seed_differences(t([1.0, 2.0]), t([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="two different finite"):
        interpolate_at_length((0.5, 0.5), t([[1.0], [2.0]]), t([[0.0], [1.0]]), t([1.5]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2, S\)"):
        interpolate_at_length((0.5, 1.0), t([[1.0, 2.0]]), t([[0.0, 1.0]]), t([1.5, 1.5]))
    with pytest.raises(ValueError, match=r"metrics must have shape \(2, S, \*\)"):
        interpolate_at_length((0.5, 1.0), t([[1.0, 2.0], [3.0, 4.0]]), t([0.0, 1.0]), t([1.5, 1.5]))
    with pytest.raises(ValueError, match="at least two different coefficients"):
        interpolate_piecewise_at_length((0.5, 0.5, 1.0), t([[1.0], [2.0], [3.0]]), t([[0.0], [1.0], [2.0]]), t([1.5]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(K, S\).*K = 3"):
        interpolate_piecewise_at_length((0.0, 0.5, 1.0), t([[1.0], [2.0]]), t([[0.0], [1.0]]), t([1.5]))
    with pytest.raises(ValueError, match=r"segment 1 \(s = 0.5 to 1\): seed row 0: the same mean length 2.0"):
        interpolate_piecewise_at_length((0.0, 0.5, 1.0), t([[1.0], [2.0], [2.0]]), t([[0.0], [1.0], [2.0]]),
                                        t([1.5]))
    with pytest.raises(ValueError, match="seed row 1: the same mean length 7.0"):
        interpolate_at_length((0.5, 1.0), t([[1.0, 7.0], [3.0, 7.0]]), t([[0.0, 0.0], [1.0, 1.0]]), t([2.0, 7.0]))
    with pytest.raises(ValueError, match="z must be > 0"):
        seeds_to_resolve(t(1.0), t(1.0), z=0)
    with pytest.raises(ValueError, match="sd must be >= 0"):
        seeds_to_resolve(t(1.0), t(-1.0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_results_stay_on_the_inputs_device():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]], device="cuda")
    assert all(r.device == x.device for r in (*seed_mean(x), pooled_standard_error(x), *paired_seed_differences(x, x)))
    s_star, m_star, w = interpolate_at_length((0.5, 1.0), x, x, x[0])
    assert s_star.device == m_star.device == w.device == x.device
    assert seeds_to_resolve(x[0], x[1]).device == x.device
