"""Value-pretraining targets and losses: lambda_return_targets and value_regression_loss."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenvm_rl.core import boundary_weights, lambda_return_targets, monte_carlo_targets, value_regression_loss


def test_mse_by_hand_divides_by_the_target_positions():
    values = torch.tensor([[-0.5, -0.2, 0.0], [-0.9, -0.1, -0.3]])
    targets = torch.tensor([[-0.75, -0.5, 0.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # (0.25^2 + 0.3^2 + 0^2 + 0.1^2) / 4 = (0.0625 + 0.09 + 0 + 0.01) / 4 = 0.040625
    loss = value_regression_loss(values, targets, mask)
    assert loss.item() == pytest.approx(0.040625)
    # a whole accumulated step: the same sum over 10 positions
    assert value_regression_loss(values, targets, mask, num_items=10).item() == pytest.approx(0.01625)


def test_boundary_weights_by_hand():
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    expected = torch.tensor([[0, 5, 1, 1, 0], [5, 1, 0, 0, 0], [0, 0, 0, 0, 0]]).float()
    assert torch.equal(boundary_weights(mask, 5.0), expected)
    assert torch.equal(boundary_weights(mask, 1.0), mask.float())
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="boundary_weight must be a finite number >= 0"):
            boundary_weights(mask, bad)


def test_weighted_mse_by_hand():
    values = torch.tensor([[-0.5, -0.2, 0.0], [-0.9, -0.1, -0.3]])
    targets = torch.tensor([[-0.75, -0.5, 0.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    weights = boundary_weights(mask, 3.0)  # s_0 of each row counts 3 times
    # (3 * 0.25^2 + 0.3^2 + 0 + 3 * 0.1^2) / (3 + 1 + 1 + 3) = (0.1875 + 0.09 + 0.03) / 8 = 0.0384375
    assert value_regression_loss(values, targets, mask, weights=weights).item() == pytest.approx(0.0384375)
    assert value_regression_loss(values, targets, mask, weights=torch.ones(2, 3)).item() == pytest.approx(0.040625)


def test_bce_by_hand_on_logits_against_u():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[-0.25, 0.0]])  # u = 0.25 and 0
    mask = torch.tensor([[True, True]])
    # BCE(sigmoid(0), 0.25) = ln 2; BCE(sigmoid(2), 0) = ln(1 + e^2)
    expected = (torch.log(torch.tensor(2.0)) + torch.log1p(torch.exp(torch.tensor(2.0)))) / 2
    loss = value_regression_loss(-torch.sigmoid(logits), targets, mask, logits=logits, loss_type="bce")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="loss_type must be 'mse' or 'bce'"):
        value_regression_loss(logits, targets, mask, loss_type="l1")
    with pytest.raises(ValueError, match="needs the head logits: pass logits="):
        value_regression_loss(logits, targets, mask, loss_type="bce")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 8), st.sampled_from(["mse", "bce"]), st.integers(0, 2**31 - 1))
def test_padding_never_changes_the_loss_or_its_gradients(batch, width, loss_type, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, width, generator=g)
    targets = -torch.rand(batch, width, generator=g)
    mask = torch.rand(batch, width, generator=g) > 0.4
    mask[0, 0] = True

    def loss_and_grad(z):
        z = z.clone().requires_grad_(True)
        loss = value_regression_loss(-torch.sigmoid(z), targets, mask, logits=z, loss_type=loss_type)
        loss.backward()
        return loss.detach(), z.grad

    other = torch.where(mask, logits, torch.randn(batch, width, generator=g) * 50)
    other_targets = torch.where(mask, targets, -torch.rand(batch, width, generator=g))
    loss, grad = loss_and_grad(logits)
    loss2, grad2 = loss_and_grad(other)
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2)
    assert (grad[~mask] == 0).all()
    z = logits.clone().requires_grad_(True)
    value_regression_loss(-torch.sigmoid(z), other_targets, mask, logits=z, loss_type=loss_type).backward()
    assert torch.equal(z.grad, grad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 6)), min_size=1, max_size=4),
       st.floats(0.5, 0.99), st.sampled_from(["left", "right"]), st.integers(0, 2**31 - 1))
def test_lambda_one_targets_equal_the_monte_carlo_targets(rows, gamma, side, seed):
    width = max(p + c for p, c in rows) + 2
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        if side == "right":
            attention[i, : p + c] = 1
        else:
            attention[i, width - p - c :] = 1
    prompt, completion = torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])
    terminated = torch.ones(len(rows), dtype=torch.bool)
    mc, mc_mask = monte_carlo_targets(attention, prompt, completion, terminated, gamma)
    values = -torch.rand(len(rows), width, generator=torch.Generator().manual_seed(seed))
    targets, mask = lambda_return_targets(values, mc_mask, terminated, gamma, lam=1.0)
    assert torch.equal(mask, mc_mask)
    torch.testing.assert_close(targets, mc, atol=1e-6, rtol=1e-5)


def test_lambda_targets_by_hand_for_an_ended_and_a_censored_row():
    gamma, lam = 0.5, 0.5
    values = torch.tensor([[-0.6, -0.4, -0.2], [-0.8, -0.6, -0.3]])
    mask = torch.ones(2, 3, dtype=torch.bool)  # states s_0, s_1, s_2 of each row
    targets, out_mask = lambda_return_targets(values, mask, torch.tensor([True, False]), gamma, lam)
    # Row 0 ends: s_2 is the EOS (target 0). r = -0.5.
    #   delta_1 = -0.5 + 0.5 * 0 - (-0.4) = -0.1;  A_1 = -0.1;  G_1 = -0.4 - 0.1 = -0.5
    #   delta_0 = -0.5 + 0.5 * (-0.4) + 0.6 = -0.1; A_0 = -0.1 + 0.25 * (-0.1) = -0.125; G_0 = -0.725
    # Row 1 is cut: s_2 bootstraps with V = -0.3 and gets no target.
    #   delta_1 = -0.5 + 0.5 * (-0.3) + 0.6 = -0.05; G_1 = -0.65
    #   delta_0 = -0.5 + 0.5 * (-0.6) + 0.8 = 0.0;  A_0 = 0 + 0.25 * (-0.05) = -0.0125; G_0 = -0.8125
    assert out_mask.tolist() == [[True, True, True], [True, True, False]]
    torch.testing.assert_close(targets, torch.tensor([[-0.725, -0.5, 0.0], [-0.8125, -0.65, 0.0]]))
