"""Masked statistics for logging and evaluation: means, spreads, explained variance, correlation.

Everything here is a pure torch function (no model, no I/O).

Conventions
-----------
``mask`` has the shape of the tensor it masks (bool or 0/1; nonzero = valid). Statistics run over
the valid positions only; values stored at masked positions (even ``inf`` or ``NaN``) never change
a result. Variances and standard deviations are population ones (divide by the count ``n``) unless
a docstring says otherwise. Data are shifted by their first valid entry before centring, so
identical values give a variance of exactly 0 (a constant ``0.1`` in float32 would otherwise leave
rounding noise and a meaningless ratio).

Numerics. Inputs are upcast to float32 and tensor results are 0-dim float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lenvm_rl.core.length_math import _check_ndim, _check_shape

__all__ = [
    "masked_mean",
    "masked_std",
    "explained_variance",
    "pearson_correlation",
    "mean_and_standard_error",
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
