"""Tests for lenvm_rl.core.metrics: hand-computed values, properties, and input validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenvm_rl.core.metrics import (
    explained_variance,
    masked_mean,
    masked_std,
    mean_and_standard_error,
    pearson_correlation,
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
