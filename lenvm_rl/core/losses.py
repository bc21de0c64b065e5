"""PPO's losses, per-token rewards and task GAE: pure tensor functions (no model, no I/O).

Conventions are those of :mod:`lenvm_rl.core.length_math`: per-token tensors are completion-aligned
``(B, T)``; ``mask`` (bool or 0/1, nonzero = a token the policy generated) selects the positions
that count. Every mean here is a *token mean* over the mask of the whole mini-batch (one number per
mini-batch, each action token weighted equally), and values stored at masked positions never change
any output. Inputs are upcast to float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lenvm_rl.core.length_math import _check_ndim, _check_shape, gae
from lenvm_rl.core.metrics import masked_mean

__all__ = ["clipped_policy_loss", "clipped_value_loss", "kl_estimate", "ppo_token_rewards", "task_gae"]

KL_ESTIMATORS = ("k1", "k3")


def _check_clip(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def _check_same(mask: Tensor, **tensors: Tensor) -> None:
    _check_ndim("mask", mask, 2, "(B, T)")
    for name, tensor in tensors.items():
        _check_shape(name, tensor, mask.shape, "mask")


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float,
    importance_weights: Tensor | None = None,
) -> Tensor:
    """PPO's clipped surrogate, negated for minimisation (Schulman et al. 2017, Eq. 7).

    ``ratio_t = exp(logprobs_t - old_logprobs_t)``,
    ``L = mean_t w_t * max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))`` over ``mask``.

    ``w`` corrects for a sampler that is not ``pi_old``: with vLLM generation it is TRL's truncated (or
    masked) importance ratio ``pi_old / pi_vLLM`` (``importance_sampling_ratio`` of TRL's GRPO output,
    per token or per sequence), multiplied into the per-token loss exactly as TRL's GRPO loss does.
    ``None`` means ``w = 1``.

    Args:
        logprobs: (B, T) log pi_theta(y_t | s_t), with grad.
        old_logprobs: (B, T) log pi_old(y_t | s_t) of the sampling policy (no grad needed).
        advantages: (B, T).
        mask: (B, T), nonzero = action token; needs at least one.
        clip_range: eps > 0.
        importance_weights: (B, T) per token, (B, 1) per sequence, or None. No grad flows through it.
    Returns:
        a scalar float32 tensor.
    """
    _check_clip("clip_range", clip_range)
    _check_same(mask, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    valid = mask.bool()
    log_ratio = torch.where(valid, logprobs.float() - old_logprobs.float(), 0.0)
    ratio = torch.exp(log_ratio)
    advantages = torch.where(valid, advantages.float(), 0.0)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    if importance_weights is not None:
        if importance_weights.shape not in (mask.shape, (mask.shape[0], 1)):
            raise ValueError(f"importance_weights must have shape {tuple(mask.shape)} (per token) or "
                             f"({mask.shape[0]}, 1) (per sequence), got {tuple(importance_weights.shape)}")
        per_token = per_token * torch.where(valid, importance_weights.detach().float(), 0.0)
    return masked_mean(per_token, valid)


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float | None
) -> Tensor:
    """PPO's clipped value loss: ``0.5 * mean_t max((V_t - R_t)^2, (V^clip_t - R_t)^2)`` over ``mask``.

    ``V^clip_t = old_V_t + clip(V_t - old_V_t, -c, c)`` keeps the new value within ``c`` of the value
    the rollout saw; ``clip_range=None`` gives the plain ``0.5 * mean_t (V_t - R_t)^2``.

    Args:
        values: (B, T) the critic's values now, with grad.
        old_values: (B, T) its values at rollout time.
        returns: (B, T) the regression targets (lambda-returns).
        mask: (B, T), nonzero = action token; needs at least one.
        clip_range: c > 0, or None.
    Returns:
        a scalar float32 tensor.
    """
    if clip_range is not None:
        _check_clip("clip_range", clip_range)
    _check_same(mask, values=values, old_values=old_values, returns=returns)
    valid = mask.bool()
    values = torch.where(valid, values.float(), 0.0)
    returns = torch.where(valid, returns.float(), 0.0)
    loss = (values - returns) ** 2
    if clip_range is not None:
        old_values = torch.where(valid, old_values.float(), 0.0)
        clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, valid)


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from the sampled tokens (Schulman's k1 / k3).

    ``k1_t = log pi(y_t) - log pi_ref(y_t)`` (unbiased, can be negative; the classic PPO-RLHF penalty),
    ``k3_t = exp(-k1_t) - 1 + k1_t`` (unbiased, always >= 0, lower variance).

    Args:
        logprobs, ref_logprobs: (B, T).
        mask: (B, T).
        estimator: "k1" or "k3".
    Returns:
        float32 (B, T), 0 at masked positions.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(map(repr, KL_ESTIMATORS))}, got {estimator!r}")
    _check_same(mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    valid = mask.bool()
    k1 = torch.where(valid, logprobs.float() - ref_logprobs.float(), 0.0)
    kl = k1 if estimator == "k1" else torch.exp(-k1) - 1.0 + k1
    return torch.where(valid, kl, 0.0)


def ppo_token_rewards(
    scores: Tensor,
    kl: Tensor,
    mask: Tensor,
    kl_coef: float,
    terminated: Tensor | None = None,
    missing_eos_penalty: float | None = None,
) -> Tensor:
    """PPO-RLHF per-token rewards: a KL penalty at every action, the task score at the last one.

    ``r_t = -kl_coef * kl_t + [t = last action] * (score - [not terminated] * missing_eos_penalty)``.

    The score of a completion with no action token is dropped (it has no step to carry it).

    Args:
        scores: (B,) the task reward of each completion.
        kl: (B, T) per-token KL estimate (:func:`kl_estimate`).
        mask: (B, T), nonzero = action token.
        kl_coef: the KL coefficient (>= 0).
        terminated: (B,) bool, whether each completion ended with EOS; needed with ``missing_eos_penalty``.
        missing_eos_penalty: subtracted from the score of each completion that did not terminate.
    Returns:
        float32 (B, T), 0 at masked positions.
    """
    if isinstance(kl_coef, bool) or not isinstance(kl_coef, (int, float)) or kl_coef < 0:
        raise ValueError(f"kl_coef must be a number >= 0, got {kl_coef!r}")
    _check_same(mask, kl=kl)
    _check_shape("scores", scores, mask.shape[:1], "mask.shape[:1]")
    valid = mask.bool()
    scores = scores.float()
    if missing_eos_penalty is not None:
        if terminated is None:
            raise ValueError("missing_eos_penalty needs terminated=, the (B,) EOS flags of the completions")
        _check_shape("terminated", terminated, mask.shape[:1], "mask.shape[:1]")
        scores = scores - (~terminated.bool()).float() * missing_eos_penalty
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(valid, positions, -1).max(dim=1).values  # -1: no action token
    at_last = positions[None, :] == last[:, None]
    rewards = -kl_coef * kl.float() + torch.where(at_last, scores[:, None], 0.0)
    return torch.where(valid, rewards, 0.0)


def task_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """PPO's task GAE: the episode ends at the last action token of every row, the next value there is 0.

    ``A_t = sum_i (gamma * lam)**i * delta_{t+i}`` with ``delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)`` over the
    real steps, and ``V = 0`` after the last one whether the completion ended with EOS or was cut at
    ``max_completion_length`` (:func:`~lenvm_rl.core.length_math.gae` with zero ``final_values``);
    ``returns = A + values``. A cut completion is not bootstrapped with ``V(s_T)``: the reward function has
    already scored the text as it is, cut included, at its last token, so nothing more is paid after it.
    Adding ``V(s_T)`` would count that score twice (once in ``r_{T-1}``, once through a critic that has
    learnt it), and with a critic that generalises from ``s_{T-1}`` to ``s_T`` the targets of cut rows grow
    with every refit, which pays the policy for not ending. This is CleanRL's and TRL's former PPO
    convention. The length return is different: a cut completion would have gone on, so
    :func:`~lenvm_rl.core.length_math.length_gae` keeps its bootstrap.

    Args:
        rewards: (B, T) per-token rewards (:func:`ppo_token_rewards`).
        values: (B, T) the task critic's ``V(s_t)``.
        mask: (B, T), nonzero = action token.
        gamma: discount in (0, 1]; lam: in [0, 1].
    Returns:
        ``(advantages, returns)``: float32 (B, T), both 0 at masked positions.
    """
    _check_same(mask, rewards=rewards, values=values)
    return gae(rewards, values, mask, values.new_zeros(values.shape[0], dtype=torch.float32), gamma, lam)
