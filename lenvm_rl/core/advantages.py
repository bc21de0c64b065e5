"""Advantage assembly for length-aware GRPO: group statistics, length advantages, gates, combination.

Everything here is a pure torch function (no model, no I/O). Formulas follow ``docs/method.md#length-in-rl``;
the value convention ``V = -(1 - gamma**l)`` is that of :mod:`lenvm_rl.core.length_math`.

Conventions
-----------
Groups. Per-completion tensors are 1-D ``(N,)`` with ``N = num_groups * num_generations``; groups
are contiguous, rows ``[g * num_generations, (g + 1) * num_generations)`` forming group ``g`` (the
order of TRL's GRPO). ``N`` must be a multiple of ``num_generations >= 1``.

Per-token tensors are completion-aligned ``(B, T)``. ``action_mask`` / ``mask`` (bool or 0/1;
nonzero = real) marks the tokens that take an action; outputs are exactly 0 at masked positions and
values stored there never change any output.

Numerics. Inputs are upcast to float32 and results are float32.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from lenvm_rl.core.length_math import _check_ndim, _check_nonnegative, _check_shape, gae, length_to_value
from lenvm_rl.core.metrics import masked_mean, masked_std

__all__ = [
    "group_mean",
    "group_centered",
    "group_length_advantages",
    "kimi_length_rewards",
    "pass_rate_gate",
    "correct_gate",
    "combine_advantages",
    "per_token_advantages",
    "scale_by_std",
    "whiten",
    "discounted_returns",
]


# ----------------------------------------------------------------------------- validation


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")


def _grouped(name: str, x: Tensor, num_generations: int) -> Tensor:
    """Validate a 1-D ``(N,)`` tensor of groups and view it as float32 ``(N // num_generations, num_generations)``."""
    if isinstance(num_generations, bool) or not isinstance(num_generations, numbers.Integral) or num_generations < 1:
        raise ValueError(f"num_generations must be an integer >= 1, got {num_generations!r}")
    _check_ndim(name, x, 1, "(N,)")
    if x.shape[0] % num_generations:
        raise ValueError(f"{name} has {x.shape[0]} entries, not a multiple of num_generations={num_generations}")
    return x.float().reshape(-1, num_generations)


def _group_mean(name: str, x: Tensor, num_generations: int) -> Tensor:
    """:func:`group_mean` with the argument's name for error messages."""
    groups = _grouped(name, x, num_generations)
    return torch.nanmean(groups, dim=1, keepdim=True).expand_as(groups).reshape(-1)


def _per_token(name: str, x: Tensor, mask: Tensor) -> Tensor:
    """A ``(B,)`` tensor as float32 ``(B, 1)`` (broadcast over tokens) or a ``(B, T)`` one as float32."""
    if x.dim() == 1:
        _check_shape(name, x, mask.shape[:1], "action_mask.shape[:1]")
        return x.float()[:, None]
    _check_shape(name, x, mask.shape, "action_mask")
    return x.float()


# ----------------------------------------------------------------------------- group statistics


def group_mean(x: Tensor, num_generations: int) -> Tensor:
    """Each entry's group mean, ignoring NaN: ``m_i = nanmean_{j in group(i)} x_j``.

    TRL marks completions that no reward function could score with NaN; they do not enter the mean.

    Args:
        x: (N,), contiguous groups of ``num_generations``.
    Returns:
        float32 (N,); NaN for every entry of a group that is all NaN.
    """
    return _group_mean("x", x, num_generations)


def group_centered(x: Tensor, num_generations: int) -> Tensor:
    """Group-centred values ``x_i - m_i`` with ``m_i`` from :func:`group_mean` (NaN-aware mean).

    Args:
        x: (N,), contiguous groups of ``num_generations``.
    Returns:
        float32 (N,); NaN entries stay NaN. The non-NaN entries of a group sum to ~0.
    """
    return x.float() - group_mean(x, num_generations)


# ----------------------------------------------------------------------------- length advantages and rewards


def group_length_advantages(lengths: Tensor, gamma: float, num_generations: int,
                            final_values: Tensor | None = None) -> Tensor:
    """Sequence-level twin of ``A^len`` (docs/method.md#the-sequence-level-twins): ``A_i = G_i - mean_group(G)``.

    ``G_i = -(1 - gamma**L_i * (1 + V_i))`` is the discounted length return of completion ``i`` from its first
    state, ``L_i`` its realised length and ``V_i = final_values[i]`` the LenVM's value of the state after its
    last token: 0 for a completion that ended with EOS, ``V(s_T)`` for one that was cut. It is exactly the
    Monte-Carlo return from ``s_0`` that the token-level estimator bootstraps at a cut,
    ``sum_{k<L} gamma**k * (-(1 - gamma)) + gamma**L * V(s_T)``, so both estimators optimise one objective and
    differ only in credit assignment. Without ``final_values`` every completion is scored at its realised
    length, ``G_i = -(1 - gamma**L_i)`` (:func:`~lenvm_rl.core.length_math.length_to_value`): a cut
    completion then counts only the tokens it has, which under-penalises it. Shorter completions get larger
    advantages. In training the group must be the whole group, gathered across processes. The result is one
    number per completion, to broadcast over its tokens (:func:`combine_advantages` accepts it as ``(B,)``).

    Args:
        lengths: (N,) realised lengths ``>= 0``, contiguous groups of ``num_generations``.
        gamma: discount in (0, 1).
        final_values: optional (N,) ``V(s_T)`` in ``[-1, 0]``: 0 for completions that ended with EOS.
    Returns:
        float32 (N,); sums to ~0 within each group.
    """
    returns = length_to_value(lengths, gamma)
    if final_values is not None:
        _check_shape("final_values", final_values, lengths.shape, "lengths")
        returns = returns + gamma ** lengths.float() * final_values.float()
    return returns - _group_mean("lengths", returns, num_generations)


def kimi_length_rewards(lengths: Tensor, correct: Tensor, num_generations: int) -> Tensor:
    """Kimi k1.5 length reward (arXiv 2501.12599, section 2.3.3), per group.

    ``lam_i = 0.5 - (L_i - min_L) / (max_L - min_L)`` with ``min_L``, ``max_L`` over the group;
    the reward is ``lam_i`` if completion ``i`` is correct and ``min(0, lam_i)`` otherwise (a wrong
    answer is never rewarded for being short). A group whose lengths are all equal gets 0.

    Args:
        lengths: (N,) completion lengths ``>= 0``, contiguous groups of ``num_generations``.
        correct: (N,) bool or 0/1, nonzero = correct.
    Returns:
        float32 (N,) in ``[-0.5, 0.5]``.
    """
    groups = _grouped("lengths", lengths, num_generations)
    _check_shape("correct", correct, lengths.shape, "lengths")
    _check_nonnegative("lengths", groups)
    shortest = groups.amin(dim=1, keepdim=True)
    spread = groups.amax(dim=1, keepdim=True) - shortest
    lam = torch.where(spread > 0, 0.5 - (groups - shortest) / spread, 0.0).reshape(-1)
    return torch.where(correct.bool(), lam, lam.clamp(max=0.0))


# ----------------------------------------------------------------------------- gates


def pass_rate_gate(task_rewards: Tensor, num_generations: int, max_reward: float = 1.0) -> Tensor:
    """Pass-rate gate ``g_i = mean_group(r) / max_reward`` (docs/method.md#gates, after prime-rl).

    Used as ``s_g = s * g``: the length coefficient is scaled by how often the group succeeds, so a
    group that never succeeds feels no length pressure. The mean ignores NaN rewards; a group whose
    rewards are all NaN gets 0. Not clamped: rewards above ``max_reward`` or below 0 give a gate
    outside ``[0, 1]`` (a negative gate reverses the length pressure).

    Args:
        task_rewards: (N,), contiguous groups of ``num_generations``.
        max_reward: the reward of a fully successful completion, > 0.
    Returns:
        float32 (N,), the same value for every member of a group.
    """
    _check_finite("max_reward", max_reward)
    if not max_reward > 0:
        raise ValueError(f"max_reward must be > 0, got {max_reward!r}")
    rate = _group_mean("task_rewards", task_rewards, num_generations)
    return torch.where(rate.isnan(), 0.0, rate) / max_reward


def correct_gate(task_rewards: Tensor, threshold: float) -> Tensor:
    """Correctness gate ``g_i = 1[r_i >= threshold]`` (docs/method.md#gates): length pressure only where correct.

    Args:
        task_rewards: (N,); NaN (unscored) gives 0.
        threshold: finite real ``tau``.
    Returns:
        float32 (N,) of 0.0 / 1.0.
    """
    _check_finite("threshold", threshold)
    _check_ndim("task_rewards", task_rewards, 1, "(N,)")
    return (task_rewards.float() >= threshold).float()


# ----------------------------------------------------------------------------- combination


def combine_advantages(
    task_advantages: Tensor,
    length_advantages: Tensor,
    coef: float,
    action_mask: Tensor,
    gate: Tensor | None = None,
) -> Tensor:
    """Additive length objective (docs/method.md#length-in-rl): ``A_t = A^task_t + coef * gate * A^len_t``.

    ``coef`` is ``s``: ``s > 0`` favours shorter completions, ``s < 0`` longer ones. A ``(B,)``
    tensor is one number per completion broadcast over its tokens: GRPO's task advantage, or a
    sequence-level length advantage such as :func:`group_length_advantages`; a ``(B, T)`` one is
    per token, such as :func:`~lenvm_rl.core.length_math.length_gae`. ``gate`` is per completion
    (:func:`pass_rate_gate`, :func:`correct_gate` or their product); ``None`` means 1.

    Args:
        task_advantages: (B,) or (B, T).
        length_advantages: (B,) or (B, T).
        coef: finite real ``s``.
        action_mask: (B, T) bool or 0/1, nonzero = a model-generated token (padding and tool output
            take no action).
        gate: (B,) or None.
    Returns:
        float32 (B, T), 0 where ``action_mask`` is 0.
    """
    _check_finite("coef", coef)
    _check_ndim("action_mask", action_mask, 2, "(B, T)")
    mask = action_mask.bool()
    task = _per_token("task_advantages", task_advantages, mask)
    length = _per_token("length_advantages", length_advantages, mask)
    if gate is None:
        scale = 1.0
    else:
        _check_shape("gate", gate, mask.shape[:1], "action_mask.shape[:1]")
        scale = gate.float()[:, None]
    return torch.where(mask, task + coef * scale * length, 0.0)


def per_token_advantages(advantages: Tensor, action_mask: Tensor) -> Tensor:
    """Advantages laid out per token: ``A_t = A`` for a (B,) tensor (one number per completion, broadcast over its
    tokens), ``A_t`` itself for a (B, T) one; 0 where ``action_mask`` is 0.

    Args:
        advantages: (B,) or (B, T).
        action_mask: (B, T) bool or 0/1.
    Returns:
        float32 (B, T).
    """
    _check_ndim("action_mask", action_mask, 2, "(B, T)")
    mask = action_mask.bool()
    return torch.where(mask, _per_token("advantages", advantages, mask), 0.0)


def scale_by_std(x: Tensor, mask: Tensor, reference: Tensor, reference_mask: Tensor, eps: float = 1e-4) -> Tensor:
    """Batch scaling ``x / (std + eps)`` with ``std`` the population std of ``reference`` over ``reference_mask``.

    Why: GRPO's task advantage is group-normalised to about unit scale, while ``A^len`` is of order
    ``1 - gamma`` per token, so a raw coefficient would mean different things for different
    ``gamma``. Dividing ``A^len`` by its batch std makes ``coef`` a relative weight of the length
    term. The sequence-level twin (broadcast over its tokens first) and the token-level estimator
    are scaled the same way, by a token-weighted std, so that they are compared fairly. Only the
    scale changes (no centring), so the sign of each advantage is kept.

    ``reference`` is typically ``x`` itself gathered across processes, so it may have a different
    number of rows or columns; pass ``reference = x`` on one process.

    A ``reference_mask`` with no nonzero entry (every completion masked, e.g. all cut under TRL's
    ``mask_truncated_completions=True``) leaves the std undefined: then ``x`` is returned unscaled
    (float32, 0 where ``mask`` is 0), and the caller logs the skip.

    Args:
        x: (B, T).
        mask: (B, T) bool or 0/1.
        reference: any shape, typically (B', T'); reference_mask: the same shape. Values at masked
            positions of either never matter.
        eps: finite, ``>= 0``; with ``eps = 0`` a constant reference divides by zero.
    Returns:
        float32 (B, T), 0 where ``mask`` is 0.
    """
    _check_finite("eps", eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    _check_ndim("x", x, 2, "(B, T)")
    _check_shape("mask", mask, x.shape, "x")
    _check_shape("reference_mask", reference_mask, reference.shape, "reference")
    if not bool(reference_mask.bool().any()):  # no std to scale by: skip the scaling
        return torch.where(mask.bool(), x.float(), 0.0)
    std = masked_std(reference, reference_mask)
    return torch.where(mask.bool(), x.float() / (std + eps), 0.0)


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Advantage whitening: ``(x - mean) / sqrt(var + eps)`` over the valid positions (PPO's normalisation).

    Mean and population variance are taken over ``mask`` of the whole tensor (one batch). A ``mask`` with
    no nonzero entry (every completion masked, e.g. all cut under TRL's ``mask_truncated_completions=True``)
    has no mean or variance: then ``x`` is returned unwhitened (float32, 0 where ``mask`` is 0, so all 0),
    and the caller logs the skip.

    Args:
        x: (B, T).
        mask: (B, T) bool or 0/1.
        eps: finite, ``> 0``.
    Returns:
        float32 (B, T), 0 where ``mask`` is 0.
    """
    _check_finite("eps", eps)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    _check_ndim("x", x, 2, "(B, T)")
    _check_shape("mask", mask, x.shape, "x")
    valid = mask.bool()
    if not bool(valid.any()):  # nothing to whiten: skip
        return torch.where(valid, x.float(), 0.0)
    mean = masked_mean(x, valid)
    std = masked_std(x, valid)
    return torch.where(valid, (x.float() - mean) / torch.sqrt(std.square() + eps), 0.0)


def discounted_returns(rewards: Tensor, completion_mask: Tensor, gamma: float) -> Tensor:
    """Return-to-go over real steps: ``R_t = sum_{i >= 0} gamma**i * r_{t_i}``.

    ``t_0 = t, t_1, ...`` are the real steps from ``t`` on (masked positions are not steps, so ``i``
    counts real steps only); nothing is bootstrapped after the last real step. Computed as
    :func:`~lenvm_rl.core.length_math.gae` with zero values, zero ``final_values`` and ``lam = 1``.

    Shaping mode: with ``F`` from :func:`~lenvm_rl.core.length_math.potential_shaping`, the
    per-token advantage adds ``beta * sum_{k >= t} gamma**(k - t) * F_k``, i.e.
    ``discounted_returns(F, completion_mask, gamma)`` (``beta`` already in ``F``).

    Args:
        rewards: (B, T) completion-aligned.
        completion_mask: (B, T) bool or 0/1.
        gamma: discount in (0, 1).
    Returns:
        float32 (B, T), 0 at masked positions.
    """
    _check_ndim("rewards", rewards, 2, "(B, T)")
    _check_shape("completion_mask", completion_mask, rewards.shape, "rewards")
    values = torch.zeros(rewards.shape, dtype=torch.float32, device=rewards.device)
    _, returns = gae(rewards, values, completion_mask, values.new_zeros(rewards.shape[0]), gamma, 1.0)
    return returns
