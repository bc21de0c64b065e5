"""Tests for lenvm_rl.core.advantages: hand-computed values, properties, and input validation."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lenvm_rl.core.advantages import (
    combine_advantages,
    correct_gate,
    discounted_returns,
    group_centered,
    group_length_advantages,
    group_mean,
    kimi_length_rewards,
    pass_rate_gate,
    scale_by_std,
    whiten,
)
from lenvm_rl.core.metrics import masked_std

NAN = math.nan
INF = math.inf
FAST = settings(max_examples=40, deadline=None)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def assert_close(actual, expected, **kw):
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), equal_nan=True, **kw)


# ============================================================================ hand-computed values


def test_group_mean_and_centered_by_hand():
    # groups of 3: [1, 3, nan] -> nanmean 2; [5, nan, nan] -> 5
    x = t([1.0, 3.0, NAN, 5.0, NAN, NAN])
    assert_close(group_mean(x, 3), [2.0, 2.0, 2.0, 5.0, 5.0, 5.0])
    assert_close(group_centered(x, 3), [-1.0, 1.0, NAN, 0.0, NAN, NAN])
    # groups of 2: [1, 2] -> 1.5; an all-NaN group gives NaN
    assert_close(group_mean(t([1.0, 2.0, NAN, NAN]), 2), [1.5, 1.5, NAN, NAN])
    # [1, 3, 8] -> 4; [5, 7, 9] -> 7; bf16 is upcast
    x = t([1.0, 3.0, 8.0, 5.0, 7.0, 9.0])
    assert_close(group_centered(x.bfloat16(), 3), [-3.0, -1.0, 4.0, -2.0, 0.0, 2.0])
    assert_close(group_centered(x, 1), torch.zeros(6))  # a group of one is its own mean


def test_group_length_advantages_by_hand():
    # gamma = 0.5: lengths [2, 4] -> G = [-0.75, -0.9375], mean -0.84375, A = [0.09375, -0.09375];
    # lengths [1, 1] -> equal returns, A = 0
    advantages = group_length_advantages(t([2, 4, 1, 1], torch.long), 0.5, 2)
    assert_close(advantages, [0.09375, -0.09375, 0.0, 0.0])
    # gamma = 0.9, one group [0, 1, 2]: G = [0, -0.1, -0.19], mean -0.0966666.., A = G - mean
    mean = -0.29 / 3
    assert_close(group_length_advantages(t([0.0, 1.0, 2.0]), 0.9, 3), [-mean, -0.1 - mean, -0.19 - mean])


def test_kimi_length_rewards_by_hand():
    # group 0: lengths [10, 20, 40, 50, 30], min 10, max 50, span 40
    #   lam = 0.5 - [0, 10, 30, 40, 20] / 40 = [0.5, 0.25, -0.25, -0.5, 0.0]
    #   correct [T, F, T, F, F] -> [0.5, min(0, 0.25) = 0, -0.25, -0.5, 0]
    # group 1: all lengths equal -> 0 whatever the correctness
    lengths = t([10, 20, 40, 50, 30, 7, 7, 7, 7, 7], torch.long)
    correct = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1, 0, 1]).bool()
    expected = [0.5, 0.0, -0.25, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert_close(kimi_length_rewards(lengths, correct, 5), expected)
    assert_close(kimi_length_rewards(lengths.float(), correct.long(), 5), expected)  # 0/1 correct
    # groups of 2: [3, 5] both correct -> [0.5, -0.5]; both wrong -> [0, -0.5]
    assert_close(kimi_length_rewards(t([3, 5, 3, 5]), torch.tensor([True, True, False, False]), 2),
                 [0.5, -0.5, 0.0, -0.5])


def test_pass_rate_gate_by_hand():
    # groups of 4: mean [1, 0, 1, 0.5] = 0.625; all 0 -> 0; [nan, 1, nan, 0] -> nanmean 0.5; all NaN -> 0
    rewards = t([1.0, 0.0, 1.0, 0.5, 0, 0, 0, 0, NAN, 1.0, NAN, 0.0, NAN, NAN, NAN, NAN])
    expected = torch.tensor([0.625, 0.0, 0.5, 0.0]).repeat_interleave(4)
    assert_close(pass_rate_gate(rewards, 4), expected)
    assert_close(pass_rate_gate(rewards, 4, max_reward=2.0), expected / 2)
    # not clamped: rewards above max_reward give a gate above 1, negative rewards a negative gate
    assert_close(pass_rate_gate(t([2.0, 2.0, -1.0, 0.0]), 2), [2.0, 2.0, -0.5, -0.5])


def test_correct_gate_by_hand():
    rewards = t([1.0, 0.5, 0.49, NAN, -1.0])
    assert_close(correct_gate(rewards, 0.5), [1.0, 1.0, 0.0, 0.0, 0.0])
    assert_close(correct_gate(rewards, -1), [1.0, 1.0, 1.0, 0.0, 1.0])


def test_combine_advantages_by_hand():
    task = t([1.0, -0.5])
    length = t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    # row 0: 1 + 2 * 1 * [0.1, 0.2] = [1.2, 1.4]; row 1: -0.5 + 2 * 0.5 * [0.5, 0.6] = [0, 0.1]
    assert_close(combine_advantages(task, length, 2.0, mask, gate=t([1.0, 0.5])),
                 [[1.2, 1.4, 0.0], [0.0, 0.0, 0.1]])
    # no gate = 1: row 1 -> -0.5 + 2 * [0.5, 0.6] = [0.5, 0.7]
    assert_close(combine_advantages(task, length, 2.0, mask), [[1.2, 1.4, 0.0], [0.0, 0.5, 0.7]])
    # a (B,) length advantage (the sequence-level twin) broadcasts, and so may a (B, T) task advantage
    assert_close(combine_advantages(task[:, None].expand(2, 3), t([0.25, -0.25]), -2.0, mask),
                 [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])


def test_scale_by_std_by_hand():
    # reference [1, 5, 1, 5] (masked garbage in column 2): mean 3, population variance 4, std 2
    reference = t([[1.0, 5.0, NAN], [1.0, 5.0, 100.0]])
    reference_mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    x = t([[1.0, 3.0, 99.0]])
    mask = torch.tensor([[True, True, False]])
    assert_close(scale_by_std(x, mask, reference, reference_mask, eps=0.0), [[0.5, 1.5, 0.0]])
    assert_close(scale_by_std(x, mask, reference, reference_mask), [[1.0 / 2.0001, 3.0 / 2.0001, 0.0]])


def test_whiten_by_hand():
    # valid entries [1, 3, 5, 7] (garbage at the masked ones): mean 4, population variance 5
    x = t([[1.0, 3.0, NAN], [5.0, 100.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    expected = [[-3.0 / math.sqrt(5.0), -1.0 / math.sqrt(5.0), 0.0], [1.0 / math.sqrt(5.0), 0.0, 3.0 / math.sqrt(5.0)]]
    assert_close(whiten(x, mask, eps=1e-12), expected)
    assert_close(whiten(x, mask, eps=1.0), [[v * math.sqrt(5.0) / math.sqrt(6.0) for v in row] for row in expected])


def test_all_masked_batches_skip_the_whitening_and_the_scaling():
    """Every completion masked (all cut under mask_truncated_completions=True): no std, so x comes back as is."""
    x = t([[1.0, NAN, 3.0], [4.0, 5.0, -6.0]])
    none = torch.zeros(2, 3, dtype=torch.bool)
    for out in (whiten(x, none), scale_by_std(x, none, x, none)):
        assert out.dtype == torch.float32 and torch.equal(out, torch.zeros(2, 3))
    # an empty reference (every process masked) leaves the local advantages unscaled
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]])
    assert_close(scale_by_std(x, mask, x, none), [[1.0, 0.0, 3.0], [0.0, 0.0, 0.0]])


def test_discounted_returns_by_hand():
    # gamma = 0.5, real steps t = 0, 2, 3 (t = 1 is a hole holding garbage):
    # R_3 = 3; R_2 = 2 + 0.5 * 3 = 3.5; R_0 = 1 + 0.5 * 3.5 = 2.75
    rewards = t([[1.0, 99.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0]])
    assert_close(discounted_returns(rewards, mask, 0.5), [[2.75, 0.0, 3.5, 3.0], [0.0, 0.0, 0.0, 0.0]])


# ============================================================================ properties


@st.composite
def grouped(draw, nan_fraction=0.0):
    """(x, num_generations): random groups of floats, a fraction of them NaN."""
    num_generations = draw(st.integers(1, 5))
    num_groups = draw(st.integers(1, 4))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(num_groups * num_generations, generator=gen) * draw(st.floats(0.01, 100.0))
    x[torch.rand(x.shape, generator=gen) < nan_fraction] = NAN
    return x, num_generations


@st.composite
def token_batches(draw):
    """(values, mask, gen): a random (B, T) batch with random holes and padding."""
    batch = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 10))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mask = torch.rand(batch, steps, generator=gen) < draw(st.floats(0.2, 1.0))
    return torch.randn(batch, steps, generator=gen), mask, gen


def _with_garbage(x, mask, gen, garbage):
    return torch.where(mask, x, torch.randn(x.shape, generator=gen) * 10 + garbage)


@FAST
@given(grouped(nan_fraction=0.3))
def test_group_centered_sums_to_zero_per_group(data):
    x, num_generations = data
    centered = group_centered(x, num_generations).reshape(-1, num_generations)
    assert torch.equal(centered.isnan(), x.reshape(-1, num_generations).isnan())
    scale = x.nan_to_num().abs().amax().item() + 1.0
    for row in centered:
        real = row[~row.isnan()]
        assert abs(real.double().sum().item()) <= 1e-5 * scale * num_generations


@FAST
@given(st.lists(st.integers(0, 100), min_size=1, max_size=8), st.floats(0.9, 0.999), st.integers(1, 3))
def test_group_length_advantages_decrease_with_length(group, gamma, num_groups):
    lengths = torch.tensor(group * num_groups)
    advantages = group_length_advantages(lengths, gamma, len(group)).reshape(num_groups, -1)
    for row in advantages:
        assert abs(row.double().sum().item()) <= 1e-5
        for i in range(len(group)):
            for j in range(len(group)):
                if group[i] < group[j]:
                    assert row[i] > row[j]
                elif group[i] == group[j]:
                    assert row[i] == row[j]


@FAST
@given(token_batches(), st.floats(-3.0, 3.0), st.booleans(), st.booleans(), st.sampled_from([0.0, 1e6, INF, NAN]))
def test_combine_advantages_ignores_masked_positions(batch, coef, per_token_task, gated, garbage):
    length, mask, gen = batch
    task = torch.randn(mask.shape if per_token_task else mask.shape[:1], generator=gen)
    gate = torch.rand(mask.shape[0], generator=gen) if gated else None
    combined = combine_advantages(task, length, coef, mask, gate)
    assert torch.all(combined[~mask] == 0)
    noisy_task = _with_garbage(task, mask, gen, garbage) if per_token_task else task
    noisy = combine_advantages(noisy_task, _with_garbage(length, mask, gen, garbage), coef, mask, gate)
    assert torch.equal(noisy, combined)
    expected = (task[:, None] if task.dim() == 1 else task) + coef * (1.0 if gate is None else gate[:, None]) * length
    torch.testing.assert_close(combined[mask], expected[mask])


@FAST
@given(token_batches(), st.floats(0.5, 0.999))
def test_discounted_returns_match_a_python_loop(batch, gamma):
    rewards, mask, _ = batch
    returns = discounted_returns(rewards, mask, gamma)
    expected = torch.zeros(rewards.shape, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        steps = mask[b].nonzero().flatten().tolist()
        for j, step in enumerate(steps):
            expected[b, step] = sum(gamma**i * float(rewards[b, s]) for i, s in enumerate(steps[j:]))
    torch.testing.assert_close(returns.double(), expected, atol=1e-5, rtol=1e-5)


@FAST
@given(token_batches(), st.sampled_from([0.0, 1e6, INF, NAN]))
def test_scale_by_std_gives_unit_std_on_its_own_reference(batch, garbage):
    x, mask, gen = batch
    assume(mask.numel() >= 2)
    mask[0, 0] = mask[-1, -1] = True  # two real positions holding different random values: std > 0
    scaled = scale_by_std(x, mask, x, mask, eps=0.0)
    assert torch.all(scaled[~mask] == 0)
    torch.testing.assert_close(masked_std(scaled, mask), torch.tensor(1.0))
    noisy = _with_garbage(x, mask, gen, garbage)
    assert torch.equal(scale_by_std(noisy, mask, noisy, mask, eps=0.0), scaled)


# ============================================================================ input validation


GROUP_CALLS = [
    lambda x, k: group_mean(x, k),
    lambda x, k: group_centered(x, k),
    lambda x, k: group_length_advantages(x, 0.5, k),
    lambda x, k: kimi_length_rewards(x, torch.ones(x.shape, dtype=torch.bool), k),
    lambda x, k: pass_rate_gate(x, k),
]


@pytest.mark.parametrize("num_generations", [0, -1, 2.5, True, None])
@pytest.mark.parametrize("call", GROUP_CALLS)
def test_bad_num_generations(call, num_generations):
    with pytest.raises(ValueError, match=r"num_generations must be an integer >= 1"):
        call(t([1.0, 2.0, 3.0, 4.0]), num_generations)


@pytest.mark.parametrize("call", GROUP_CALLS)
def test_group_size_must_divide_n(call):
    with pytest.raises(ValueError, match=r"has 5 entries, not a multiple of num_generations=2"):
        call(t([1.0, 2.0, 3.0, 4.0, 5.0]), 2)
    with pytest.raises(ValueError, match=r"must be 1-D \(N,\)"):
        call(torch.ones(2, 2), 2)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"^lengths must be 1-D"):
        group_length_advantages(torch.ones(2, 2), 0.5, 2)
    with pytest.raises(ValueError, match=r"^task_rewards has 3 entries"):
        pass_rate_gate(t([1.0, 0.0, 1.0]), 2)
    with pytest.raises(ValueError, match=r"correct has shape \(3,\) but lengths has shape \(4,\)"):
        kimi_length_rewards(t([1, 2, 3, 4]), torch.ones(3).bool(), 2)
    with pytest.raises(ValueError, match=r"lengths must be >= 0"):
        kimi_length_rewards(t([1, -2, 3, 4]), torch.ones(4).bool(), 2)
    with pytest.raises(ValueError, match=r"task_rewards must be 1-D"):
        correct_gate(torch.ones(2, 2), 0.5)


def test_combine_advantages_shape_mismatches():
    mask = torch.ones(2, 4)
    ok = torch.zeros(2)
    with pytest.raises(ValueError, match=r"task_advantages has shape \(3,\) but action_mask.shape\[:1\] has shape \(2,\)"):
        combine_advantages(torch.zeros(3), ok, 1.0, mask)
    with pytest.raises(ValueError, match=r"length_advantages has shape \(2, 5\) but action_mask has shape \(2, 4\)"):
        combine_advantages(ok, torch.zeros(2, 5), 1.0, mask)
    with pytest.raises(ValueError, match=r"gate has shape \(2, 1\)"):
        combine_advantages(ok, ok, 1.0, mask, gate=torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"action_mask must be 2-D \(B, T\)"):
        combine_advantages(ok, ok, 1.0, torch.ones(2))
    with pytest.raises(ValueError, match=r"coef must be a finite real number"):
        combine_advantages(ok, ok, NAN, mask)


def test_scale_by_std_and_discounted_returns_bad_inputs():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\) but x has shape \(2, 3\)"):
        scale_by_std(x, torch.ones(2, 4), x, x)
    with pytest.raises(ValueError, match=r"reference_mask has shape \(5,\) but reference has shape \(4,\)"):
        scale_by_std(x, x, torch.ones(4), torch.ones(5))
    with pytest.raises(ValueError, match=r"eps must be >= 0"):
        scale_by_std(x, x, x, x, eps=-1e-4)
    with pytest.raises(ValueError, match=r"x must be 2-D"):
        scale_by_std(torch.ones(3), torch.ones(3), x, x)
    with pytest.raises(ValueError, match=r"completion_mask has shape \(2, 4\) but rewards has shape \(2, 3\)"):
        discounted_returns(x, torch.ones(2, 4), 0.5)
    with pytest.raises(ValueError, match=r"rewards must be 2-D"):
        discounted_returns(torch.ones(3), torch.ones(3), 0.5)


@pytest.mark.parametrize("gamma", [0, 0.0, 1, 1.0, 1.5, -0.5, NAN, True])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\), got"):
        group_length_advantages(t([1.0, 2.0]), gamma, 2)
    if gamma == 1 and gamma is not True:  # a return may be undiscounted; a length value may not
        assert discounted_returns(torch.ones(1, 2), torch.ones(1, 2), gamma).tolist() == [[2.0, 1.0]]
        return
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\], got"):
        discounted_returns(torch.ones(1, 2), torch.ones(1, 2), gamma)


@pytest.mark.parametrize("max_reward", [0, 0.0, -1.0])
def test_max_reward_must_be_positive(max_reward):
    with pytest.raises(ValueError, match=r"max_reward must be > 0"):
        pass_rate_gate(t([1.0, 0.0]), 2, max_reward=max_reward)


@pytest.mark.parametrize("max_reward", [NAN, INF, True, "1"])
def test_max_reward_must_be_a_finite_number(max_reward):
    with pytest.raises(ValueError, match=r"max_reward must be a finite real number"):
        pass_rate_gate(t([1.0, 0.0]), 2, max_reward=max_reward)


def test_bad_threshold():
    with pytest.raises(ValueError, match=r"threshold must be a finite real number"):
        correct_gate(t([1.0]), NAN)
