"""PPO losses, KL estimates and token rewards against hand-computed values and plain per-token loops."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenvm_rl.core import (
    approx_kl,
    clip_fraction,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_estimate,
    ppo_token_rewards,
    whiten,
)


def random_batch(seed: int, batch: int, steps: int):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, steps, generator=g) < 0.7
    mask[0, 0] = True  # at least one action token
    tensors = [torch.randn(batch, steps, generator=g) for _ in range(4)]
    return mask, tensors


def loop_policy_loss(logprobs, old, advantages, mask, eps):
    terms = []
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                ratio = math.exp(logprobs[b, t] - old[b, t])
                a = float(advantages[b, t])
                terms.append(max(-a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)))
    return sum(terms) / len(terms)


def loop_value_loss(values, old, returns, mask, c):
    terms = []
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                v, o, r = float(values[b, t]), float(old[b, t]), float(returns[b, t])
                if c is None:
                    terms.append((v - r) ** 2)
                else:
                    clipped = o + min(max(v - o, -c), c)
                    terms.append(max((v - r) ** 2, (clipped - r) ** 2))
    return 0.5 * sum(terms) / len(terms)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 4), steps=st.integers(1, 7),
       eps=st.floats(0.05, 0.5))
def test_clipped_policy_loss_equals_a_per_token_loop(seed, batch, steps, eps):
    mask, (logprobs, old, advantages, _) = random_batch(seed, batch, steps)
    logprobs, old = logprobs * 0.3, old * 0.3
    got = clipped_policy_loss(logprobs, old, advantages, mask, eps)
    assert got.item() == pytest.approx(loop_policy_loss(logprobs, old, advantages, mask, eps), rel=1e-5, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 4), steps=st.integers(1, 7),
       clip=st.one_of(st.none(), st.floats(0.05, 1.0)))
def test_clipped_value_loss_equals_a_per_token_loop(seed, batch, steps, clip):
    mask, (values, old, returns, _) = random_batch(seed, batch, steps)
    got = clipped_value_loss(values, old, returns, mask, clip)
    assert got.item() == pytest.approx(loop_value_loss(values, old, returns, mask, clip), rel=1e-5, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 4), steps=st.integers(1, 7))
def test_values_at_masked_positions_change_nothing(seed, batch, steps):
    mask, (a, b, c, noise) = random_batch(seed, batch, steps)
    junk = lambda x: torch.where(mask, x, noise * 1e6)  # noqa: E731
    assert torch.equal(clipped_policy_loss(a, b, c, mask, 0.2), clipped_policy_loss(junk(a), junk(b), junk(c), mask, 0.2))
    assert torch.equal(clipped_value_loss(a, b, c, mask, 0.2), clipped_value_loss(junk(a), junk(b), junk(c), mask, 0.2))
    assert torch.equal(kl_estimate(a, b, mask, "k3"), kl_estimate(junk(a), junk(b), mask, "k3"))
    assert torch.equal(whiten(a, mask), whiten(junk(a), mask))
    assert torch.equal(approx_kl(a, b, mask), approx_kl(junk(a), junk(b), mask))
    assert torch.equal(clip_fraction(a, b, mask, 0.2), clip_fraction(junk(a), junk(b), mask, 0.2))
    scores = torch.randn(batch)
    assert torch.equal(ppo_token_rewards(scores, kl_estimate(a, b, mask), mask, 0.1),
                       ppo_token_rewards(scores, junk(kl_estimate(a, b, mask)), mask, 0.1))


def test_policy_loss_by_hand():
    # ratio e^{0.5} = 1.6487 > 1.2 with A = +1: the clipped term -1.2 is the larger (pessimistic) one;
    # ratio e^{-0.5} = 0.6065 < 0.8 with A = -2: unclipped 1.2131, clipped 1.6 -> 1.6.
    logprobs = torch.tensor([[0.5, -0.5, 9.0]])
    old = torch.zeros(1, 3)
    advantages = torch.tensor([[1.0, -2.0, 5.0]])
    mask = torch.tensor([[True, True, False]])
    assert clipped_policy_loss(logprobs, old, advantages, mask, 0.2).item() == pytest.approx((-1.2 + 1.6) / 2)
    assert clip_fraction(logprobs, old, mask, 0.2).item() == 1.0
    assert approx_kl(logprobs, old, mask).item() == pytest.approx(0.125)


def test_value_loss_by_hand():
    # v = 2, old = 0, R = 1, c = 0.5: (2-1)^2 = 1, clipped 0.5 -> (0.5-1)^2 = 0.25; max 1 -> 0.5 * 1.
    values, old, returns = torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]])
    mask = torch.tensor([[True]])
    assert clipped_value_loss(values, old, returns, mask, 0.5).item() == pytest.approx(0.5)
    # v = 0.2, old = 0, R = 1: unclipped 0.64, clipped (0.2) 0.64 -> 0.32; R = -1, v = 0.8, c 0.5: max(3.24, 2.25).
    assert clipped_value_loss(torch.tensor([[0.8]]), old, -returns, mask, 0.5).item() == pytest.approx(0.5 * 3.24)


def test_kl_estimates_by_hand():
    logprobs, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    k1 = kl_estimate(logprobs, ref, mask, "k1")
    assert k1[0].tolist() == pytest.approx([0.5, -1.0])
    k3 = kl_estimate(logprobs, ref, mask, "k3")
    assert k3[0].tolist() == pytest.approx([math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0])
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="estimator must be one of 'k1', 'k3', got 'k2'"):
        kl_estimate(logprobs, ref, mask, "k2")


def test_token_rewards_put_the_score_on_the_last_action_and_penalise_missing_eos():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0]])
    kl = torch.full((3, 4), 0.5)
    scores = torch.tensor([1.0, 2.0, 7.0])
    terminated = torch.tensor([True, False, False])
    rewards = ppo_token_rewards(scores, kl, mask, 0.2, terminated=terminated, missing_eos_penalty=1.0)
    expected = torch.tensor([[-0.1, -0.1, 0.9, 0.0], [-0.1, 0.0, -0.1, 0.9], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    with pytest.raises(ValueError, match="missing_eos_penalty needs terminated="):
        ppo_token_rewards(scores, kl, mask, 0.2, missing_eos_penalty=1.0)
    with pytest.raises(ValueError, match="kl_coef must be a number >= 0"):
        ppo_token_rewards(scores, kl, mask, -0.1)


def test_gae_on_ppo_rewards_equals_a_reference_loop():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch, steps = 3, 6
        mask = torch.rand(batch, steps, generator=g) < 0.7
        rewards, values = torch.randn(batch, steps, generator=g), torch.randn(batch, steps, generator=g)
        final = torch.randn(batch, generator=g)
        gamma, lam = 0.9, 0.8
        advantages, returns = gae(rewards, values, mask, final, gamma, lam)
        for b in range(batch):
            real = [t for t in range(steps) if mask[b, t]]
            running = 0.0
            for i in reversed(range(len(real))):
                t = real[i]
                next_value = float(values[b, real[i + 1]]) if i + 1 < len(real) else float(final[b])
                delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
                running = delta + gamma * lam * running
                assert advantages[b, t].item() == pytest.approx(running, abs=1e-5)
                assert returns[b, t].item() == pytest.approx(running + float(values[b, t]), abs=1e-5)


def test_whiten_by_hand_and_bad_input():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(whiten(x, mask, eps=1e-12), torch.tensor([[-1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="clip_range must be a number > 0"):
        clipped_policy_loss(x, x, x, mask, 0.0)
    with pytest.raises(ValueError, match="old_logprobs"):
        clipped_policy_loss(x, x[:, :2], x, mask, 0.2)
