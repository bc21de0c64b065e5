"""PPO's task GAE (no bootstrap after the last token, EOS or cut) and the importance-weighted policy loss, by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenvm_rl.core import clipped_policy_loss, length_gae, task_gae

# ----------------------------------------------------------------------------- task GAE


def test_task_gae_ends_eos_and_cut_rows_alike_by_hand():
    """Row 0 ended with EOS after 2 tokens, row 1 was cut at T = 3: neither is bootstrapped (gamma 0.9, lam 0.5)."""
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.4, 99.0], [0.5, 0.6, 0.7]])  # 99: padding, never read
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    advantages, returns = task_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: delta_1 = 1 - 0.4 = 0.6, delta_0 = 0.9 * 0.4 - 0.2 = 0.16; A_0 = 0.16 + 0.45 * 0.6 = 0.43
    # row 1: delta_2 = 1 - 0.7 = 0.3 (next value 0, not V(s_T)), delta_1 = 0.9 * 0.7 - 0.6 = 0.03,
    #        delta_0 = 0.9 * 0.6 - 0.5 = 0.04; A_1 = 0.03 + 0.45 * 0.3 = 0.165, A_0 = 0.04 + 0.45 * 0.165 = 0.11425
    expected_advantages = torch.tensor([[0.43, 0.6, 0.0], [0.11425, 0.165, 0.3]])
    expected_returns = torch.tensor([[0.63, 1.0, 0.0], [0.61425, 0.765, 1.0]])
    torch.testing.assert_close(advantages, expected_advantages, rtol=0, atol=1e-6)
    torch.testing.assert_close(returns, expected_returns, rtol=0, atol=1e-6)


def test_task_gae_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="rewards"):
        task_gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool), 1.0, 0.95)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 8), min_size=1, max_size=5), lam=st.floats(0.0, 1.0),
       refits=st.integers(2, 6))
def test_cut_returns_stay_bounded_when_a_generalising_critic_is_refit(lengths, lam, refits):
    """The probe of issue 18: gamma = 1, score 1 at the last token, a critic that values every state of a row alike
    (so it generalises from s_{T-1} to s_T), refit exactly to the row's mean return. The targets stay in [0, 1]."""
    steps = max(lengths)
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    last = torch.tensor(lengths) - 1
    rewards = torch.zeros(len(lengths), steps)
    rewards[torch.arange(len(lengths)), last] = 1.0
    row_values = torch.zeros(len(lengths))
    for _ in range(refits):
        values = row_values[:, None].expand(-1, steps)
        _, returns = task_gae(rewards, values, mask, 1.0, lam)
        assert returns[mask].max().item() <= 1.0 + 1e-5
        assert returns[mask].min().item() >= -1e-5
        row_values = (returns * mask).sum(1) / mask.sum(1)  # the exact least-squares refit of a per-row value


def test_length_gae_keeps_its_bootstrap_after_a_cut():
    """The length return of a cut completion still bootstraps V(s_T): it would have gone on."""
    values = torch.tensor([[-0.5, -0.4]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    _, returns = length_gae(values, mask, torch.tensor([-0.3]), 0.9, 1.0)
    # R_1 = -(1 - 0.9) + 0.9 * (-0.3) = -0.37, R_0 = -0.1 + 0.9 * R_1 = -0.433
    torch.testing.assert_close(returns, torch.tensor([[-0.433, -0.37]]), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- importance-weighted policy loss


def synthetic_policy_batch():
    """5 action tokens whose ratios exp(logprobs - old) are 1.5, 1.5, 1, 0.5, 0.5 (clip range 0.2)."""
    logprobs = torch.tensor([[0.3, -0.2, 0.1], [0.0, -1.0, 5.0]])
    log_ratio = torch.tensor([[math.log(1.5), math.log(1.5), 0.0], [math.log(0.5), math.log(0.5), 0.0]])
    advantages = torch.tensor([[1.0, -1.0, 2.0], [1.0, -1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    return logprobs, logprobs - log_ratio, advantages, mask


def test_policy_loss_with_and_without_importance_weights_by_hand():
    logprobs, old, advantages, mask = synthetic_policy_batch()
    # per token max(-A r, -A clip(r, 0.8, 1.2)): -1.2, 1.5, -2 | -0.5, 0.8
    plain = clipped_policy_loss(logprobs, old, advantages, mask, 0.2)
    assert plain.item() == pytest.approx((-1.2 + 1.5 - 2.0 - 0.5 + 0.8) / 5, abs=1e-6)
    per_token = torch.tensor([[0.5, 2.0, 1.0], [3.0, 0.25, 1e6]])  # TRL's token_truncate ratio; 1e6 is padding
    weighted = clipped_policy_loss(logprobs, old, advantages, mask, 0.2, importance_weights=per_token)
    assert weighted.item() == pytest.approx((-0.6 + 3.0 - 2.0 - 1.5 + 0.2) / 5, abs=1e-6)
    per_sequence = torch.tensor([[2.0], [0.5]])  # TRL's sequence_* modes
    weighted = clipped_policy_loss(logprobs, old, advantages, mask, 0.2, importance_weights=per_sequence)
    assert weighted.item() == pytest.approx((2.0 * (-1.2 + 1.5 - 2.0) + 0.5 * (-0.5 + 0.8)) / 5, abs=1e-6)
    ones = clipped_policy_loss(logprobs, old, advantages, mask, 0.2, importance_weights=torch.ones(2, 3))
    assert torch.equal(ones, plain)


def test_importance_weights_carry_no_gradient_and_are_shape_checked():
    logprobs, old, advantages, mask = synthetic_policy_batch()
    weights = torch.full((2, 1), 2.0, requires_grad=True)
    logprobs = logprobs.clone().requires_grad_(True)
    clipped_policy_loss(logprobs, old, advantages, mask, 0.2, importance_weights=weights).backward()
    assert weights.grad is None and logprobs.grad is not None
    with pytest.raises(ValueError, match=r"importance_weights must have shape \(2, 3\).*\(2, 1\)"):
        clipped_policy_loss(logprobs, old, advantages, mask, 0.2, importance_weights=torch.ones(3))
