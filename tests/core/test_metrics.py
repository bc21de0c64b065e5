"""Tests for lenvm_rl.core.metrics: hand-computed values, properties, and input validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenvm_rl.core.length_math import return_consistent_length
from lenvm_rl.core.metrics import (
    explained_variance,
    fit_linear,
    lifebench_word_count,
    masked_mean,
    masked_std,
    mean_and_standard_error,
    noise_floor_relative_errors,
    pearson_correlation,
    prompt_relative_errors,
    slope_standard_error,
    split_half_relative_errors,
)

NAN = math.nan
INF = math.inf
FAST = settings(max_examples=40, deadline=None)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def assert_close(actual, expected, **kw):
    assert actual.dtype == torch.float32 and actual.dim() == 0
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), equal_nan=True, **kw)


# ============================================================================ hand-computed values


def test_masked_mean_and_std_by_hand():
    # valid entries 1, 2, 3 (garbage elsewhere): mean 2, population variance (1 + 0 + 1) / 3 = 2/3
    x = t([[1.0, 2.0, 99.0], [3.0, NAN, INF]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert_close(masked_mean(x, mask), 2.0)
    assert_close(masked_std(x, mask), math.sqrt(2.0 / 3.0))
    assert_close(masked_mean(x.bfloat16(), mask.bool()), 2.0)
    # one valid position: std 0; none: NaN
    one = torch.tensor([[True, False, False], [False, False, False]])
    assert_close(masked_std(x, one), 0.0)
    assert_close(masked_mean(x, torch.zeros(2, 3)), NAN)
    assert_close(masked_std(x, torch.zeros(2, 3)), NAN)
    # identical values give exactly 0, not rounding noise
    assert masked_std(torch.full((7,), 0.1), torch.ones(7)).item() == 0.0


def test_explained_variance_by_hand():
    # returns [1, 2, 3, 4]: mean 2.5, Var = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    # values [1, 2, 3, 5]: residual [0, 0, 0, -1], mean -0.25, Var = (3 * 0.0625 + 0.5625) / 4 = 0.1875
    # EV = 1 - 0.1875 / 1.25 = 0.85; the masked third column never matters
    returns = t([[1.0, 2.0, NAN], [3.0, 4.0, 7.0]])
    values = t([[1.0, 2.0, 0.0], [3.0, 5.0, INF]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert_close(explained_variance(values, returns, mask), 0.85)
    # constant returns (Var = 0, exactly, even for 0.1) or no valid position: NaN
    assert_close(explained_variance(torch.zeros(5), torch.full((5,), 0.1), torch.ones(5)), NAN)
    assert_close(explained_variance(values, returns, torch.zeros(2, 3)), NAN)


def test_pearson_correlation_by_hand():
    # x = [1, 2, 3], y = [2, 4, 7]: xc = [-1, 0, 1], yc = [-7/3, -1/3, 8/3]
    # sum xc*yc = 7/3 + 8/3 = 5, sum xc^2 = 2, sum yc^2 = 114/9 -> r = 5 / sqrt(2 * 114 / 9)
    assert_close(pearson_correlation(t([1.0, 2.0, 3.0]), t([2.0, 4.0, 7.0])), 5.0 / math.sqrt(2.0 * 114.0 / 9.0))
    assert_close(pearson_correlation(t([1.0, 2.0, 3.0]), t([-3.0, -5.0, -7.0])), -1.0)
    assert_close(pearson_correlation(t([1.0, 2.0, 3.0]), t([0.1, 0.1, 0.1])), NAN)  # zero variance
    assert_close(pearson_correlation(t([5.0]), t([1.0])), NAN)


def test_mean_and_standard_error_by_hand():
    # [1, 2, 3, 4]: mean 2.5, sample variance 5/3, SE = sqrt(5/3) / sqrt(4) = sqrt(5/12)
    mean, se = mean_and_standard_error(t([1.0, 2.0, 3.0, 4.0]))
    assert isinstance(mean, float) and isinstance(se, float)
    assert mean == pytest.approx(2.5)
    assert se == pytest.approx(math.sqrt(5.0 / 12.0))
    mean, se = mean_and_standard_error(t([3.0]))
    assert mean == 3.0 and math.isnan(se)
    mean, se = mean_and_standard_error(torch.zeros(0))
    assert math.isnan(mean) and math.isnan(se)


# ============================================================================ properties


@st.composite
def masked_batches(draw):
    """(returns, mask, gen): random (B, T) returns and a mask with at least two valid positions."""
    batch = draw(st.integers(1, 4))
    steps = draw(st.integers(2, 10))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mask = torch.rand(batch, steps, generator=gen) < draw(st.floats(0.2, 1.0))
    mask[0, :2] = True
    returns = torch.randn(batch, steps, generator=gen) * draw(st.floats(0.01, 100.0)) + draw(st.floats(-10, 10))
    return returns, mask, gen


@FAST
@given(masked_batches(), st.sampled_from([0.0, 1e6, INF, NAN]))
def test_explained_variance_of_perfect_and_constant_critics(batch, garbage):
    returns, mask, gen = batch
    assert explained_variance(returns, returns, mask).item() == 1.0
    mean = torch.full(returns.shape, masked_mean(returns, mask).item())
    assert explained_variance(mean, returns, mask).item() == pytest.approx(0.0, abs=1e-4)
    noisy = torch.where(mask, returns, torch.randn(returns.shape, generator=gen) + garbage)
    assert explained_variance(mean, noisy, mask).item() == explained_variance(mean, returns, mask).item()


@FAST
@given(masked_batches())
def test_masked_statistics_match_torch_on_the_valid_entries(batch):
    returns, mask, _ = batch
    valid = returns[mask].double()
    torch.testing.assert_close(masked_mean(returns, mask).double(), valid.mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked_std(returns, mask).double(), valid.std(correction=0), atol=1e-5, rtol=1e-4)
    mean, se = mean_and_standard_error(returns[mask])
    assert mean == pytest.approx(valid.mean().item(), rel=1e-5, abs=1e-5)
    assert se == pytest.approx((valid.std() / math.sqrt(valid.numel())).item(), rel=1e-4, abs=1e-6)


# ============================================================================ input validation


def test_shape_mismatches_name_the_argument():
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\) but x has shape \(2, 3\)"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"mask has shape \(3,\) but x has shape \(2, 3\)"):
        masked_std(torch.zeros(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match=r"values has shape \(2, 2\) but returns has shape \(2, 3\)"):
        explained_variance(torch.zeros(2, 2), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\) but returns has shape \(2, 3\)"):
        explained_variance(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"y has shape \(4,\) but x has shape \(3,\)"):
        pearson_correlation(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"x must be 1-D \(N,\)"):
        pearson_correlation(torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"x must be 1-D \(N,\)"):
        mean_and_standard_error(torch.zeros(2, 2))


# ============================================================================ prompt-boundary errors and baselines

L_GT_1_2 = 1.48683602265324  # ln((0.9 + 0.81) / 2) / ln 0.9: the return-consistent length of samples 1 and 2


def test_prompt_relative_errors_by_hand():
    # row 0: samples 1, 2 -> L_GT 1.4868; row 1: samples 4, 4 -> L_GT 4 (masked entries are garbage)
    lengths = t([[1.0, 2.0, 99.0], [4.0, 1e6, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    errors = prompt_relative_errors(t([2.0, 3.0]), lengths, 0.9, mask)
    assert errors.dtype == torch.float32 and errors.shape == (2,)
    torch.testing.assert_close(errors, t([(2.0 - L_GT_1_2) / L_GT_1_2, 0.25]))
    # its mean is the prompt-boundary MRE; an infinite prediction has an infinite error
    assert prompt_relative_errors(t([INF]), t([[3.0]]), 0.5).item() == INF


def test_fit_linear_recovers_exact_lines():
    assert fit_linear(t([1.0, 2.0, 3.0, 4.0]), t([1.0, 4.0, 7.0, 10.0])) == pytest.approx((3.0, -2.0))
    assert fit_linear(t([0.0, 10.0]), t([5.0, -15.0])) == pytest.approx((-2.0, 5.0))
    assert fit_linear(torch.tensor([3, 1, 2]), t([0.1, 0.1, 0.1])) == pytest.approx((0.0, 0.1))  # integer x
    # float64 inside: a line far from the origin keeps its slope
    x = torch.tensor([1e6, 1e6 + 1, 1e6 + 2], dtype=torch.float64)
    slope, intercept = fit_linear(x, 0.5 * x + 7)
    assert isinstance(slope, float) and slope == pytest.approx(0.5, rel=1e-9)
    assert intercept == pytest.approx(7.0, rel=1e-6)
    # least squares through non-collinear points: x = [0, 1, 2], y = [0, 0, 3] -> slope 1.5, intercept -0.5
    assert fit_linear(t([0.0, 1.0, 2.0]), t([0.0, 0.0, 3.0])) == pytest.approx((1.5, -0.5))


def test_slope_standard_error_by_hand():
    # x = [0, 1, 2], y = [0, 1, 1]: slope 1/2, intercept 1/6, residuals (-1/6, 1/3, -1/6), sum r**2 = 1/6,
    # sum (x - mean x)**2 = 2: se = sqrt(1/6 / (3 - 2) / 2) = sqrt(1/12)
    assert slope_standard_error(t([0.0, 1.0, 2.0]), t([0.0, 1.0, 1.0])) == pytest.approx(math.sqrt(1 / 12))
    assert slope_standard_error(t([1.0, 2.0, 3.0, 4.0]), t([1.0, 4.0, 7.0, 10.0])) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(slope_standard_error(t([0.0, 10.0]), t([5.0, -15.0])))  # two points: no residual freedom
    with pytest.raises(ValueError, match="zero variance"):
        slope_standard_error(t([2.0, 2.0, 2.0]), t([1.0, 2.0, 3.0]))


def test_split_half_relative_errors_by_hand():
    gen = torch.Generator().manual_seed(0)
    # two samples: every split puts one on each side; both directions averaged:
    # [3, 5] -> (2/5 + 2/3) / 2 = 8/15; equal samples -> exactly 0; masked garbage never matters
    lengths = t([[3.0, 5.0, 7.0], [4.0, 99.0, 4.0], [6.0, 6.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1]])
    errors = split_half_relative_errors(lengths, 0.9, num_splits=5, generator=gen, mask=mask)
    assert errors.dtype == torch.float32 and errors.shape == (3,)
    torch.testing.assert_close(errors, t([8.0 / 15.0, 0.0, 0.0]))
    # three samples [1, 2, 4] (gamma 0.5): halves of 1 and 2; one split is one of three values
    lg = math.log(0.5)
    def l_gt(*xs):
        return math.log(sum(0.5**x for x in xs) / len(xs)) / lg
    def score(a, b):
        return (abs(a - b) / b + abs(a - b) / a) / 2
    possible = [score(1.0, l_gt(2, 4)), score(2.0, l_gt(1, 4)), score(4.0, l_gt(1, 2))]
    one = split_half_relative_errors(t([[1.0, 2.0, 4.0]]), 0.5, num_splits=1, generator=gen).item()
    assert min(abs(one - p) for p in possible) < 1e-5
    many = split_half_relative_errors(t([[1.0, 2.0, 4.0]]), 0.5, num_splits=60, generator=gen).item()
    assert min(possible) - 1e-6 <= many <= max(possible) + 1e-6


def test_noise_floor_relative_errors_by_hand():
    gen = torch.Generator().manual_seed(0)
    # equal samples: every resample equals the oracle -> exactly 0
    equal = noise_floor_relative_errors(t([[7.0, 7.0, 7.0], [0.5, 0.5, 99.0]]), 0.9, num_bootstrap=20, generator=gen,
                                        mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert equal.dtype == torch.float32 and equal.tolist() == [0.0, 0.0]
    # two samples a = 1, b = 2 (gamma 0.9): oracle L_GT 1.4868; resamples {a, a} (p 1/4), {b, b} (1/4), {a, b} (1/2,
    # error 0), so E[error] = (|L - 1| / 1 + |L - 2| / 2) / 4
    expected = ((L_GT_1_2 - 1.0) + (2.0 - L_GT_1_2) / 2.0) / 4.0
    spread = noise_floor_relative_errors(t([[1.0, 2.0]]), 0.9, num_bootstrap=2000, generator=gen).item()
    assert spread > 0 and spread == pytest.approx(expected, abs=0.01)


def test_random_baselines_are_reproducible_and_ignore_masked_entries():
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]])
    for function, kw in ((split_half_relative_errors, {"num_splits": 3}),
                         (noise_floor_relative_errors, {"num_bootstrap": 5})):
        results = [function(t([[3.0, garbage, 5.0, 9.0], [1.0, 2.0, 8.0, 8.0]]), 0.9,
                            generator=torch.Generator().manual_seed(7), mask=mask, **kw)
                   for garbage in (99.0, 1e6, NAN)]
        assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@st.composite
def sampled_lengths(draw):
    """(lengths, mask, gamma): (N, K) integer lengths >= 1 with at least one valid sample per row."""
    rows, samples = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    lengths = torch.randint(1, draw(st.integers(2, 600)), (rows, samples), generator=gen).float()
    mask = torch.rand(rows, samples, generator=gen) < 0.7
    mask[:, 0] = True
    return lengths, mask, draw(st.floats(0.9, 0.9995))


@FAST
@given(sampled_lengths(), st.floats(0.0, 1000.0))
def test_prompt_relative_errors_are_nonnegative_and_zero_at_the_ground_truth(batch, prediction):
    lengths, mask, gamma = batch
    ground_truth = return_consistent_length(lengths, gamma, mask)
    assert prompt_relative_errors(ground_truth, lengths, gamma, mask).tolist() == [0.0] * lengths.shape[0]
    errors = prompt_relative_errors(torch.full(ground_truth.shape, prediction), lengths, gamma, mask)
    assert bool((errors >= 0).all())
    torch.testing.assert_close(errors, (prediction - ground_truth).abs() / ground_truth)


@FAST
@given(st.floats(-10, 10), st.floats(-100, 100), st.lists(st.integers(-50, 50), min_size=2, max_size=8, unique=True))
def test_fit_linear_recovers_any_line(slope, intercept, xs):
    x = torch.tensor(xs, dtype=torch.float64)
    fitted = fit_linear(x, slope * x + intercept)
    assert fitted == pytest.approx((slope, intercept), abs=1e-8)


def test_baseline_functions_validate_their_inputs():
    with pytest.raises(ValueError, match=r"predicted_lengths has shape \(3,\) but lengths.shape\[:1\] has shape \(2,\)"):
        prompt_relative_errors(torch.ones(3), torch.ones(2, 2), 0.9)
    with pytest.raises(ValueError, match=r"predicted_lengths must be >= 0"):
        prompt_relative_errors(t([-1.0]), torch.ones(1, 2), 0.9)
    with pytest.raises(ValueError, match=r"the ground truth of lengths row 1 has a return-consistent length of 0"):
        prompt_relative_errors(torch.ones(2), t([[1.0, 2.0], [0.0, 0.0]]), 0.9)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\)"):
        prompt_relative_errors(torch.ones(1), torch.ones(1, 2), 1.0)
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_linear(t([1.0]), t([2.0]))
    with pytest.raises(ValueError, match=r"x has zero variance \(all 3 entries equal 2.0\)"):
        fit_linear(t([2.0, 2.0, 2.0]), t([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"y has shape \(2,\) but x has shape \(3,\)"):
        fit_linear(t([1.0, 2.0, 3.0]), t([1.0, 2.0]))
    with pytest.raises(ValueError, match="y must be finite"):
        fit_linear(t([1.0, 2.0]), t([1.0, NAN]))
    for function in (split_half_relative_errors, noise_floor_relative_errors):
        with pytest.raises(ValueError, match=r"lengths row 1 has 1 valid sample\(s\); this needs at least 2"):
            function(t([[1.0, 2.0], [3.0, 4.0]]), 0.9, mask=torch.tensor([[1, 1], [0, 1]]))
        with pytest.raises(ValueError, match=r"lengths must be 2-D \(N, K\)"):
            function(t([1.0, 2.0]), 0.9)
        with pytest.raises(ValueError, match=r"mask has shape \(2,\) but lengths has shape \(1, 2\)"):
            function(t([[1.0, 2.0]]), 0.9, mask=torch.ones(2))
        with pytest.raises(ValueError, match="lengths must be >= 0"):
            function(t([[1.0, -2.0]]), 0.9)
    with pytest.raises(ValueError, match="num_splits must be an integer >= 1, got 0"):
        split_half_relative_errors(torch.ones(1, 2), 0.9, num_splits=0)
    with pytest.raises(ValueError, match="num_bootstrap must be an integer >= 1, got 2.5"):
        noise_floor_relative_errors(torch.ones(1, 2), 0.9, num_bootstrap=2.5)
    with pytest.raises(ValueError, match="a split half of lengths row 0 has a return-consistent length of 0"):
        split_half_relative_errors(t([[0.0, 3.0]]), 0.9)


# ============================================================================ LIFEBench word count


@pytest.mark.parametrize("text, words", [
    ("", 0),
    ("Hello, world!", 2),
    ("  two\n\nlines\tand   tabs ", 4),
    ("don't stop", 2),  # an apostrophe stays inside a word
    ("state-of-the-art", 1),  # so does a hyphen
    ("3.14 and 42", 4),  # "3", "14", "and", "42"
    ("... -- !!", 0),  # punctuation alone is no word, a run of hyphens included (no word boundary)
    ("中文 abc", 3),  # each CJK character is a word
    ("中文abc", 2),  # a Latin run glued to a CJK character is not counted, as in LIFEBench
    ("café", 0),  # "caf" does not end at a word boundary (é is a word character)
])
def test_lifebench_word_count_by_hand(text, words):
    assert lifebench_word_count(text) == words


@FAST
@given(st.lists(st.text(alphabet="ab Z9'-.,_\né中文", max_size=12), max_size=4))
def test_lifebench_word_count_adds_over_whitespace_joined_texts(parts):
    assert lifebench_word_count(" ".join(parts)) == sum(lifebench_word_count(p) for p in parts)


def test_lifebench_word_count_refuses_non_text():
    with pytest.raises(TypeError, match="text must be a str"):
        lifebench_word_count(["a", "b"])
