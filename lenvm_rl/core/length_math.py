"""Length-value math for LenVM: returns, inverse maps, TD/GAE, shaping and evaluation metrics.

Everything here is a pure torch function (no model, no I/O). Formulas follow ``docs/method.md``.

Conventions
-----------
Sign. The canonical public convention is the paper's value
``V = -(1 - gamma**l)`` in ``(-1, 0]`` for ``l`` remaining tokens (``V = 0`` at a terminal
state, ``V -> -1`` as ``l -> inf``). The serving code's ``u = -V = 1 - gamma**l`` in ``[0, 1)``
("larger = longer") is accepted or produced only at the edges, through the keyword
``convention: Literal["value", "u"] = "value"``.

Head logits. The value head outputs a logit ``z`` with ``V = -sigmoid(z)`` and ``u = sigmoid(z)``.

Per-token RL tensors are completion-aligned with shape ``(B, T)``: index ``t`` is the action
``y_{t+1}`` and ``values[:, t] = V(s_t)`` is the value of the state *before* that token (the last
prompt token for ``t = 0``). ``completion_mask`` ``(B, T)`` (bool or 0/1; nonzero = real) marks the
real steps. Masked positions are not time steps: recursions skip them, carrying running
quantities through unchanged, their outputs are exactly 0, and values or rewards stored at masked
positions never change any output (so left/right padding and holes such as tool output all work).
``final_values`` ``(B,)`` is the value of the state after the last real step: 0 if the completion
ended with EOS (terminal), else the bootstrap ``V(s_T)`` (truncated at the length limit).

Numerics. Inputs are upcast to float32 (bf16/fp16 are fine) and results are float32.
``log(gamma)`` is computed in Python float64 and the maps use ``expm1``/``log1p``/``logsigmoid``,
so they stay accurate for ``gamma`` up to 0.9999 and lengths up to 32768.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "length_to_value",
    "value_to_length",
    "logits_to_value",
    "logits_to_length",
    "length_to_logits",
    "monte_carlo_targets",
    "lambda_return_targets",
    "value_regression_loss",
    "boundary_weights",
    "length_rewards",
    "td_residuals",
    "gae",
    "length_gae",
    "potential_shaping",
    "gamma_from_lengths",
    "return_consistent_length",
    "prompt_boundary_mre",
    "positionwise_relative_error",
    "length_score",
]

Convention = Literal["value", "u"]

# Values may exceed [-1, 0] (or [0, 1] for "u") by this much before value_to_length rejects them.
_VALUE_RANGE_TOL = 1e-6


# ----------------------------------------------------------------------------- validation


def _log_gamma(gamma: float) -> float:
    """Validate gamma and return log(gamma) as a Python float64."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma!r}")
    return math.log(gamma)


