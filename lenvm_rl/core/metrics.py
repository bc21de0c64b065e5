"""Masked statistics for logging and evaluation: means, spreads, explained variance, correlation, and the
per-prompt relative errors behind the prompt-boundary MRE with its baselines (a linear fit, split halves, the
bootstrap noise floor).

Everything here is a pure function (no model, no I/O): torch statistics, and the LIFEBench word count of a text.

Conventions
-----------
``mask`` has the shape of the tensor it masks (bool or 0/1; nonzero = valid). Statistics run over
the valid positions only; values stored at masked positions (even ``inf`` or ``NaN``) never change
a result. Variances and standard deviations are population ones (divide by the count ``n``) unless
a docstring says otherwise. Data are shifted by their first valid entry before centring, so
identical values give a variance of exactly 0 (a constant ``0.1`` in float32 would otherwise leave
rounding noise and a meaningless ratio).

Numerics. Inputs are upcast to float32 and tensor results are 0-dim float32, except the per-prompt errors
(``(N,)`` float32) and :func:`fit_linear` (Python floats, fitted in float64).

Per-prompt errors. ``lengths`` ``(N, K)`` holds ``K`` sampled completion lengths of each of ``N`` prompts and
``mask`` (optional, ``(N, K)``, nonzero = valid sample) allows a ragged ``K``; ground truths are the
return-consistent lengths of :func:`~lenvm_rl.core.length_math.return_consistent_length`.
"""

from __future__ import annotations

import math
import numbers
import re

import torch
from torch import Tensor

from lenvm_rl.core.length_math import (
    _check_ndim,
    _check_nonnegative,
    _check_shape,
    _log_gamma,
    return_consistent_length,
)

__all__ = [
    "masked_mean",
    "masked_std",
    "explained_variance",
    "clip_fraction",
    "approx_kl",
    "pearson_correlation",
    "mean_and_standard_error",
    "prompt_relative_errors",
    "fit_linear",
    "slope_standard_error",
    "split_half_relative_errors",
    "noise_floor_relative_errors",
    "lifebench_word_count",
]


def _centered(x: Tensor, valid: Tensor) -> Tensor:
    """Flattened ``x - mean(x)`` over the ``valid`` positions, 0 elsewhere (float32).

    ``x`` is shifted by its first valid entry before the mean is taken, so equal values centre to
    exactly 0. Both arguments must already have the same shape.
    """
    x = x.float().flatten()
    valid = valid.bool().flatten()
    first = valid & (valid.cumsum(0) == 1)
    shifted = torch.where(valid, x - torch.where(first, x, 0.0).sum(), 0.0)
    return torch.where(valid, shifted - shifted.sum() / valid.sum(), 0.0)


def _masked_variance(x: Tensor, valid: Tensor) -> Tensor:
    """Population variance ``sum_valid (x - mean)**2 / n``; NaN when ``n = 0``."""
    return _centered(x, valid).square().sum() / valid.bool().sum()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid positions: ``sum_{mask} x / n`` with ``n = mask.sum()``.

    Args:
        x: any shape.
        mask: same shape as ``x``, bool or 0/1.
    Returns:
        0-dim float32; NaN when no position is valid.
    """
    _check_shape("mask", mask, x.shape, "x")
    valid = mask.bool()
    return torch.where(valid, x.float(), 0.0).sum() / valid.sum()


def masked_std(x: Tensor, mask: Tensor) -> Tensor:
    """Population standard deviation over the valid positions: ``sqrt(sum_{mask} (x - mean)**2 / n)``.

    Args:
        x: any shape.
        mask: same shape as ``x``, bool or 0/1.
    Returns:
        0-dim float32; 0 for one valid position, NaN when no position is valid.
    """
    _check_shape("mask", mask, x.shape, "x")
    return _masked_variance(x, mask).sqrt()


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Explained variance of a critic: ``1 - Var[returns - values] / Var[returns]`` (as in CleanRL / verl).

    Both variances are population variances over the valid positions. 1 is a perfect critic,
    0 is no better than the constant mean of ``returns``, negative is worse than that.

    Args:
        values: predicted values, same shape as ``returns``.
        returns: regression targets (e.g. lambda-returns), any shape.
        mask: same shape as ``returns``, bool or 0/1.
    Returns:
        0-dim float32; NaN when ``Var[returns] == 0`` (all valid returns equal, or no valid position).
    """
    _check_shape("values", values, returns.shape, "returns")
    _check_shape("mask", mask, returns.shape, "returns")
    returns = returns.float()
    variance = _masked_variance(returns, mask)
    residual_variance = _masked_variance(returns - values.float(), mask)
    return torch.where(variance > 0, 1.0 - residual_variance / variance, torch.nan)


