"""Mode math of LenVM-guided decoding (docs/method.md#guided-decoding): candidate sets, tilting, length constraints.

Every function here is a pure torch function over one decoding step of a batch: ``B`` rows, ``V``
vocabulary entries, ``K`` candidates per row. The machinery that runs the models and keeps the KV
cache lives in :mod:`lenvm_rl.decoding`.

Conventions
-----------
Candidates. :func:`select_candidates` returns the ``K`` most probable tokens of each row, in order of
decreasing probability, and a ``(B, K)`` bool ``mask`` of the candidates that belong to the set
``C_t`` (top-k, then top-p and min-p). The most probable token is always in the set. Masked-out
candidates never get probability and never change any output. Ties between candidates are broken
towards the earlier (more probable) one.

Scores. ``u = -V = 1 - gamma**l`` in ``[0, 1)`` is the serving convention ("larger = longer"),
where ``V = V(s_t + x)`` is the LenVM value of the state after candidate ``x`` and ``l`` its
predicted remaining tokens. ``lengths`` are remaining tokens in length space
(:func:`~lenvm_rl.core.logits_to_length`).

Remaining target. With a token target ``T*`` (the completion length, EOS included), after a
candidate the completion has ``n = t + 1`` tokens, so the remaining target is ``T* - n``
(:func:`remaining_target`): the candidate whose predicted remaining length ``l(x)`` equals it would
end the completion at ``T*``.

End token. Under a hard ``"equal"`` or ``"at_most"`` constraint the policy may never rank EOS among
its candidates, and the completion would then run to the token limit. :func:`add_end_candidate`
puts the most probable end token into the set once the target is reached, so these constraints can
always end there.

Outputs are float32 log-probabilities over the ``K`` candidates (``-inf`` outside the set), or a
``(B, K)`` bool mask of the allowed candidates.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "CONSTRAINTS",
    "select_candidates",
    "add_end_candidate",
    "remaining_target",
    "tilt",
    "constraint_mask",
    "soft_equal_beta",
    "soft_equal",
]

Constraint = Literal["equal", "at_most", "at_least"]
CONSTRAINTS = ("equal", "at_most", "at_least", "soft_equal")
"""The constraint modes with a token target; ``None`` means exponential tilting with ``beta``."""


def _check_step(name: str, tensor: Tensor, reference: Tensor) -> None:
    if tuple(tensor.shape) != tuple(reference.shape):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but logprobs has shape {tuple(reference.shape)}")


def _row_tensor(name: str, x: float | Tensor, batch: int, like: Tensor) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float32, device=like.device)
    if x.dim() == 0:
        return x.expand(batch)
    if tuple(x.shape) != (batch,):
        raise ValueError(f"{name} must be a number or have shape ({batch},), got {tuple(x.shape)}")
    return x


def select_candidates(
    logits: Tensor, *, top_k: int, top_p: float = 1.0, min_p: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """The candidate set ``C_t`` of each row: top-k, then top-p (nucleus) and min-p within it.

    With ``p = softmax(logits)`` and candidates ``x_1 .. x_K`` sorted by decreasing ``p``
    (``K = min(top_k, V)``), candidate ``x_i`` is in the set when
    ``sum_{j<i} p(x_j) < top_p`` (top-p; the token that crosses ``top_p`` stays in),
    ``p(x_i) >= min_p * p(x_1)`` (min-p) and ``p(x_i) > 0``. ``x_1`` is always in the set.

    Args:
        logits: (B, V) next-token scores (any real values; ``-inf`` for banned tokens).
        top_k: candidates per row, >= 1.
        top_p: in (0, 1]; 1 keeps all ``K``.
        min_p: in [0, 1]; 0 keeps all ``K``.
    Returns:
        ``(ids, logprobs, mask)``: (B, K) long token ids, (B, K) float32 log-probabilities
        ``log p(x_i)`` under the full distribution, and the (B, K) bool set membership.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (B, V), got shape {tuple(logits.shape)}")
    logprobs_all = torch.log_softmax(logits.float(), dim=-1)
    logprobs, ids = logprobs_all.topk(min(top_k, logits.shape[-1]), dim=-1)  # sorted, descending
    probs = logprobs.exp()
    before = probs.cumsum(dim=-1) - probs
    mask = (before < top_p) & (probs >= min_p * probs[:, :1]) & (probs > 0)
    mask[:, 0] = True
    return ids, logprobs, mask


