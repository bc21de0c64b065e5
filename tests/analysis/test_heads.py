"""lenvm_rl.analysis.heads: the ridge probe by hand and its clamp, and fit_value_head's schedule and seeding."""

from __future__ import annotations

import pytest
import torch

from lenvm_rl.analysis import fit_ridge, fit_value_head, head_values


def test_ridge_without_penalty_recovers_a_line():
    hidden = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    predict = fit_ridge(hidden, torch.tensor([-0.2, -0.4, -0.6, -0.8]), 0.0)  # V = -0.2 - 0.2 h
    assert predict(torch.tensor([[0.5], [2.5]])).tolist() == pytest.approx([-0.3, -0.7])


def test_ridge_clamps_above_the_censored_target():
    hidden = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    targets = torch.tensor([-0.2, -0.5, -0.9, -1.0])  # the last: a censored completion (infinite length)
    predict = fit_ridge(hidden, targets, 0.0)
    values = predict(torch.tensor([[-10.0], [1.0], [10.0]]))
    assert values[0] == pytest.approx(-0.2) and values[2] == pytest.approx(-0.9)  # the finite targets' range
    assert -0.9 < values[1] < -0.2


def _states(head):
    return {key: value.clone() for key, value in head.state_dict().items()}


def test_fit_value_head_constant_lr_is_a_prefix_of_a_longer_run():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(20, 8, generator=generator)
    targets = -torch.rand(20, generator=generator)
    weights = torch.ones(20)
    fit = dict(learning_rate=1e-2, batch_size=6, seed=3, evaluate=_states)
    [(epoch, loss, one, _)] = fit_value_head(hidden, targets, weights, epochs=[1], **fit)
    longer = fit_value_head(hidden, targets, weights, epochs=[1, 2], **fit)
    assert epoch == 1 and [e for e, *_ in longer] == [1, 2] and longer[0][1] == loss
    for key, value in one.items():
        torch.testing.assert_close(longer[0][2][key], value, rtol=0, atol=0)
    # the linear schedule decays over max(epochs): its first epoch differs
    linear = fit_value_head(hidden, targets, weights, epochs=[1, 2], lr_scheduler_type="linear", **fit)
    assert any(not torch.equal(linear[0][2][key], value) for key, value in one.items())
    # an evaluated head is in eval mode and its values are V = -sigmoid(z) in [-1, 0]
    [(_, _, values, _)] = fit_value_head(hidden, targets, weights, epochs=[1], learning_rate=1e-2, batch_size=6,
                                         evaluate=lambda head: (head.training, head_values(head, hidden)))
    assert values[0] is False and bool(((values[1] >= -1) & (values[1] <= 0)).all())
    # a zero weight leaves a state out of the loss: a head fitted on one copy of each state with weight 1 and a
    # second copy at weight 0 sees the same loss on a full batch
    doubled = fit_value_head(torch.cat([hidden, hidden]), torch.cat([targets, -targets - 1]),
                             torch.cat([weights, torch.zeros(20)]), epochs=[1], learning_rate=0.0, batch_size=40)
    plain = fit_value_head(hidden, targets, weights, epochs=[1], learning_rate=0.0, batch_size=20)
    assert doubled[0][1] == pytest.approx(plain[0][1], rel=1e-6)