def clip_fraction(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, clip_range: float) -> Tensor:
    """Share of action tokens whose ratio ``exp(logprobs - old_logprobs)`` lies outside ``[1 - eps, 1 + eps]``.

    Args:
        logprobs, old_logprobs, mask: (B, T).
        clip_range: eps.
    Returns:
        0-dim float32; NaN when no position is valid.
    """
    _check_shape("old_logprobs", old_logprobs, logprobs.shape, "logprobs")
    _check_shape("mask", mask, logprobs.shape, "logprobs")
    ratio = torch.exp(torch.where(mask.bool(), logprobs.float() - old_logprobs.float(), 0.0))
    return masked_mean(((ratio - 1.0).abs() > clip_range).float(), mask)


def approx_kl(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """How far an update moved the policy: ``mean_t 0.5 * (logprobs_t - old_logprobs_t)^2`` over ``mask``.

    A second-order estimate of ``KL(pi_old || pi)`` on the sampled tokens (as in TRL's PPO and CleanRL).

    Args:
        logprobs, old_logprobs, mask: (B, T).
    Returns:
        0-dim float32; NaN when no position is valid.
    """
    _check_shape("old_logprobs", old_logprobs, logprobs.shape, "logprobs")
    _check_shape("mask", mask, logprobs.shape, "logprobs")
    log_ratio = torch.where(mask.bool(), logprobs.float() - old_logprobs.float(), 0.0)
    return masked_mean(0.5 * log_ratio.square(), mask)


def pearson_correlation(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation ``r = sum (x - mean x)(y - mean y) / sqrt(sum (x - mean x)**2 * sum (y - mean y)**2)``.

    Clamped to ``[-1, 1]`` against rounding.

    Args:
        x, y: (N,), the same shape.
    Returns:
        0-dim float32; NaN when either input has zero variance (all entries equal, or ``N = 0``).
    """
    _check_ndim("x", x, 1, "(N,)")
    _check_shape("y", y, x.shape, "x")
    everywhere = torch.ones_like(x, dtype=torch.bool)
    x_centered = _centered(x, everywhere)
    y_centered = _centered(y, everywhere)
    scale = x_centered.square().sum().sqrt() * y_centered.square().sum().sqrt()
    return torch.where(scale > 0, (x_centered * y_centered).sum() / scale, torch.nan).clamp(-1.0, 1.0)


def mean_and_standard_error(x: Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean: ``(mean x, s / sqrt(n))``.

    ``s = sqrt(sum (x - mean x)**2 / (n - 1))`` is the sample standard deviation (Bessel-corrected).

    Args:
        x: (N,).
    Returns:
        ``(mean, standard_error)`` as Python floats; the mean is NaN for ``n = 0``, the standard
        error is NaN for ``n < 2``.
    """
    _check_ndim("x", x, 1, "(N,)")
    n = x.shape[0]
    mean = x.float().mean().item()  # NaN for n = 0
    if n < 2:
        return mean, float("nan")
    centered = _centered(x, torch.ones_like(x, dtype=torch.bool))
    return mean, (centered.square().sum() / (n - 1) / n).sqrt().item()


# ----------------------------------------------------------------------------- prompt-boundary errors and baselines


def _valid_samples(lengths: Tensor, mask: Tensor | None, minimum: int) -> Tensor:
    """Validate ``lengths`` (N, K) and ``mask``; return the bool validity mask, each row with >= ``minimum``."""
    _check_ndim("lengths", lengths, 2, "(N, K)")
    valid = torch.ones(lengths.shape, dtype=torch.bool) if mask is None else mask.bool()
    _check_shape("mask", valid, lengths.shape, "lengths")
    counts = valid.sum(dim=1)
    if bool((counts < minimum).any()):
        row = int((counts < minimum).nonzero()[0, 0])
        raise ValueError(f"lengths row {row} has {int(counts[row])} valid sample(s); this needs at least {minimum}")
    _check_nonnegative("lengths", lengths.float()[valid])
    return valid


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _relative_error(predicted: Tensor, ground_truth: Tensor, what: str) -> Tensor:
    """``|predicted - ground_truth| / ground_truth``, refusing a ground truth of 0 (an all-zero row)."""
    if bool((ground_truth <= 0).any()):
        row = int((ground_truth <= 0).nonzero()[0, 0])
        raise ValueError(f"{what} of lengths row {row} has a return-consistent length of 0 (all its lengths are "
                         "0); the relative error is undefined")
    return (predicted - ground_truth).abs() / ground_truth


def prompt_relative_errors(
    predicted_lengths: Tensor, lengths: Tensor, gamma: float, mask: Tensor | None = None
) -> Tensor:
    """Per-prompt relative error of a predicted length: ``e_n = |L_hat_n - L_GT_n| / L_GT_n``.

    ``L_GT_n = ln(mean_i gamma**L_ni) / ln(gamma)`` over the valid samples of row ``n``
    (:func:`~lenvm_rl.core.length_math.return_consistent_length`). Their mean is the prompt-boundary MRE
    (:func:`~lenvm_rl.core.length_math.prompt_boundary_mre` for ``L_hat = value_to_length(V(s_0))``); the
    per-prompt errors give its standard error over prompts (:func:`mean_and_standard_error`).

    Args:
        predicted_lengths: (N,) predicted lengths ``L_hat >= 0`` (``inf`` allowed: error ``inf``).
        lengths: (N, K) sampled completion lengths (>= 0).
        gamma: discount in (0, 1).
        mask: optional (N, K) bool/0-1, nonzero = valid sample; every row needs one.
    Returns:
        float32 (N,), each ``>= 0``.
    Raises:
        ValueError: bad shapes, negative or NaN lengths, a row with no valid sample, or a row whose ground
            truth is 0 (all its lengths 0).
    """
    _log_gamma(gamma)
    _check_ndim("predicted_lengths", predicted_lengths, 1, "(N,)")
    _check_ndim("lengths", lengths, 2, "(N, K)")
    _check_shape("predicted_lengths", predicted_lengths, lengths.shape[:1], "lengths.shape[:1]")
    predicted = predicted_lengths.float()
    _check_nonnegative("predicted_lengths", predicted)
    ground_truth = return_consistent_length(lengths, gamma, mask)
    return _relative_error(predicted, ground_truth, "the ground truth")


def fit_linear(x: Tensor, y: Tensor) -> tuple[float, float]:
    """Ordinary least squares line ``y ~ slope * x + intercept``.

    ``slope = sum (x - mean x)(y - mean y) / sum (x - mean x)**2``, ``intercept = mean y - slope * mean x``,
    computed in float64.

    Args:
        x, y: (N,), the same shape, finite, ``N >= 2``.
    Returns:
        ``(slope, intercept)`` as Python floats.
    Raises:
        ValueError: bad shapes, fewer than 2 points, non-finite entries, or zero variance in ``x`` (all ``x``
            equal: the slope is undefined).
    """
    _check_ndim("x", x, 1, "(N,)")
    _check_shape("y", y, x.shape, "x")
    if x.shape[0] < 2:
        raise ValueError(f"x and y need at least 2 points for a line, got {x.shape[0]}")
    x, y = x.double(), y.double()
    for name, tensor in (("x", x), ("y", y)):
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} must be finite (no NaN or inf)")
    x_centered = x - x.mean()
    sxx = x_centered.square().sum().item()
    if sxx == 0.0:
        raise ValueError(f"x has zero variance (all {x.shape[0]} entries equal {x[0].item()}): the slope is undefined")
    slope = (x_centered * (y - y.mean())).sum().item() / sxx
    return slope, y.mean().item() - slope * x.mean().item()


def slope_standard_error(x: Tensor, y: Tensor) -> float:
    """Standard error of the least-squares slope of :func:`fit_linear`, from its residuals.

    ``se = sqrt(sum r**2 / (N - 2) / sum (x - mean x)**2)`` with ``r = y - (slope * x + intercept)``: the textbook
    error under independent residuals of equal variance. Computed in float64.

    Args:
        x, y: (N,), as for :func:`fit_linear`.
    Returns:
        a Python float; NaN for ``N = 2`` (a line through two points leaves no residual degree of freedom).
    Raises:
        ValueError: as :func:`fit_linear`.
    """
    slope, intercept = fit_linear(x, y)
    n = x.shape[0]
    if n < 3:
        return math.nan
    x, y = x.double(), y.double()
    residuals = y - (slope * x + intercept)
    return math.sqrt(residuals.square().sum().item() / (n - 2) / (x - x.mean()).square().sum().item())


def split_half_relative_errors(
    lengths: Tensor,
    gamma: float,
    *,
    num_splits: int = 20,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-prompt relative error of one half of a prompt's samples predicting the other half.

    For row ``n`` with ``k_n`` valid samples, each split draws a uniformly random partition into halves ``A``
    (``floor(k_n / 2)`` samples) and ``B`` (``ceil(k_n / 2)``); with ``L_A``, ``L_B`` the return-consistent
    lengths of the halves, each half predicts the other and the split scores
    ``(|L_A - L_B| / L_B + |L_B - L_A| / L_A) / 2``; ``e_n`` is the mean over ``num_splits`` splits.

    This is the prompt MRE of an empirical predictor that has ``k/2`` samples of the prompt, scored
    against a ``k/2``-sample ground truth: sampling noise on both sides, an upper reference for the noise floor
    (:func:`noise_floor_relative_errors`). With two samples ``a, b`` every split gives
    ``(|a - b| / b + |a - b| / a) / 2``.

    Args:
        lengths: (N, K) sampled completion lengths (>= 0).
        gamma: discount in (0, 1).
        num_splits: random partitions per row (>= 1).
        generator: ``torch.Generator`` for reproducible splits; ``None`` draws from torch's global RNG.
        mask: optional (N, K) bool/0-1, nonzero = valid sample.
    Returns:
        float32 (N,), each ``>= 0``.
    Raises:
        ValueError: bad shapes, negative or NaN lengths, ``num_splits < 1``, a row with fewer than 2 valid
            samples, or a half whose lengths are all 0.
    """
    _log_gamma(gamma)
    _check_count("num_splits", num_splits)
    valid = _valid_samples(lengths, mask, minimum=2)
    lengths = lengths.float()
    half = (valid.sum(dim=1) // 2)[:, None]
    total = torch.zeros(lengths.shape[0], dtype=torch.float64)
    for _ in range(num_splits):
        keys = torch.rand(lengths.shape, generator=generator).masked_fill(~valid, math.inf)
        rank = keys.argsort(dim=1).argsort(dim=1)  # invalid samples rank last
        first = valid & (rank < half)
        second = valid & (rank >= half)
        length_a = return_consistent_length(lengths, gamma, first)
        length_b = return_consistent_length(lengths, gamma, second)
        errors = (_relative_error(length_a, length_b, "a split half")
                  + _relative_error(length_b, length_a, "a split half")) / 2
        total += errors.double()
    return (total / num_splits).float()


def noise_floor_relative_errors(
    lengths: Tensor,
    gamma: float,
    *,
    num_bootstrap: int = 200,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-prompt relative error of an oracle that knows each prompt's true ``E[gamma**L]``, scored against
    a ground truth from the prompt's ``k`` samples: the best prompt MRE any predictor can expect.

    Nonparametric (empirical) bootstrap. Row ``n``'s empirical distribution of its ``k_n`` valid samples
    stands in for the prompt's true length distribution, so the oracle prediction is the return-consistent
    length of all its samples, ``L_oracle = ln(mean_i gamma**L_i) / ln(gamma)``. Each of ``num_bootstrap``
    replicates draws ``k_n`` samples with replacement from them, ``L*_b = ln(mean_j gamma**L*_bj) / ln(gamma)``,
    and ``e_n = mean_b |L_oracle - L*_b| / L*_b``.

    The result slightly *underestimates* the floor: the empirical distribution has less spread than the true
    one (its variance is ``(k - 1) / k`` times the unbiased estimate), and with ``k = 1`` it would see none, so
    rows need at least 2 samples. A row whose samples are all equal gets exactly 0.

    Args:
        lengths: (N, K) sampled completion lengths (>= 0).
        gamma: discount in (0, 1).
        num_bootstrap: resamples per row (>= 1).
        generator: ``torch.Generator`` for reproducible resamples; ``None`` draws from torch's global RNG.
        mask: optional (N, K) bool/0-1, nonzero = valid sample.
    Returns:
        float32 (N,), each ``>= 0``.
    Raises:
        ValueError: bad shapes, negative or NaN lengths, ``num_bootstrap < 1``, a row with fewer than 2 valid
            samples, or a resample whose lengths are all 0.
    """
    _log_gamma(gamma)
    _check_count("num_bootstrap", num_bootstrap)
    valid = _valid_samples(lengths, mask, minimum=2)
    lengths = lengths.float()
    oracle = return_consistent_length(lengths, gamma, valid)
    # Valid samples moved to the front of each row (stable), so a resample index is uniform on [0, k_n).
    order = (~valid).to(torch.uint8).argsort(dim=1, stable=True)
    packed = lengths.gather(1, order)
    counts = valid.sum(dim=1, keepdim=True)
    slots = torch.arange(lengths.shape[1])[None, :] < counts  # a resample has k_n samples, like its row
    total = torch.zeros(lengths.shape[0], dtype=torch.float64)
    for _ in range(num_bootstrap):
        picks = torch.minimum((torch.rand(lengths.shape, generator=generator) * counts).long(), counts - 1)
        resampled = return_consistent_length(packed.gather(1, picks), gamma, slots)
        total += _relative_error(oracle, resampled, "a bootstrap resample").double()
    return (total / num_bootstrap).float()


# ----------------------------------------------------------------------------- text length

_CJK_CHARACTER = re.compile("[\u4e00-\u9fff]")
_LATIN_WORD = re.compile(r"\b[A-Za-z0-9'-]+\b")


def lifebench_word_count(text: str) -> int:
    """Words in ``text`` as LIFEBench counts them: each CJK character (U+4E00..U+9FFF) is a word, plus each
    run of ASCII letters, digits, apostrophes and hyphens that starts and ends at a word boundary.

    So ``"don't"``, ``"state-of-the-art"`` and ``"42"`` are one word each, ``"3.14"`` is two and ``"..."`` none;
    a Latin run glued to a CJK character is not counted (``"中文abc"`` is 2), as in LIFEBench.

    Args:
        text: any string.
    Returns:
        the count, ``>= 0``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return len(_CJK_CHARACTER.findall(text)) + len(_LATIN_WORD.findall(text))
