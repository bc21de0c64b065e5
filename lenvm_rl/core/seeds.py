"""Statistics over training seeds: seed means with their between-seed error, paired differences per seed, a
matched-length interpolation between two length coefficients, and the seeds a difference needs.

Everything here is a pure function (no model, no I/O). Leading dimension ``S`` indexes training seeds; the
trailing dimensions ``*`` (any, possibly none) index metrics and broadcast through. Inputs are upcast to float64
(a report's few numbers, kept exact enough for hand checks); results are float64 tensors on the inputs' device.

Errors. The *between-seed standard error* of a seed mean is ``sd / sqrt(S)`` with the Bessel-corrected
``sd = sqrt(sum_i (x_i - mean x)**2 / (S - 1))``; it is NaN for ``S = 1`` (one run says nothing about
run-to-run variance). It covers everything that differs between runs: the training seed's sampling and
initialisation, and the sampling of each run's held-out completions. When every run is scored on the same
held-out prompts it does not cover the choice of prompts; the within-run prompt error does
(:func:`pooled_standard_error`).

Pairing. Runs of different arms that share a seed index share the seed's random streams and the data order, so
their results are correlated; differences are taken per seed first (:func:`paired_seed_differences`,
:func:`interpolate_at_length`) and their spread over seeds gives the error, which then needs no model of that
correlation.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["interpolate_at_length", "interpolate_piecewise_at_length", "paired_seed_differences",
           "pooled_standard_error", "seed_mean", "seeds_to_resolve"]


def _per_seed(name: str, x: Tensor) -> Tensor:
    """Validate a ``(S, *)`` tensor with ``S >= 1`` and upcast it to float64."""
    x = torch.as_tensor(x)
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (S, *) with at least one seed, got shape {tuple(x.shape)}")
    return x.double()


def seed_mean(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over seeds and its between-seed standard error.

    ``mean = (1/S) sum_i x_i`` and ``se = sd / sqrt(S)``, ``sd = sqrt(sum_i (x_i - mean)**2 / (S - 1))``.

    Args:
        values: ``(S, *)``: one result per seed (e.g. a run's held-out answer rate), metrics in ``*``.
    Returns:
        ``(mean, se)``, each ``(*)`` float64; ``se`` is NaN where ``S = 1``. A NaN input gives NaN results.
    Raises:
        ValueError: ``values`` is 0-dimensional or has no seed.
    """
    x = _per_seed("values", values)
    mean = x.mean(dim=0)
    if x.shape[0] < 2:
        return mean, torch.full_like(mean, math.nan)
    sd = (x - mean).square().sum(dim=0).div(x.shape[0] - 1).sqrt()
    return mean, sd / math.sqrt(x.shape[0])


def pooled_standard_error(standard_errors: Tensor) -> Tensor:
    """The within-run standard error pooled over seeds: ``sqrt((1/S) sum_i se_i**2)``.

    With ``se_i`` each run's standard error over the same ``P`` held-out prompts (``sd_i / sqrt(P)``), this is
    ``sqrt(mean_i sd_i**2) / sqrt(P)``: the prompt error of one run with the within-run variance averaged over
    the seeds. It is the error of a *single* run's mean, not of the seed mean: the prompts are shared, so
    averaging the seeds does not average that error away.

    Args:
        standard_errors: ``(S, *)``, nonnegative or NaN.
    Returns:
        ``(*)`` float64; NaN where any ``se_i`` is NaN.
    Raises:
        ValueError: a negative standard error, or no seed.
    """
    se = _per_seed("standard_errors", standard_errors)
    if bool((se < 0).any()):
        raise ValueError("standard_errors must be >= 0 (or NaN)")
    return se.square().mean(dim=0).sqrt()