def _check_discount(gamma: float) -> None:
    """A return's discount may be 1 (undiscounted), unlike the gamma of a length value."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")


def _check_lam(lam: float) -> None:
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")


def _check_convention(convention: str) -> None:
    if convention not in ("value", "u"):
        raise ValueError(f"convention must be 'value' or 'u', got {convention!r}")


def _check_shape(name: str, tensor: Tensor, expected: Sequence[int], reference: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} but {reference} has shape {tuple(expected)}"
        )


def _check_ndim(name: str, tensor: Tensor, ndim: int, layout: str) -> None:
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(tensor.shape)}")


def _check_nonnegative(name: str, tensor: Tensor) -> None:
    if not bool((tensor >= 0).all()):  # also rejects NaN
        raise ValueError(f"{name} must be >= 0 (and not NaN), got min {tensor.min().item()}")


def _check_rl_inputs(values: Tensor, completion_mask: Tensor, final_values: Tensor,
                     values_name: str = "values", final_name: str = "final_values") -> None:
    _check_ndim(values_name, values, 2, "(B, T)")
    _check_shape("completion_mask", completion_mask, values.shape, values_name)
    _check_shape(final_name, final_values, values.shape[:1], f"{values_name}.shape[:1]")


# ----------------------------------------------------------------------------- value <-> length


def length_to_value(lengths: Tensor, gamma: float, *, convention: Convention = "value") -> Tensor:
    """Map remaining lengths to values: ``V = -(1 - gamma**l) = expm1(l * log(gamma))``.

    With ``convention="u"`` returns ``u = -V = 1 - gamma**l``.

    Args:
        lengths: any shape, ``l >= 0`` (float allowed; ``inf`` maps to ``V = -1`` / ``u = 1``).
        gamma: discount in (0, 1).
    Returns:
        float32 tensor of the same shape.
    """
    lg = _log_gamma(gamma)
    _check_convention(convention)
    lengths = lengths.float()
    _check_nonnegative("lengths", lengths)
    v = torch.expm1(lengths * lg)
    return v if convention == "value" else -v


def value_to_length(values: Tensor, gamma: float, *, convention: Convention = "value") -> Tensor:
    """Invert :func:`length_to_value`: ``l = log1p(V) / log(gamma)`` (``u``: ``log1p(-u) / log(gamma)``).

    Exact on a realised return; on a predicted *mean* value it underestimates ``E[l]`` (Jensen).
    Values are clamped into ``[-1, 0]`` (``u``: ``[0, 1]``), so ``V = 0 -> 0`` and
    ``V = -1 -> inf``; values outside that range by more than 1e-6 raise ``ValueError``.

    Args:
        values: any shape, in the chosen convention.
        gamma: discount in (0, 1).
    Returns:
        float32 remaining lengths, same shape.
    """
    lg = _log_gamma(gamma)
    _check_convention(convention)
    v = values.float() if convention == "value" else -values.float()
    if not bool(((v >= -1.0 - _VALUE_RANGE_TOL) & (v <= _VALUE_RANGE_TOL)).all()):
        lo, hi = ("-1", "0") if convention == "value" else ("0", "1")
        raise ValueError(
            f"values must be in [{lo}, {hi}] for convention={convention!r}, "
            f"got range [{values.min().item()}, {values.max().item()}]"
        )
    return torch.log1p(v.clamp(-1.0, 0.0)) / lg


def logits_to_value(logits: Tensor, *, convention: Convention = "value") -> Tensor:
    """Value from head logits ``z``: ``V = -sigmoid(z)`` (``convention="u"``: ``u = sigmoid(z)``).

    Args:
        logits: any shape.
    Returns:
        float32 values in ``[-1, 0]`` (``u``: ``[0, 1]``), same shape.
    """
    _check_convention(convention)
    u = torch.sigmoid(logits.float())
    return -u if convention == "value" else u


def logits_to_length(logits: Tensor, gamma: float) -> Tensor:
    """Remaining length from head logits ``z`` (``V = -sigmoid(z)``), computed stably.

    ``1 + V = sigmoid(-z)``, so ``l = logsigmoid(-z) / log(gamma)``; finite and accurate for large
    ``z`` where ``1 + V`` underflows in float32.

    Args:
        logits: any shape.
    Returns:
        float32 remaining lengths, same shape.
    """
    lg = _log_gamma(gamma)
    return torch.nn.functional.logsigmoid(-logits.float()) / lg


def length_to_logits(lengths: Tensor, gamma: float) -> Tensor:
    """Head logit for a remaining length: ``z = logit(1 - gamma**l) = log(-expm1(x)) - x``.

    Here ``x = l * log(gamma)``, computed without forming ``gamma**l``.

    Inverse of :func:`logits_to_length` (``l = 0 -> -inf``, ``l = inf -> +inf``).

    Args:
        lengths: any shape, ``l >= 0``.
    Returns:
        float32 logits, same shape.
    """
    lg = _log_gamma(gamma)
    lengths = lengths.float()
    _check_nonnegative("lengths", lengths)
    x = lengths * lg
    return torch.log(-torch.expm1(x)) - x


# ----------------------------------------------------------------------------- pretraining targets


def monte_carlo_targets(
    attention_mask: Tensor,
    prompt_lengths: Tensor,
    completion_lengths: Tensor,
    terminated: Tensor,
    gamma: float,
    *,
    censored: Literal["drop", "infinite"] = "drop",
) -> tuple[Tensor, Tensor]:
    """Dense Monte-Carlo value targets in full-sequence space for value pretraining.

    ``G_t = -(1 - gamma**(L - t))`` at the position of state ``s_t``, ``t = 0 .. L``, where ``s_0``
    is the last prompt token and ``s_t`` is completion token ``t`` (so the EOS position, ``t = L``,
    gets exactly 0). ``L`` counts the EOS.

    Layout: row ``b``'s real tokens form one contiguous block of ``attention_mask`` (left padding,
    right padding, or a left-padded prompt followed by a right-padded completion). The prompt is
    the first ``prompt_lengths[b]`` real tokens, the completion the next ``completion_lengths[b]``.

    Censored rows (``terminated[b]`` False: cut off without EOS, true ``L`` unknown):
    ``"drop"`` gives an all-False mask; ``"infinite"`` gives target ``-1`` at ``s_0 .. s_L`` (the
    last prompt token and every completion token of the truncated completion).

    Args:
        attention_mask: (B, S) bool or 0/1.
        prompt_lengths: (B,) integers >= 1.
        completion_lengths: (B,) integers >= 0; prompt + completion <= real tokens in the row.
        terminated: (B,) bool, True if the completion ended with EOS.
    Returns:
        ``(targets, target_mask)``: float32 (B, S) targets, 0 where the bool (B, S) mask is False.
    """
    lg = _log_gamma(gamma)
    if censored not in ("drop", "infinite"):
        raise ValueError(f"censored must be 'drop' or 'infinite', got {censored!r}")
    _check_ndim("attention_mask", attention_mask, 2, "(B, S)")
    batch = attention_mask.shape[:1]
    _check_shape("prompt_lengths", prompt_lengths, batch, "attention_mask.shape[:1]")
    _check_shape("completion_lengths", completion_lengths, batch, "attention_mask.shape[:1]")
    _check_shape("terminated", terminated, batch, "attention_mask.shape[:1]")

    real = attention_mask.bool()
    prompt_lengths = prompt_lengths.long()
    completion_lengths = completion_lengths.long()
    n_real = real.sum(dim=1)
    for problem, bad in (
        ("prompt_lengths must be >= 1", prompt_lengths < 1),
        ("completion_lengths must be >= 0", completion_lengths < 0),
        ("prompt_lengths + completion_lengths exceeds the real tokens in attention_mask",
         prompt_lengths + completion_lengths > n_real),
    ):
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{problem} (row {row}: prompt_lengths={int(prompt_lengths[row])}, "
                f"completion_lengths={int(completion_lengths[row])}, real tokens={int(n_real[row])})"
            )

    positions = torch.arange(real.shape[1], device=real.device)
    start = real.to(torch.uint8).argmax(dim=1)  # first real token (first maximum)
    block = (positions >= start[:, None]) & (positions < (start + n_real)[:, None])
    if not torch.equal(block, real):
        row = int((block != real).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"attention_mask row {row} is not contiguous: real tokens must form one block")

    t = positions - (start + prompt_lengths - 1)[:, None]  # state index of each position
    length = completion_lengths[:, None]
    in_trajectory = (t >= 0) & (t <= length)
    terminated = terminated.bool()[:, None]
    target_mask = in_trajectory & (terminated | (censored == "infinite"))
    returns = torch.where(terminated, torch.expm1((length - t).float() * lg), -1.0)
    return torch.where(target_mask, returns, 0.0), target_mask


def lambda_return_targets(
    values: Tensor, target_mask: Tensor, terminated: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Lambda-return value targets in full-sequence space, bootstrapped from ``values``.

    The target positions of a row (``target_mask``, as from :func:`monte_carlo_targets`) are the
    states ``s_0 .. s_L``. The steps ``s_0 .. s_{L-1}`` get the lambda-return of the length reward,
    ``G^lam_t = V(s_t) + A_t`` with ``A`` from :func:`gae` (``r_t = -(1 - gamma)``); the last
    state ``s_L`` is terminal for an EOS row (target 0) and, for a censored row (``terminated``
    False), the bootstrap ``V(s_L)`` itself, which gets no target. ``lam = 1`` on an EOS row gives
    the Monte-Carlo targets exactly; on a censored row it bootstraps instead of assuming ``L``.

    Args:
        values: (B, S) current value estimates (detach them: targets carry no gradient).
        target_mask: (B, S) bool, one contiguous run of states per row (possibly empty).
        terminated: (B,) bool.
    Returns:
        ``(targets, mask)``: float32 (B, S) targets, 0 where the bool (B, S) ``mask`` is False.
    """
    _check_ndim("values", values, 2, "(B, S)")
    _check_shape("target_mask", target_mask, values.shape, "values")
    _check_shape("terminated", terminated, values.shape[:1], "values.shape[:1]")
    states = target_mask.bool()
    positions = torch.arange(states.shape[1], device=states.device)
    last = torch.where(states, positions, -1).amax(dim=1)  # index of s_L, -1 for an empty row
    is_last = states & (positions == last[:, None])
    steps = states & ~is_last
    values = values.float()
    terminated = terminated.bool()
    bootstrap = values.gather(1, last.clamp(min=0)[:, None]).squeeze(1)
    final_values = torch.where(terminated, 0.0, bootstrap)
    _, returns = gae(length_rewards(steps, gamma), values, steps, final_values, gamma, lam)
    mask = steps | (is_last & terminated[:, None])
    return torch.where(steps, returns, 0.0), mask


