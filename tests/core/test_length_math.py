"""Tests for lenvm_rl.core.length_math: hand-computed values, properties, and input validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenvm_rl.core.length_math import (
    gae,
    gamma_from_lengths,
    length_gae,
    length_rewards,
    length_score,
    length_to_logits,
    length_to_value,
    logits_to_length,
    logits_to_value,
    monte_carlo_targets,
    positionwise_relative_error,
    potential_shaping,
    prompt_boundary_mre,
    return_consistent_length,
    td_residuals,
    value_to_length,
)

INF = math.inf
FAST = settings(max_examples=60, deadline=None)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def assert_close(actual, expected, **kw):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), **kw)


# ============================================================================ hand-computed values


def test_length_to_value_by_hand():
    # gamma = 0.5: V = -(1 - 0.5**l) -> l=0: 0, l=1: -0.5, l=2: -0.75, l=3: -0.875, l=inf: -1
    lengths = t([0.0, 1.0, 2.0, 3.0, INF])
    values = length_to_value(lengths, 0.5)
    assert values.dtype == torch.float32
    assert_close(values, [0.0, -0.5, -0.75, -0.875, -1.0])
    assert_close(length_to_value(lengths, 0.5, convention="u"), [0.0, 0.5, 0.75, 0.875, 1.0])
    # gamma = 0.9, l = 2: -(1 - 0.81) = -0.19
    assert_close(length_to_value(t([2]), 0.9), [-0.19])


def test_value_to_length_by_hand():
    # gamma = 0.5: l = ln(1 + V) / ln 0.5 -> V=-0.5: ln 0.5/ln 0.5 = 1, V=-0.875: ln 0.125/ln 0.5 = 3
    values = t([0.0, -0.5, -0.75, -0.875, -1.0])
    assert_close(value_to_length(values, 0.5), [0.0, 1.0, 2.0, 3.0, INF])
    assert_close(value_to_length(-values, 0.5, convention="u"), [0.0, 1.0, 2.0, 3.0, INF])
    # within 1e-6 outside the range is clamped: V = +5e-7 -> 0, V = -1 - 5e-7 -> inf
    assert_close(value_to_length(t([5e-7, -1.0 - 5e-7]), 0.5), [0.0, INF])


def test_logits_to_length_by_hand():
    # gamma = 0.5: z = 0 -> u = 0.5 -> l = 1; z = ln 3 -> u = 0.75 -> l = 2; z = ln 7 -> u = 0.875 -> l = 3
    logits = t([0.0, math.log(3.0), math.log(7.0)])
    assert_close(logits_to_length(logits, 0.5), [1.0, 2.0, 3.0])
    # z = 30: 1 + V = sigmoid(-30) = 9.36e-14 underflows to 0 in fp32 via 1 - sigmoid(30);
    # l = -logsigmoid(-30)/ln 2 = (30 + log1p(e^-30))/ln 2 = 43.2808...
    z = t([30.0])
    assert value_to_length(-torch.sigmoid(z), 0.5).isinf().all()  # the naive path breaks
    assert_close(logits_to_length(z, 0.5), [30.0 / math.log(2.0)])
    # bf16 / fp16 logits are upcast: same as their fp32 values
    assert logits_to_length(logits.half(), 0.5).dtype == torch.float32


def test_logits_to_value_by_hand():
    # z = 0 -> sigmoid 1/2; z = ln 3 -> 3/4; z = -ln 3 -> 1/4; z = +-inf -> 1, 0
    logits = t([0.0, math.log(3.0), -math.log(3.0), INF, -INF])
    assert_close(logits_to_value(logits), [-0.5, -0.75, -0.25, -1.0, 0.0])
    assert_close(logits_to_value(logits, convention="u"), [0.5, 0.75, 0.25, 1.0, 0.0])
    assert logits_to_value(logits.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="convention"):
        logits_to_value(logits, convention="v")


def test_length_to_logits_by_hand():
    # gamma = 0.5: l=1 -> u=0.5 -> z=0; l=2 -> u=0.75 -> z=ln 3; l=0 -> u=0 -> -inf; l=inf -> +inf
    z = length_to_logits(t([1.0, 2.0, 0.0, INF]), 0.5)
    assert_close(z, [0.0, math.log(3.0), -INF, INF])
    # gamma = 0.9999, l = 32768: x = 32768*ln(0.9999) = -3.27696...; z = log(1 - e^x) - x
    x = 32768 * math.log(0.9999)
    assert_close(length_to_logits(t([32768.0]), 0.9999), [math.log(-math.expm1(x)) - x])


def test_monte_carlo_targets_by_hand():
    # gamma = 0.5, targets -(1 - 0.5**(L - t)): L=3 -> -0.875, -0.75, -0.5, 0;  L=2 -> -0.75, -0.5, 0
    attention_mask = torch.tensor(
        [
            [1, 1, 1, 1, 1, 0, 0],  # right padding, prompt 2, L=3: s_0 at index 1, EOS at 4
            [0, 0, 1, 1, 1, 1, 1],  # left padding, prompt 2, L=3: EOS at the last tensor position
            [0, 1, 1, 1, 0, 0, 0],  # left-padded prompt + right-padded completion, prompt 1, L=2
            [1, 1, 1, 0, 0, 0, 0],  # empty completion (L=0): only s_0 (index 2) gets target 0
            [1, 1, 1, 1, 0, 0, 0],  # censored: prompt 2, 2 tokens without EOS
            [1, 1, 1, 1, 1, 1, 1],  # no padding, prompt 3, L=3 (trailing real token is not a state)
        ]
    )
    prompt_lengths = torch.tensor([2, 2, 1, 3, 2, 3])
    completion_lengths = torch.tensor([3, 3, 2, 0, 2, 3])
    terminated = torch.tensor([True, True, True, True, False, True])
    expected = t(
        [
            [0, -0.875, -0.75, -0.5, 0, 0, 0],
            [0, 0, 0, -0.875, -0.75, -0.5, 0],
            [0, -0.75, -0.5, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, -0.875, -0.75, -0.5, 0, 0],
        ]
    )
    expected_mask = torch.tensor(
        [
            [0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 1, 1],
            [0, 1, 1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],  # "drop": censored row contributes nothing
            [0, 0, 1, 1, 1, 1, 0],
        ]
    ).bool()
    targets, mask = monte_carlo_targets(attention_mask, prompt_lengths, completion_lengths, terminated, 0.5)
    assert targets.dtype == torch.float32 and mask.dtype == torch.bool
    assert torch.equal(mask, expected_mask)
    assert_close(targets, expected)

    # "infinite": the censored row gets -1 at s_0 (index 1) and both completion tokens (2, 3)
    targets, mask = monte_carlo_targets(
        attention_mask, prompt_lengths, completion_lengths, terminated, 0.5, censored="infinite"
    )
    expected_mask[4] = torch.tensor([0, 1, 1, 1, 0, 0, 0]).bool()
    expected[4] = t([0, -1, -1, -1, 0, 0, 0])
    assert torch.equal(mask, expected_mask)
    assert_close(targets, expected)


def test_length_rewards_by_hand():
    # gamma = 0.5: r = -(1 - 0.5) = -0.5 at real steps; gamma = 0.9: -0.1
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert_close(length_rewards(mask, 0.5), [[-0.5, -0.5, 0.0], [0.0, -0.5, -0.5]])
    assert_close(length_rewards(mask.bool(), 0.9), [[-0.1, -0.1, 0.0], [0.0, -0.1, -0.1]])


# Shared RL example, gamma = 0.5, lam = 0.5 (gamma*lam = 0.25). 99.0 marks masked garbage.
#  row 0: terminated, right padded. V = -0.8, -0.6, -0.4, r = -0.5 each, final 0.
#    delta_0 = -0.5 + 0.5*(-0.6) + 0.8 = 0.0
#    delta_1 = -0.5 + 0.5*(-0.4) + 0.6 = -0.1
#    delta_2 = -0.5 + 0.5*0      + 0.4 = -0.1
#    A_2 = -0.1, A_1 = -0.1 + 0.25*(-0.1) = -0.125, A_0 = 0 + 0.25*(-0.125) = -0.03125
#    R = A + V = -0.83125, -0.725, -0.5
#  row 1: truncated (bootstrap final V(s_T) = -0.9), left pad + a hole. Real steps t=1, t=3:
#    V = -0.5, -0.7, r = 1.0, 0.5
#    delta_3 = 0.5 + 0.5*(-0.9) + 0.7 = 0.75
#    delta_1 = 1.0 + 0.5*(-0.7) + 0.5 = 1.15      (next REAL value is t=3, not the hole)
#    A_3 = 0.75, A_1 = 1.15 + 0.25*0.75 = 1.3375; R_3 = 0.05, R_1 = 0.8375
RL_MASK = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 1]]).bool()
RL_VALUES = t([[-0.8, -0.6, -0.4, 99.0], [99.0, -0.5, 99.0, -0.7]])
RL_REWARDS = t([[-0.5, -0.5, -0.5, 99.0], [99.0, 1.0, 99.0, 0.5]])
RL_FINAL = t([0.0, -0.9])


def test_td_residuals_by_hand():
    deltas = td_residuals(RL_REWARDS, RL_VALUES, RL_MASK, RL_FINAL, 0.5)
    assert_close(deltas, [[0.0, -0.1, -0.1, 0.0], [0.0, 1.15, 0.0, 0.75]])


def test_gae_by_hand():
    advantages, returns = gae(RL_REWARDS, RL_VALUES, RL_MASK, RL_FINAL, 0.5, 0.5)
    assert_close(advantages, [[-0.03125, -0.125, -0.1, 0.0], [0.0, 1.3375, 0.0, 0.75]])
    assert_close(returns, [[-0.83125, -0.725, -0.5, 0.0], [0.0, 0.8375, 0.0, 0.05]])


def test_length_gae_by_hand():
    # Row 0 of the shared example uses exactly the length reward -(1 - 0.5).
    # Row 1 with length rewards: delta_3 = -0.5 - 0.45 + 0.7 = -0.25, delta_1 = -0.5 - 0.35 + 0.5 = -0.35,
    #   A_3 = -0.25, A_1 = -0.35 + 0.25*(-0.25) = -0.4125; R_3 = -0.95, R_1 = -0.9125
    advantages, returns = length_gae(RL_VALUES, RL_MASK, RL_FINAL, 0.5, 0.5)
    assert_close(advantages, [[-0.03125, -0.125, -0.1, 0.0], [0.0, -0.4125, 0.0, -0.25]])
    assert_close(returns, [[-0.83125, -0.725, -0.5, 0.0], [0.0, -0.9125, 0.0, -0.95]])


def test_potential_shaping_by_hand():
    # gamma = 0.5, beta = 2: F_t = 2*(0.5*Phi_next - Phi_t)
    #  row 0: F_0 = 2*(-0.3 + 0.8) = 1.0, F_1 = 2*(-0.2 + 0.6) = 0.8, F_2 = 2*(0 + 0.4) = 0.8
    #         telescoping: 1.0 + 0.5*0.8 + 0.25*0.8 = 1.6 = -2*Phi(s_0)
    #  row 1: F_1 = 2*(-0.35 + 0.5) = 0.3, F_3 = 2*(-0.45 + 0.7) = 0.5
    potentials = RL_VALUES.clone().requires_grad_(True)
    shaped = potential_shaping(potentials, RL_MASK, RL_FINAL, 0.5, beta=2.0)
    assert not shaped.requires_grad  # Phi is stop-grad
    assert_close(shaped, [[1.0, 0.8, 0.8, 0.0], [0.0, 0.3, 0.0, 0.5]])


def test_gamma_from_lengths_by_hand():
    # all lengths 100 -> L99 = 100 -> gamma = 0.01**(1/100) = 0.954992586...
    assert gamma_from_lengths(torch.full((10,), 100)) == pytest.approx(0.01 ** 0.01)
    # median of [1, 2, 3] is 2; horizon 0.75 -> gamma = 0.25**(1/2) = 0.5
    assert gamma_from_lengths(t([1, 2, 3]), quantile=0.5, horizon_value=0.75) == pytest.approx(0.5)
    # quantile 0.99 of 0..100 (linear interpolation) = 99 -> gamma = 0.01**(1/99)
    assert gamma_from_lengths(torch.arange(101)) == pytest.approx(0.01 ** (1 / 99))


def test_return_consistent_length_by_hand():
    # gamma = 0.5, lengths {1, 3}: mean gamma**L = (0.5 + 0.125)/2 = 0.3125 ->
    #   L_GT = ln 0.3125 / ln 0.5 = 1.678072 (the plain mean would be 2: Jensen)
    # lengths {2, 2} -> 2; the masked 99 in row 0 is ignored
    lengths = t([[1, 3, 99], [2, 2, 2]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    expected = [math.log(0.3125) / math.log(0.5), 2.0]
    assert_close(return_consistent_length(lengths, 0.5, mask), expected)
    assert_close(return_consistent_length(lengths[:, :2], 0.5), expected)


def test_prompt_boundary_mre_by_hand():
    # gamma = 0.5. Row 0: V(s_0) = -0.75 -> L_hat = 2, L_GT = 1.678072 -> |2 - 1.678072|/1.678072 = 0.191844
    #              Row 1: V(s_0) = -0.875 -> L_hat = 3, L_GT = 2 -> 0.5.  MRE = 0.345922
    l_gt = math.log(0.3125) / math.log(0.5)
    expected = ((2 - l_gt) / l_gt + 0.5) / 2
    mre = prompt_boundary_mre(t([-0.75, -0.875]), t([[1, 3], [2, 2]]), 0.5)
    assert mre.shape == () and mre.dtype == torch.float32
    assert_close(mre, expected)


def test_positionwise_relative_error_by_hand():
    # gamma = 0.5, fractions 0, .25, .5, .75.
    # Row 0: right padded, L=4; k = 0, 1, 2, 3; true = 4, 3, 2, 1; values predict exactly
    #   (V = -(1 - 0.5**4) = -0.9375, -0.875, -0.75, -0.5) -> errors 0.
    # Row 1: left padded, L=2; k = floor(0), floor(0.5), floor(1.0), floor(1.5) = 0, 0, 1, 1;
    #   true = 2, 2, 1, 1; predictions: V=-0.875 -> 3, V=-0.5 -> 1 -> errors 0.5, 0.5, 0, 0.
    # mean over rows: 0.25, 0.25, 0, 0
    values = t([[-0.9375, -0.875, -0.75, -0.5], [99.0, 99.0, -0.875, -0.5]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    errors = positionwise_relative_error(values, mask, gamma=0.5)
    assert errors.shape == (4,)
    assert_close(errors, [0.25, 0.25, 0.0, 0.0])
    assert_close(positionwise_relative_error(values, mask, (0.5,), gamma=0.5), [0.0])


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        # target 100: out 80 -> LD = -0.2 -> 100*e^(5*-0.2) = 100/e; out 150 -> LD = 0.5 -> 100*e^(-1) = 100/e
        ("equal", [100 / math.e, 100.0, 100 / math.e, 100 * math.exp(-0.5)]),
        ("at_most", [100.0, 100.0, 100 / math.e, 100 * math.exp(-0.5)]),  # short is fine
        ("at_least", [100 / math.e, 100.0, 100.0, 100.0]),  # long is fine
    ],
)
def test_length_score_by_hand(constraint, expected):
    # last column: target 40, out 50 -> LD = 0.25 -> 100*e^(-0.5) when long is penalised
    out = t([80, 100, 150, 50])
    target = t([100, 100, 100, 40])
    assert_close(length_score(out, target, constraint), expected)


# ============================================================================ properties


gammas = st.floats(0.5, 0.9999)


@st.composite
def rl_batches(draw, min_real=0):
    """Random completion-aligned batch with holes and padding: values, rewards, mask, finals."""
    batch = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, steps, generator=gen) < draw(st.floats(0.2, 1.0))
    mask[:, : min_real] = True  # guarantees at least min_real real steps per row
    values = -torch.rand(batch, steps, generator=gen)
    rewards = torch.randn(batch, steps, generator=gen)
    final = torch.where(torch.rand(batch, generator=gen) < 0.5, 0.0, -torch.rand(batch, generator=gen))
    return values, rewards, mask, final, gen


def _compact(x, mask):
    """Per-row lists of the entries at real steps (float64)."""
    return [x[b][mask[b]].double().tolist() for b in range(x.shape[0])]


@st.composite
def mc_layouts(draw):
    """Random batch for monte_carlo_targets with random left/right/mixed padding per row."""
    rows = draw(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 40), st.booleans(),
                                   st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=4))
    width = max(p + c + left + right for p, c, _, left, right in rows)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, (p, c, _, left, _right) in enumerate(rows):
        attention_mask[b, left : left + p + c] = 1
    prompt = torch.tensor([r[0] for r in rows])
    completion = torch.tensor([r[1] for r in rows])
    terminated = torch.tensor([r[2] for r in rows])
    return attention_mask, prompt, completion, terminated


@FAST
@given(mc_layouts(), gammas)
def test_mc_targets_bellman_and_monotone(layout, gamma):
    attention_mask, prompt, completion, terminated = layout
    targets, mask = monte_carlo_targets(attention_mask, prompt, completion, terminated, gamma)
    assert torch.equal(mask.sum(1), torch.where(terminated, completion + 1, 0))
    assert torch.all(targets[~mask] == 0)
    for b in range(targets.shape[0]):
        g = targets[b][mask[b]].double()
        if g.numel() == 0:
            continue
        assert g[-1] == 0  # EOS position
        # Bellman: G_t = -(1 - gamma) + gamma * G_{t+1}
        torch.testing.assert_close(g[:-1], -(1 - gamma) + gamma * g[1:], atol=2e-6, rtol=0)
        # increasing toward the EOS: strictly wherever the step (1 - gamma) * gamma**(L - t - 1)
        # is resolvable in float32 next to -1, never decreasing elsewhere
        steps = (1 - gamma) * gamma ** torch.arange(g.numel() - 2, -1, -1, dtype=torch.float64)
        assert torch.all(g[1:] >= g[:-1])
        assert torch.all((g[1:] > g[:-1])[steps > 1e-6])
        assert torch.all(g[:-1] < 0) and torch.all(g >= -1)


@FAST
@given(mc_layouts(), gammas, st.sampled_from(["drop", "infinite"]))
def test_mc_targets_padding_invariant(layout, gamma, censored):
    """Targets over the real tokens are identical for left, right, or no padding."""
    attention_mask, prompt, completion, terminated = layout
    targets, mask = monte_carlo_targets(attention_mask, prompt, completion, terminated, gamma,
                                        censored=censored)
    real = attention_mask.bool()
    for b in range(real.shape[0]):
        n = int(real[b].sum())
        for am in (torch.ones(1, n), torch.cat([torch.zeros(1, 3), torch.ones(1, n)], 1),
                   torch.cat([torch.ones(1, n), torch.zeros(1, 2)], 1)):
            tb, mb = monte_carlo_targets(am, prompt[b : b + 1], completion[b : b + 1],
                                         terminated[b : b + 1], gamma, censored=censored)
            assert torch.equal(tb[am.bool()], targets[b][real[b]])
            assert torch.equal(mb[am.bool()], mask[b][real[b]])


@FAST
@given(st.lists(st.integers(0, 32768), min_size=1, max_size=16), gammas)
def test_logits_length_round_trip(lengths, gamma):
    lengths = t(lengths)
    z = length_to_logits(lengths, gamma)
    torch.testing.assert_close(logits_to_length(z, gamma), lengths, rtol=2e-5, atol=1e-4)


@FAST
@given(st.lists(st.floats(0.0, 32768.0), min_size=1, max_size=16), gammas)
def test_value_length_round_trip(lengths, gamma):
    # keep 1 + V = gamma**l >= e^-10 so float32 resolves it; beyond that use the logits path
    lengths = t(lengths).clamp(max=10.0 / -math.log(gamma))
    for convention in ("value", "u"):
        v = length_to_value(lengths, gamma, convention=convention)
        back = value_to_length(v, gamma, convention=convention)
        torch.testing.assert_close(back, lengths, rtol=1e-3, atol=1e-3)
    v = -torch.rand(16, dtype=torch.float64) * 0.999
    torch.testing.assert_close(
        length_to_value(value_to_length(v, gamma), gamma).double(), v, rtol=1e-5, atol=1e-6
    )


@FAST
@given(st.lists(st.integers(1, 32768), min_size=1, max_size=16), gammas)
def test_bf16_inputs(lengths, gamma):
    lengths = t(lengths)
    low = lengths.bfloat16()
    # bf16 inputs are upcast: identical to the fp32 computation on the same numbers
    assert torch.equal(length_to_value(low, gamma), length_to_value(low.float(), gamma))
    assert length_to_logits(low, gamma).dtype == torch.float32
    # bf16 logits (relative rounding 2^-9): l = softplus(z)/|ln gamma| so the relative length
    # error is at most ~|dz| * sigmoid(z)/softplus(z) <= 2^-9 * max(1, |z|); allow 2x
    z = length_to_logits(lengths, gamma)
    back = logits_to_length(z.bfloat16(), gamma)
    assert back.dtype == torch.float32
    rel = (back - lengths).abs() / lengths
    assert torch.all(rel <= 2.0**-8 * z.abs().clamp(min=1.0))


def _mc_return_minus_values(rewards, values, mask, final, gamma):
    """Reference: discounted return over real steps, bootstrapped from final, minus V (float64)."""
    out = torch.zeros(values.shape, dtype=torch.float64)
    for b in range(values.shape[0]):
        idx = mask[b].nonzero().flatten().tolist()
        for j, step in enumerate(idx):
            later = idx[j:]
            ret = sum(gamma**i * float(rewards[b, s]) for i, s in enumerate(later))
            ret += gamma ** len(later) * float(final[b])
            out[b, step] = ret - float(values[b, step])
    return out


@FAST
@given(rl_batches(), st.floats(0.5, 0.999))
def test_gae_lambda_one_is_monte_carlo(batch, gamma):
    values, rewards, mask, final, _ = batch  # final is 0 (terminated) or a bootstrap value
    advantages, returns = gae(rewards, values, mask, final, gamma, 1.0)
    expected = _mc_return_minus_values(rewards, values, mask, final, gamma)
    torch.testing.assert_close(advantages.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(returns.double(), torch.where(mask, expected + values.double(), 0.0),
                               atol=1e-5, rtol=1e-5)
    # the length critic with lam = 1: same identity with r = -(1 - gamma)
    len_adv, _ = length_gae(values, mask, final, gamma, 1.0)
    expected = _mc_return_minus_values(length_rewards(mask, gamma), values, mask, final, gamma)
    torch.testing.assert_close(len_adv.double(), expected, atol=1e-5, rtol=1e-5)


@FAST
@given(rl_batches(), gammas)
def test_gae_lambda_zero_is_td(batch, gamma):
    values, rewards, mask, final, _ = batch
    advantages, returns = gae(rewards, values, mask, final, gamma, 0.0)
    deltas = td_residuals(rewards, values, mask, final, gamma)
    assert torch.equal(advantages, deltas)
    assert torch.equal(returns, torch.where(mask, deltas + values, 0.0))


@FAST
@given(rl_batches(), gammas, st.floats(-3.0, 3.0))
def test_potential_shaping_telescopes(batch, gamma, beta):
    values, _, mask, _, _ = batch
    final = torch.zeros(values.shape[0])  # terminated: Phi(terminal) = 0
    shaped = potential_shaping(values, mask, final, gamma, beta)
    for b in range(values.shape[0]):
        f = shaped[b][mask[b]].double()
        if f.numel() == 0:
            continue
        discounted = (gamma ** torch.arange(f.numel(), dtype=torch.float64) * f).sum()
        first = values[b][mask[b]][0].double()
        torch.testing.assert_close(discounted, -beta * first, atol=1e-5, rtol=1e-5)


def _all_outputs(values, rewards, mask, final, gamma, lam):
    return [
        length_rewards(mask, gamma),
        td_residuals(rewards, values, mask, final, gamma),
        *gae(rewards, values, mask, final, gamma, lam),
        *length_gae(values, mask, final, gamma, lam),
        potential_shaping(values, mask, final, gamma, 0.7),
        positionwise_relative_error(values, mask, gamma=gamma),
    ]


@FAST
@given(rl_batches(min_real=1), gammas, st.floats(0.0, 1.0), st.sampled_from([0.0, 1e6, INF, math.nan]))
def test_masked_positions_never_matter(batch, gamma, lam, garbage):
    values, rewards, mask, final, gen = batch
    outputs = _all_outputs(values, rewards, mask, final, gamma, lam)
    noisy_values = torch.where(mask, values, torch.randn(values.shape, generator=gen) * 10 + garbage)
    noisy_rewards = torch.where(mask, rewards, torch.randn(values.shape, generator=gen) - garbage)
    for before, after in zip(outputs, _all_outputs(noisy_values, noisy_rewards, mask, final, gamma, lam)):
        assert torch.equal(before, after)
    for out in outputs[:-1]:
        assert torch.all(out[~mask] == 0)


def _pad(rows, width, side):
    """Place 1-D rows into a (B, width) tensor, left- or right-padded with garbage 7.0."""
    out = torch.full((len(rows), width), 7.0)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, row in enumerate(rows):
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        out[b, cols] = row
        mask[b, cols] = True
    return out, mask


@FAST
@given(rl_batches(min_real=1), gammas, st.floats(0.0, 1.0))
def test_left_and_right_padding_agree(batch, gamma, lam):
    values, rewards, mask, final, _ = batch
    v_rows = [values[b][mask[b]] for b in range(values.shape[0])]
    r_rows = [rewards[b][mask[b]] for b in range(values.shape[0])]
    width = values.shape[1] + 2
    results = {}
    for side in ("left", "right"):
        v, m = _pad(v_rows, width, side)
        r, _ = _pad(r_rows, width, side)
        outs = _all_outputs(v, r, m, final, gamma, lam)
        results[side] = [o[m] for o in outs[:-1]] + [outs[-1]]
        # also identical to the holey original layout
        originals = _all_outputs(values, rewards, mask, final, gamma, lam)
        for padded, original in zip(results[side][:-1], originals):
            assert torch.equal(padded, original[mask])
    for left, right in zip(results["left"], results["right"]):
        assert torch.equal(left, right)


def test_long_horizon_gae_is_stable():
    # exact MC values for a terminated completion of 32768 tokens at gamma = 0.9999: every
    # delta is ~0, so A^len stays ~0 and returns reproduce the values along the whole sequence
    steps = 32768
    remaining = torch.arange(steps, 0, -1).float()
    values = length_to_value(remaining, 0.9999)[None]
    mask = torch.ones(1, steps, dtype=torch.bool)
    advantages, returns = length_gae(values, mask, t([0.0]), 0.9999, 0.95)
    assert torch.isfinite(advantages).all()
    assert advantages.abs().max() < 1e-4
    torch.testing.assert_close(returns, values, atol=1e-4, rtol=0)
    torch.testing.assert_close(value_to_length(values, 0.9999), remaining[None], rtol=1e-3, atol=1e-2)


# ============================================================================ bad inputs


GAMMA_CALLS = [
    lambda g: length_to_value(t([1.0]), g),
    lambda g: value_to_length(t([-0.5]), g),
    lambda g: logits_to_length(t([0.0]), g),
    lambda g: length_to_logits(t([1.0]), g),
    lambda g: monte_carlo_targets(torch.ones(1, 3), t([1], torch.long), t([2], torch.long),
                                  torch.tensor([True]), g),
    lambda g: length_rewards(RL_MASK, g),
    lambda g: length_gae(RL_VALUES, RL_MASK, RL_FINAL, g, 0.5),
    lambda g: potential_shaping(RL_VALUES, RL_MASK, RL_FINAL, g),
    lambda g: return_consistent_length(t([[1.0]]), g),
    lambda g: prompt_boundary_mre(t([-0.5]), t([[1.0]]), g),
    lambda g: positionwise_relative_error(RL_VALUES, RL_MASK, gamma=g),
]


@pytest.mark.parametrize("gamma", [0, 0.0, 1, 1.0, 1.5, -0.5, math.nan, True])
@pytest.mark.parametrize("call", GAMMA_CALLS)
def test_bad_gamma(call, gamma):
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\), got"):
        call(gamma)


RETURN_CALLS = [  # a task return may be undiscounted (PPO's gamma = 1); a length value may not
    lambda g: td_residuals(RL_REWARDS, RL_VALUES, RL_MASK, RL_FINAL, g),
    lambda g: gae(RL_REWARDS, RL_VALUES, RL_MASK, RL_FINAL, g, 0.5),
]


@pytest.mark.parametrize("gamma", [0, 0.0, 1.5, -0.5, math.nan, True])
@pytest.mark.parametrize("call", RETURN_CALLS)
def test_bad_return_discount(call, gamma):
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\], got"):
        call(gamma)


@pytest.mark.parametrize("call", RETURN_CALLS)
def test_an_undiscounted_return_is_allowed(call):
    call(1.0)


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_bad_lam(lam):
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        gae(RL_REWARDS, RL_VALUES, RL_MASK, RL_FINAL, 0.5, lam)


def test_shape_mismatches_name_the_argument():
    values = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"completion_mask has shape \(2, 5\) but values has shape \(2, 4\)"):
        td_residuals(values, values, torch.ones(2, 5), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match=r"rewards has shape \(2, 3\) but values has shape \(2, 4\)"):
        gae(torch.zeros(2, 3), values, torch.ones(2, 4), torch.zeros(2), 0.5, 0.5)
    with pytest.raises(ValueError, match=r"final_values has shape \(3,\)"):
        length_gae(values, torch.ones(2, 4), torch.zeros(3), 0.5, 0.5)
    with pytest.raises(ValueError, match=r"final_potentials has shape \(2, 1\)"):
        potential_shaping(values, torch.ones(2, 4), torch.zeros(2, 1), 0.5)
    with pytest.raises(ValueError, match=r"values must be 2-D"):
        td_residuals(torch.zeros(4), torch.zeros(4), torch.ones(4), torch.zeros(1), 0.5)
    with pytest.raises(ValueError, match=r"terminated has shape \(3,\)"):
        monte_carlo_targets(torch.ones(2, 4), t([1, 1]), t([1, 1]), torch.ones(3).bool(), 0.5)
    with pytest.raises(ValueError, match=r"mask has shape \(1, 2\) but lengths has shape \(1, 3\)"):
        return_consistent_length(t([[1, 2, 3]]), 0.5, torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"predicted_values has shape \(2,\)"):
        prompt_boundary_mre(t([-0.5, -0.5]), t([[1.0, 2.0]]), 0.5)
    with pytest.raises(ValueError, match=r"output_lengths has shape \(2,\) but target_lengths"):
        length_score(t([1, 2]), t([1, 2, 3]), "equal")


@pytest.mark.parametrize(
    ("values", "convention"),
    [([0.1], "value"), ([-1.01], "value"), ([-0.1], "u"), ([1.01], "u"), ([math.nan], "value")],
)
def test_value_out_of_range(values, convention):
    with pytest.raises(ValueError, match=r"values must be in"):
        value_to_length(t(values), 0.5, convention=convention)


def test_bad_convention_and_negative_lengths():
    with pytest.raises(ValueError, match=r"convention must be 'value' or 'u'"):
        length_to_value(t([1.0]), 0.5, convention="V")
    with pytest.raises(ValueError, match=r"lengths must be >= 0"):
        length_to_value(t([-1.0]), 0.5)
    with pytest.raises(ValueError, match=r"lengths must be >= 0"):
        length_to_logits(t([math.nan]), 0.5)
    with pytest.raises(ValueError, match=r"lengths must be >= 0"):
        return_consistent_length(t([[-1.0, 2.0]]), 0.5)


def test_monte_carlo_targets_bad_inputs_name_the_row():
    am = torch.ones(3, 5)
    ok = dict(terminated=torch.ones(3).bool(), gamma=0.5)
    with pytest.raises(ValueError, match=r"prompt_lengths must be >= 1 \(row 1"):
        monte_carlo_targets(am, t([1, 0, 1]), t([1, 1, 1]), **ok)
    with pytest.raises(ValueError, match=r"completion_lengths must be >= 0 \(row 2"):
        monte_carlo_targets(am, t([1, 1, 1]), t([1, 1, -1]), **ok)
    with pytest.raises(ValueError, match=r"exceeds the real tokens in attention_mask \(row 2"):
        monte_carlo_targets(am, t([1, 1, 3]), t([1, 1, 3]), **ok)
    holey = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match=r"attention_mask row 1 is not contiguous"):
        monte_carlo_targets(holey, t([1, 1, 1]), t([1, 1, 1]), **ok)
    with pytest.raises(ValueError, match=r"censored must be 'drop' or 'infinite'"):
        monte_carlo_targets(am, t([1, 1, 1]), t([1, 1, 1]), **ok, censored="cap")


def test_metric_bad_inputs():
    with pytest.raises(ValueError, match=r"mask row 1 has no valid sample"):
        return_consistent_length(t([[1, 2], [3, 4]]), 0.5, torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match=r"completion_mask row 0 has no real step"):
        positionwise_relative_error(torch.zeros(1, 3), torch.zeros(1, 3), gamma=0.5)
    with pytest.raises(ValueError, match=r"fractions must be in \[0, 1\)"):
        positionwise_relative_error(RL_VALUES, RL_MASK, (1.0,), gamma=0.5)
    with pytest.raises(ValueError, match=r"lengths must be non-empty"):
        gamma_from_lengths(torch.zeros(0))
    with pytest.raises(ValueError, match=r"quantile of lengths must be > 0"):
        gamma_from_lengths(torch.zeros(5))
    with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\)"):
        gamma_from_lengths(t([10.0]), quantile=1.0)
    with pytest.raises(ValueError, match=r"horizon_value must be in \(0, 1\)"):
        gamma_from_lengths(t([10.0]), horizon_value=0.0)
    with pytest.raises(ValueError, match=r"constraint must be 'equal', 'at_most' or 'at_least'"):
        length_score(t([1.0]), t([1.0]), "exact")
    with pytest.raises(ValueError, match=r"target_lengths must be > 0"):
        length_score(t([1.0]), t([0.0]), "equal")