def add_end_candidate(
    logits: Tensor, ids: Tensor, logprobs: Tensor, mask: Tensor, end_ids: Tensor, force: bool | Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Append the most probable end token as candidate ``K + 1``; in the rows of ``force`` it joins the set.

    Row ``b``'s end token is ``e_b = argmax_{e in end_ids} logits[b, e]``. In a forced row ``e_b`` joins
    the set: in the column that already holds it when it is one of the ``K`` candidates, else in the
    new last column. It never joins where ``logits[b, e_b] = -inf`` (banned, e.g. by
    ``min_new_tokens``). Elsewhere the new column stays out of the set; a column out of the set never
    changes any output, so its id may repeat an earlier candidate's.

    Args:
        logits: (B, V) the scores :func:`select_candidates` was given.
        ids, logprobs, mask: (B, K) from :func:`select_candidates`.
        end_ids: (E,) long end-of-sequence ids, ``E >= 1``.
        force: a bool or (B,) bool, the rows whose end token must be a candidate.
    Returns:
        ``(ids, logprobs, mask)``, each (B, K + 1); ``logprobs[:, K] = log p(e_b)`` under the full
        distribution.
    """
    _check_step("ids", ids, logprobs)
    _check_step("mask", mask, logprobs)
    end_ids = torch.as_tensor(end_ids, dtype=torch.long, device=logits.device).flatten()
    if end_ids.numel() == 0:
        raise ValueError("end_ids is empty: give at least one end-of-sequence id")
    force = torch.as_tensor(force, dtype=torch.bool, device=logits.device).expand(logits.shape[0])
    end_logprobs = torch.log_softmax(logits.float(), dim=-1)[:, end_ids]  # (B, E)
    best_logprob, best = end_logprobs.max(dim=-1)
    end = end_ids[best]  # (B,)
    force = force & (best_logprob > -math.inf)
    present = ids.to(end.device) == end[:, None]  # (B, K)
    mask = mask | (present & force[:, None])
    new_in_set = force & ~present.any(dim=-1)
    return (torch.cat([ids, end[:, None].to(ids.device)], dim=1),
            torch.cat([logprobs, best_logprob[:, None].to(logprobs)], dim=1),
            torch.cat([mask, new_in_set[:, None].to(mask.device)], dim=1))


def remaining_target(target: int, generated: int) -> int:
    """The remaining target after this step's candidate: ``r = T* - (t + 1)``.

    ``T*`` counts the completion's tokens, EOS included, as every length in this library does, and as
    the LenVM's labels do: ``l(s)`` is the number of tokens after state ``s``, EOS included (0 at EOS).
    At step ``t`` (``t`` tokens generated) a candidate makes ``t + 1``, so the candidate whose
    ``l(x) = r`` ends the completion at exactly ``T*`` tokens.

    The reference implementation (sglang-LenVM, ``target_length_mode="total"``) uses ``r = T - t``
    with the same labels, so its completions aim at ``T + 1`` tokens with EOS (``T`` before it): its
    ``target_length = T`` is ``target = T + 1`` here.

    Args:
        target: ``T* >= 1``.
        generated: ``t >= 0``, completion tokens so far.
    Returns:
        ``r`` (negative once the target is passed).
    """
    if generated < 0:
        raise ValueError(f"generated must be >= 0, got {generated!r}")
    return target - (generated + 1)


def tilt(logprobs: Tensor, u: Tensor, mask: Tensor, beta: float | Tensor) -> Tensor:
    """Exponential tilting over the candidate set: ``p'(x) ∝ p(x) · exp(beta · u(x))``.

    The KL-regularised optimum of ``E[beta · u] - KL(p' || p)``. ``u = -V`` grows with the predicted
    remaining length, so ``beta < 0`` favours shorter continuations and ``beta > 0`` longer ones;
    ``beta = 0`` returns ``p`` renormalised over the set, exactly.

    Args:
        logprobs: (B, K) base log-probabilities of the candidates (need not be normalised).
        u: (B, K) ``u = -V(s_t + x)`` of each candidate.
        mask: (B, K) bool candidate set; at least one True per row.
        beta: a number or (B,) per row.
    Returns:
        float32 (B, K) normalised log-probabilities ``log p'``, ``-inf`` where ``mask`` is False.
    """
    _check_step("u", u, logprobs)
    _check_step("mask", mask, logprobs)
    beta = _row_tensor("beta", beta, logprobs.shape[0], logprobs)
    # float64 inside: re-normalising already normalised float32 log-probs (beta = 0) then returns them to the ulp
    scores = logprobs.double() + beta[:, None].double() * torch.where(mask, u.double(), 0.0)
    return torch.log_softmax(scores.masked_fill(~mask, -math.inf), dim=-1).float()


def constraint_mask(lengths: Tensor, mask: Tensor, constraint: Constraint, remaining: float | Tensor) -> Tensor:
    """The candidate a hard length constraint picks, as a (B, K) bool mask.

    With ``l(x)`` the predicted remaining tokens after candidate ``x`` and ``r = T* - n`` the
    remaining target (see the module conventions):

    - ``"equal"``: the candidate with the smallest ``|l(x) - r|`` (compared in length space);
    - ``"at_most"``: the shortest candidate, smallest ``l(x)`` (``V`` nearest 0);
    - ``"at_least"``: while ``r > 0``, the longest candidate, largest ``l(x)`` (``V`` most negative);
      once ``r <= 0`` the target is met and every candidate of the set stays allowed.

    Exactly one candidate per row is allowed (except ``"at_least"`` once met); ties go to the most
    probable candidate (the earliest). Masked-out candidates are never picked. So under ``"equal"``
    and ``"at_most"`` decoding is deterministic: sampling has one candidate to draw (the reference's
    hard constraints are one-hot too).

    Args:
        lengths: (B, K) predicted remaining tokens ``l(x)`` (may be ``inf``).
        mask: (B, K) bool candidate set; at least one True per row.
        constraint: ``"equal"``, ``"at_most"`` or ``"at_least"``.
        remaining: remaining target ``r``, a number or (B,).
    Returns:
        (B, K) bool, a subset of ``mask``.
    """
    if constraint not in ("equal", "at_most", "at_least"):
        raise ValueError(f"constraint must be 'equal', 'at_most' or 'at_least', got {constraint!r}")
    _check_step("mask", mask, lengths)
    remaining = _row_tensor("remaining", remaining, lengths.shape[0], lengths)
    lengths = lengths.float()
    if constraint == "equal":
        cost = (lengths - remaining[:, None]).abs()
    elif constraint == "at_most":
        cost = lengths
    else:
        cost = -lengths
    # argmin returns the first minimum: ties go to the most probable candidate; masked ones never win
    # (candidate 0 is always in the set, so a row of +inf costs picks it).
    pick = cost.nan_to_num(nan=math.inf).masked_fill(~mask, math.inf).argmin(dim=-1)
    chosen = torch.zeros_like(mask)
    chosen[torch.arange(mask.shape[0], device=mask.device), pick] = True
    if constraint == "at_least":
        chosen = torch.where((remaining <= 0)[:, None], mask, chosen)
    return chosen & mask


def _tilted_mean(logprobs: Tensor, u: Tensor, mask: Tensor, beta: Tensor) -> Tensor:
    return (tilt(logprobs, u, mask, beta).exp() * torch.where(mask, u.float(), 0.0)).sum(dim=-1)


def soft_equal_beta(
    logprobs: Tensor,
    u: Tensor,
    mask: Tensor,
    target_u: float | Tensor,
    *,
    max_abs_beta: float = 1e4,
    iterations: int = 60,
) -> Tensor:
    """The tilt ``beta`` per row with ``E_{p'}[u] = u*`` (the soft "equal" constraint).

    ``E_{p_beta}[u]`` is non-decreasing in ``beta`` (its derivative is ``Var_{p_beta}[u] >= 0``), so
    bisection on ``[-max_abs_beta, max_abs_beta]`` finds it. A target below (above) every reachable
    mean gives ``-max_abs_beta`` (``+max_abs_beta``): the tilt then all but picks the shortest
    (longest) candidate.

    Args:
        logprobs, u, mask: as in :func:`tilt`.
        target_u: ``u* = 1 - gamma**r`` for the remaining target ``r``; a number or (B,).
    Returns:
        float32 (B,) ``beta``.
    """
    _check_step("u", u, logprobs)
    _check_step("mask", mask, logprobs)
    if not max_abs_beta > 0 or iterations < 1:
        raise ValueError(f"max_abs_beta must be > 0 and iterations >= 1, got {max_abs_beta!r}, {iterations!r}")
    target = _row_tensor("target_u", target_u, logprobs.shape[0], logprobs)
    lo = torch.full_like(target, -max_abs_beta)
    hi = torch.full_like(target, max_abs_beta)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = _tilted_mean(logprobs, u, mask, mid) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    beta = (lo + hi) / 2
    beta = torch.where(_tilted_mean(logprobs, u, mask, hi.new_full(hi.shape, max_abs_beta)) < target,
                       max_abs_beta, beta)
    return torch.where(_tilted_mean(logprobs, u, mask, lo.new_full(lo.shape, -max_abs_beta)) > target,
                       -max_abs_beta, beta)


def soft_equal(logprobs: Tensor, u: Tensor, mask: Tensor, target_u: float | Tensor, **kwargs) -> Tensor:
    """Soft "equal": :func:`tilt` with the per-row ``beta`` of :func:`soft_equal_beta`, so ``E_{p'}[u] = u*``.

    Returns:
        float32 (B, K) normalised log-probabilities, ``-inf`` where ``mask`` is False.
    """
    return tilt(logprobs, u, mask, soft_equal_beta(logprobs, u, mask, target_u, **kwargs))