def paired_seed_differences(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Arm A minus arm B paired by seed: ``d_i = a_i - b_i``, with the mean and between-seed SE of ``d``.

    Args:
        a, b: ``(S, *)``, row ``i`` of both from training seed ``i`` (same seed list, same order).
    Returns:
        ``(d, mean, se)``: ``d`` ``(S, *)``; ``mean``, ``se`` ``(*)`` from :func:`seed_mean` of ``d`` (``se`` NaN
        for one seed). All float64.
    Raises:
        ValueError: ``a`` and ``b`` differ in shape.
    """
    a, b = _per_seed("a", a), _per_seed("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a has shape {tuple(a.shape)} but b has shape {tuple(b.shape)}: pair the same seeds")
    d = a - b
    return (d, *seed_mean(d))


def interpolate_at_length(coefs: tuple[float, float], lengths: Tensor, metrics: Tensor,
                          target_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per seed, the length coefficient at which an arm's mean length reaches a target, and its metric there.

    An arm was run at two length coefficients ``s_a``, ``s_b`` (``coefs``); per seed ``i`` it reached mean
    lengths ``L_a,i``, ``L_b,i`` and metrics ``m_a,i``, ``m_b,i``. Length and metric are each taken as linear in
    ``s`` between the two points, so at the target length ``L*_i``::

        w_i  = (L*_i - L_a,i) / (L_b,i - L_a,i)        (0 at s_a, 1 at s_b)
        s*_i = s_a + w_i (s_b - s_a)
        m*_i = m_a,i + w_i (m_b,i - m_a,i)

    ``s`` cancels from ``m*_i``: it is the metric read off the straight line through ``(L_a,i, m_a,i)`` and
    ``(L_b,i, m_b,i)`` at ``L*_i``. ``0 <= w_i <= 1`` interpolates; anything else extrapolates beyond the
    measured coefficients, which the caller should say.

    Error. Interpolating per seed keeps the pairing of the seeds (the twin's two runs and the target run of seed
    ``i`` share its random streams and data order): the spread of ``m*_i`` (or of a paired difference
    ``x_i - m*_i``) over seeds, through :func:`seed_mean` or :func:`paired_seed_differences`, then carries the
    noise of both points and of the target length, with their correlations, and needs no delta method. A seed
    whose two lengths nearly coincide gives a large ``|w_i|`` and dominates that spread: check ``w``.

    Args:
        coefs: ``(s_a, s_b)``, two different finite coefficients.
        lengths: ``(2, S)``: row 0 the lengths at ``s_a``, row 1 at ``s_b``.
        metrics: ``(2, S, *)``: the metrics at ``s_a`` and ``s_b`` (trailing dimensions for several metrics).
        target_lengths: ``(S,)``: the length to match per seed (e.g. the other arm's mean length at that seed).
    Returns:
        ``(s_star, m_star, w)``: ``(S,)``, ``(S, *)`` and ``(S,)``, float64.
    Raises:
        ValueError: bad shapes, equal or non-finite ``coefs``, or a seed whose two lengths are equal (no line
            through them reaches another length), naming the seed's row.
    """
    if len(coefs) != 2 or not all(isinstance(c, numbers.Real) and math.isfinite(c) for c in coefs) \
            or coefs[0] == coefs[1]:
        raise ValueError(f"coefs must be two different finite numbers (s_a, s_b), got {coefs!r}")
    lengths, metrics = torch.as_tensor(lengths).double(), torch.as_tensor(metrics).double()
    target = torch.as_tensor(target_lengths).double()
    if target.dim() != 1 or tuple(lengths.shape) != (2, target.shape[0]):
        raise ValueError(f"lengths must have shape (2, S) and target_lengths (S,), got {tuple(lengths.shape)} and "
                         f"{tuple(target.shape)}")
    if metrics.dim() < 2 or tuple(metrics.shape[:2]) != tuple(lengths.shape):
        raise ValueError(f"metrics must have shape (2, S, *) with lengths' (2, S) = {tuple(lengths.shape)}, got "
                         f"{tuple(metrics.shape)}")
    span = lengths[1] - lengths[0]
    if bool((span == 0).any()):
        row = int((span == 0).nonzero()[0, 0])
        raise ValueError(f"seed row {row}: the same mean length {lengths[0, row].item()} at both coefficients "
                         f"{coefs}; no straight line through them reaches another length")
    w = (target - lengths[0]) / span
    s_star = coefs[0] + w * (coefs[1] - coefs[0])
    w_metric = w.reshape(-1, *([1] * (metrics.dim() - 2)))
    return s_star, metrics[0] + w_metric * (metrics[1] - metrics[0]), w


def interpolate_piecewise_at_length(coefs, lengths: Tensor, metrics: Tensor, target_lengths: Tensor
                                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`interpolate_at_length` for an arm run at ``K >= 2`` length coefficients: length and metric are
    piecewise linear in ``s`` between adjacent coefficients (in increasing ``s``).

    With the coefficients sorted, ``s_0 < ... < s_{K-1}``, segment ``k`` joins ``s_k`` and ``s_{k+1}``::

        w_k,i = (L*_i - L_k,i) / (L_k+1,i - L_k,i)
        d_k,i = max(0, -w_k,i, w_k,i - 1)                  (0 when segment k brackets L*_i)
        k_i   = the smallest k minimising d_k,i
        s*_i, m*_i, w_i = those of :func:`interpolate_at_length` on segment k_i

    So per seed the first segment, in increasing ``s``, that brackets the target is used (the smallest ``s`` at
    which the line reaches it); when none does, the segment whose ``w`` lies nearest to ``[0, 1]`` extrapolates,
    and its ``w`` says so. With ``K = 2`` this is :func:`interpolate_at_length`.

    Args:
        coefs: ``K`` different finite coefficients, in any order.
        lengths: ``(K, S)``; metrics: ``(K, S, *)``; target_lengths: ``(S,)``: as in :func:`interpolate_at_length`,
            row ``k`` at ``coefs[k]``.
    Returns:
        ``(s_star, m_star, w, segment)``: ``(S,)``, ``(S, *)``, ``(S,)`` float64 and ``(S,)`` long, ``w`` within
        the chosen segment and ``segment`` its index in increasing ``s``.
    Raises:
        ValueError: fewer than two or repeated coefficients, bad shapes, or equal lengths at both ends of a
            segment (naming it).
    """
    coefs = [float(c) for c in coefs]
    if len(coefs) < 2 or len(set(coefs)) != len(coefs):
        raise ValueError(f"coefs must be at least two different coefficients, got {coefs}")
    lengths, metrics = torch.as_tensor(lengths).double(), torch.as_tensor(metrics).double()
    if lengths.dim() != 2 or lengths.shape[0] != len(coefs) or tuple(metrics.shape[:2]) != tuple(lengths.shape):
        raise ValueError(f"lengths must have shape (K, S) and metrics (K, S, *) with K = {len(coefs)} coefficients, "
                         f"got {tuple(lengths.shape)} and {tuple(metrics.shape)}")
    order = sorted(range(len(coefs)), key=coefs.__getitem__)
    segments = []
    for k, (a, b) in enumerate(zip(order, order[1:])):
        try:
            segments.append(interpolate_at_length((coefs[a], coefs[b]), lengths[[a, b]], metrics[[a, b]],
                                                  target_lengths))
        except ValueError as err:
            raise ValueError(f"segment {k} (s = {coefs[a]:g} to {coefs[b]:g}): {err}") from None
    s_star, m_star, w = (torch.stack(parts) for parts in zip(*segments))  # (K-1, S), (K-1, S, *), (K-1, S)
    outside = torch.maximum(-w, w - 1).clamp(min=0)  # 0 where the segment brackets the target
    segment = outside.argmin(dim=0)  # the first of equals: the smallest s
    seeds = torch.arange(w.shape[1])
    return s_star[segment, seeds], m_star[segment, seeds], w[segment, seeds], segment


def seeds_to_resolve(difference: Tensor, sd: Tensor, z: float = 2.0) -> Tensor:
    """The number of seeds at which a difference would lie ``z`` standard errors from 0.

    The smallest ``n >= 2`` with ``z * sd / sqrt(n) <= |difference|``: ``n = max(2, ceil((z * sd / |d|)**2))``
    (two seeds at least, the fewest with a between-seed error). It takes the measured difference and the measured
    between-seed standard deviation (of the per-seed differences) as the truth, so it is a rough scale, not a
    power calculation.

    Args:
        difference: ``(*)``, the mean difference ``d``.
        sd: ``(*)``, the between-seed standard deviation of the per-seed differences (``se * sqrt(S)``).
        z: the number of standard errors, > 0.
    Returns:
        ``(*)`` float64: ``inf`` where ``d = 0``, NaN where ``sd`` or ``d`` is NaN.
    Raises:
        ValueError: ``z <= 0``, or a negative ``sd``.
    """
    if isinstance(z, bool) or not isinstance(z, numbers.Real) or not z > 0:
        raise ValueError(f"z must be > 0, got {z!r}")
    d, sd = torch.as_tensor(difference).double(), torch.as_tensor(sd).double()
    if bool((sd < 0).any()):
        raise ValueError("sd must be >= 0 (or NaN)")
    n = torch.ceil((z * sd / d.abs()).square()).clamp(min=2.0)
    return torch.where(d == 0, math.inf, n).where(~(d.isnan() | sd.isnan()), math.nan)