def value_regression_loss(
    values: Tensor,
    targets: Tensor,
    target_mask: Tensor,
    *,
    logits: Tensor | None = None,
    loss_type: Literal["mse", "bce"] = "mse",
    num_items: Tensor | int | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Token-averaged value loss over every target position of the batch (docs/method.md#value-pretraining).

    ``mse``: ``sum w (V - G)^2 / N``; ``bce``: ``sum w BCE(sigmoid(z), u) / N`` on the head ``logits``
    with ``u = -G = 1 - gamma**l``. ``N = num_items`` when given (the summed weights of a whole
    accumulated, multi-device batch), else ``sum w`` over ``target_mask``. Without ``weights`` every
    position weighs the same (``w = 1``, ``N`` counts the positions): no per-sequence mean first,
    which would weight by ``1/L`` and shift the target (paper App. E). ``weights`` that depend only on
    the position within the trajectory, such as :func:`boundary_weights`, keep every state's target.

    Args:
        values, targets: (B, S); target_mask: (B, S) bool. Masked positions never change the loss
            or its gradient.
        logits: (B, S) head logits ``z``; needed for ``bce`` only.
        weights: optional (B, S) non-negative per-position weights ``w``.
    Returns:
        0-dim float32 loss.
    """
    if loss_type not in ("mse", "bce"):
        raise ValueError(f"loss_type must be 'mse' or 'bce', got {loss_type!r}")
    _check_shape("targets", targets, values.shape, "values")
    _check_shape("target_mask", target_mask, values.shape, "values")
    mask = target_mask.bool()
    targets = targets.float()
    if loss_type == "mse":
        per_token = (values.float() - targets) ** 2
    else:
        if logits is None:
            raise ValueError("loss_type='bce' needs the head logits: pass logits=")
        _check_shape("logits", logits, values.shape, "values")
        per_token = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), -targets, reduction="none"
        )
    if weights is not None:
        _check_shape("weights", weights, values.shape, "values")
        per_token = per_token * weights.float()
    total = torch.where(mask, per_token, 0.0).sum()
    if num_items is not None:
        count = num_items
    else:
        count = mask.sum() if weights is None else torch.where(mask, weights.float(), 0.0).sum()
    return total / torch.as_tensor(count, dtype=total.dtype, device=total.device).clamp(min=1)


def boundary_weights(target_mask: Tensor, boundary_weight: float) -> Tensor:
    """Per-position loss weights that count the prompt-boundary state ``s_0`` ``boundary_weight`` times.

    ``w = boundary_weight`` at the first target position of each row (``s_0``, the last prompt token,
    in the layout of :func:`monte_carlo_targets`), ``w = 1`` at every other target position and
    ``w = 0`` off ``target_mask``. Under the token mean, ``s_0`` is one position among about ``L + 1``
    of its trajectory; weighting it up spends more of the fit on the prompt-boundary prediction
    without changing any state's regression target.

    Args:
        target_mask: (B, S) bool or 0/1, one contiguous run of states per row (possibly empty).
        boundary_weight: finite, >= 0.
    Returns:
        float32 (B, S).
    """
    if isinstance(boundary_weight, bool) or not isinstance(boundary_weight, numbers.Real) \
            or not math.isfinite(boundary_weight) or boundary_weight < 0:
        raise ValueError(f"boundary_weight must be a finite number >= 0, got {boundary_weight!r}")
    _check_ndim("target_mask", target_mask, 2, "(B, S)")
    mask = target_mask.bool()
    first = mask & (mask.long().cumsum(dim=1) == 1)
    return torch.where(first, float(boundary_weight), mask.float())


# ----------------------------------------------------------------------------- RL: TD, GAE, shaping


def _next_step_values(values: Tensor, mask: Tensor, final_values: Tensor) -> Tensor:
    """``values`` at the next real step after each position, or ``final_values`` after the last one.

    Masked positions are never read. Entries at masked positions are meaningless (callers zero them).
    """
    batch, steps = values.shape
    positions = torch.arange(steps, device=values.device)
    real_positions = torch.where(mask, positions, steps)  # ``steps`` = "after the end"
    after = torch.cat([real_positions[:, 1:], real_positions.new_full((batch, 1), steps)], dim=1)
    next_index = after.flip(1).cummin(dim=1).values.flip(1)  # suffix minimum: first real step > t
    return torch.cat([values, final_values[:, None]], dim=1).gather(1, next_index)


def length_rewards(completion_mask: Tensor, gamma: float) -> Tensor:
    """Length reward ``r_t = -(1 - gamma)`` at every real step, 0 at masked positions.

    Args:
        completion_mask: (B, T) bool or 0/1.
    Returns:
        float32 (B, T).
    """
    _log_gamma(gamma)
    return torch.where(completion_mask.bool(), -(1.0 - gamma), 0.0)


def td_residuals(
    rewards: Tensor, values: Tensor, completion_mask: Tensor, final_values: Tensor, gamma: float
) -> Tensor:
    """TD residuals ``delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)``.

    ``V(s_{t+1})`` is the value at the next *real* step (masked positions skipped); for the last
    real step it is ``final_values`` (0 if terminated, the bootstrap ``V(s_T)`` if truncated).

    Args:
        rewards, values, completion_mask: (B, T), completion-aligned.
        final_values: (B,).
    Returns:
        float32 (B, T), 0 at masked positions.
    """
    _check_discount(gamma)
    _check_rl_inputs(values, completion_mask, final_values)
    _check_shape("rewards", rewards, values.shape, "values")
    mask = completion_mask.bool()
    values = values.float()
    next_values = _next_step_values(values, mask, final_values.float())
    return torch.where(mask, rewards.float() + gamma * next_values - values, 0.0)


def gae(
    rewards: Tensor,
    values: Tensor,
    completion_mask: Tensor,
    final_values: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over real steps.

    ``A_t = sum_i (gamma * lam)**i * delta_{t+i}`` (``i`` counts real steps, see
    :func:`td_residuals`), computed as ``A_t = delta_t + gamma * lam * A_{t+1}``;
    ``returns = A + values`` (lambda-returns). ``lam = 1`` gives Monte-Carlo returns (bootstrapped
    from ``final_values``), ``lam = 0`` gives ``A = delta``.

    Args:
        rewards, values, completion_mask: (B, T), completion-aligned.
        final_values: (B,).
    Returns:
        ``(advantages, returns)``: float32 (B, T), both 0 at masked positions.
    """
    _check_lam(lam)
    deltas = td_residuals(rewards, values, completion_mask, final_values, gamma)
    mask = completion_mask.bool()
    gamma_lam = gamma * lam
    advantages = torch.zeros_like(deltas)
    running = deltas.new_zeros(deltas.shape[0])  # A at the next real step (0 after the last)
    for t in reversed(range(deltas.shape[1])):
        running = torch.where(mask[:, t], deltas[:, t] + gamma_lam * running, running)
        advantages[:, t] = torch.where(mask[:, t], running, 0.0)
    returns = torch.where(mask, advantages + values.float(), 0.0)
    return advantages, returns


def length_gae(
    values: Tensor, completion_mask: Tensor, final_values: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Length advantage ``A^len`` (docs/method.md#the-token-level-length-advantage): :func:`gae` with the length reward.

    ``delta^len_t = -(1 - gamma) + gamma * V(s_{t+1}) - V(s_t)``,
    ``A^len_t = sum_i (gamma * lam)**i * delta^len_{t+i}``; ``values`` is the LenVM critic.

    Returns:
        ``(advantages, returns)``: float32 (B, T), both 0 at masked positions.
    """
    return gae(length_rewards(completion_mask, gamma), values, completion_mask, final_values, gamma, lam)


def potential_shaping(
    potentials: Tensor,
    completion_mask: Tensor,
    final_potentials: Tensor,
    gamma: float,
    beta: float = 1.0,
) -> Tensor:
    """Potential-based shaping reward ``F_t = beta * (gamma * Phi(s_{t+1}) - Phi(s_t))``.

    ``Phi`` is a stop-gradient, frozen LenVM value (inputs are detached). ``Phi(s_{t+1})`` is the
    potential at the next real step, or ``final_potentials`` after the last one (0 at a terminal
    state). Over a terminated trajectory ``sum_t gamma**t F_t = -beta * Phi(s_0)``.

    Args:
        potentials, completion_mask: (B, T), completion-aligned.
        final_potentials: (B,).
    Returns:
        float32 (B, T), 0 at masked positions.
    """
    _log_gamma(gamma)
    _check_rl_inputs(potentials, completion_mask, final_potentials, "potentials", "final_potentials")
    mask = completion_mask.bool()
    with torch.no_grad():
        phi = potentials.detach().float()
        next_phi = _next_step_values(phi, mask, final_potentials.detach().float())
        return torch.where(mask, beta * (gamma * next_phi - phi), 0.0)


# ----------------------------------------------------------------------------- choosing gamma


def gamma_from_lengths(lengths: Tensor, quantile: float = 0.99, horizon_value: float = 0.99) -> float:
    """Discount that maps the ``quantile`` length to ``horizon_value``: ``1 - gamma**L_q = horizon_value``.

    ``L_q = quantile(lengths, quantile)``, ``gamma = (1 - horizon_value) ** (1 / L_q)``
    (default: ``gamma = 0.01 ** (1 / L99)``).

    Args:
        lengths: any shape, non-empty.
    """
    for name, x in (("quantile", quantile), ("horizon_value", horizon_value)):
        if not 0.0 < x < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {x!r}")
    if lengths.numel() == 0:
        raise ValueError("lengths must be non-empty")
    length_q = torch.quantile(lengths.float().flatten(), quantile).item()
    if not length_q > 0:
        raise ValueError(f"the {quantile} quantile of lengths must be > 0, got {length_q}")
    return (1.0 - horizon_value) ** (1.0 / length_q)


# ----------------------------------------------------------------------------- evaluation


def return_consistent_length(lengths: Tensor, gamma: float, mask: Tensor | None = None) -> Tensor:
    """Return-consistent ground-truth length per prompt: ``L_GT = ln(1 - mu_u) / ln(gamma)``.

    ``mu_u = mean_i (1 - gamma**L_i)`` over the valid samples of a row, computed stably as
    ``ln(1 - mu_u) = ln(mean_i gamma**L_i) = logsumexp_i(L_i ln gamma) - ln(count)``.

    Args:
        lengths: (N, K) sampled completion lengths (>= 0) per prompt.
        mask: optional (N, K) bool/0-1, nonzero = valid sample (for ragged K).
    Returns:
        float32 (N,).
    """
    lg = _log_gamma(gamma)
    _check_ndim("lengths", lengths, 2, "(N, K)")
    lengths = lengths.float()
    valid = torch.ones_like(lengths, dtype=torch.bool) if mask is None else mask.bool()
    _check_shape("mask", valid, lengths.shape, "lengths")
    counts = valid.sum(dim=1)
    if bool((counts == 0).any()):
        row = int((counts == 0).nonzero()[0, 0])
        raise ValueError(f"mask row {row} has no valid sample")
    _check_nonnegative("lengths", lengths[valid])
    log_discounts = torch.where(valid, lengths * lg, -math.inf)
    return (torch.logsumexp(log_discounts, dim=1) - counts.float().log()) / lg


def prompt_boundary_mre(
    predicted_values: Tensor, lengths: Tensor, gamma: float, mask: Tensor | None = None
) -> Tensor:
    """Prompt-boundary mean relative error ``MRE = mean_n |L_hat_n - L_GT_n| / L_GT_n``.

    ``L_hat = ln(1 + V(s_0)) / ln(gamma)`` (:func:`value_to_length`), ``L_GT`` from
    :func:`return_consistent_length`.

    Args:
        predicted_values: (N,) predicted ``V(s_0)`` (value convention).
        lengths: (N, K) sampled completion lengths; mask: optional (N, K) validity.
    Returns:
        float32 0-dim tensor.
    """
    _check_ndim("predicted_values", predicted_values, 1, "(N,)")
    _check_ndim("lengths", lengths, 2, "(N, K)")
    _check_shape("predicted_values", predicted_values, lengths.shape[:1], "lengths.shape[:1]")
    predicted = value_to_length(predicted_values, gamma)
    ground_truth = return_consistent_length(lengths, gamma, mask)
    if bool((ground_truth <= 0).any()):
        raise ValueError("lengths give a return-consistent length of 0 for some row; MRE is undefined")
    return ((predicted - ground_truth).abs() / ground_truth).mean()


def positionwise_relative_error(
    values: Tensor,
    completion_mask: Tensor,
    fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
    *,
    gamma: float,
) -> Tensor:
    """Relative error of the predicted remaining length at fractions of each trajectory.

    For EOS-terminated completions of length ``L_b = completion_mask[b].sum()`` and each fraction
    ``f``: step ``k = floor(f * L_b)`` (the ``k``-th real step, counting only real positions),
    true remaining length ``L_b - k``, prediction ``value_to_length(V(s_k))``; the error is
    ``mean_b |pred - true| / true``.

    Args:
        values: (B, T) completion-aligned ``V(s_t)``.
        completion_mask: (B, T) bool/0-1; every row needs at least one real step.
        fractions: each in [0, 1).
    Returns:
        float32 (len(fractions),).
    """
    _log_gamma(gamma)
    _check_ndim("values", values, 2, "(B, T)")
    _check_shape("completion_mask", completion_mask, values.shape, "values")
    if not all(0.0 <= f < 1.0 for f in fractions):
        raise ValueError(f"fractions must be in [0, 1), got {tuple(fractions)}")
    mask = completion_mask.bool()
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        row = int((lengths == 0).nonzero()[0, 0])
        raise ValueError(f"completion_mask row {row} has no real step")
    step_index = mask.long().cumsum(dim=1) - 1  # real-step counter at each real position
    errors = []
    for f in fractions:
        k = torch.floor(f * lengths.double()).long()
        at_k = mask & (step_index == k[:, None])  # exactly one position per row
        predicted = value_to_length(torch.where(at_k, values.float(), 0.0).sum(dim=1), gamma)
        remaining = (lengths - k).float()
        errors.append(((predicted - remaining).abs() / remaining).mean())
    return torch.stack(errors)


def length_score(
    output_lengths: Tensor,
    target_lengths: Tensor,
    constraint: Literal["equal", "at_most", "at_least"],
) -> Tensor:
    """LIFEBench length score, elementwise.

    ``LD = (L_out - L_target) / L_target``;
    ``LS = 100 * exp(5 * LD)`` if ``LD < 0`` and constraint is ``"equal"`` or ``"at_least"``;
    ``LS = 100 * exp(-2 * LD)`` if ``LD > 0`` and constraint is ``"equal"`` or ``"at_most"``;
    otherwise ``LS = 100``.

    Args:
        output_lengths, target_lengths: same shape; targets > 0.
    Returns:
        float32 scores, same shape.
    """
    if constraint not in ("equal", "at_most", "at_least"):
        raise ValueError(f"constraint must be 'equal', 'at_most' or 'at_least', got {constraint!r}")
    _check_shape("output_lengths", output_lengths, target_lengths.shape, "target_lengths")
    target = target_lengths.float()
    if not bool((target > 0).all()):
        raise ValueError(f"target_lengths must be > 0, got min {target.min().item()}")
    deviation = (output_lengths.float() - target) / target
    score = torch.full_like(deviation, 100.0)
    if constraint in ("equal", "at_least"):
        score = torch.where(deviation < 0, 100.0 * torch.exp(5.0 * deviation), score)
    if constraint in ("equal", "at_most"):
        score = torch.where(deviation > 0, 100.0 * torch.exp(-2.0 * deviation), score)
    return score
