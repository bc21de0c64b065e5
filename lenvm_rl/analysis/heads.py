"""Value predictors fitted on fixed (cached) trunk states: a fresh ``ValueHead`` trained with AdamW, and a
closed-form ridge probe.

States are ``(N, H)`` hidden states (:mod:`lenvm_rl.analysis.features`), targets ``(N,)`` value-space returns
``G = -(1 - gamma**l)`` in ``[-1, 0]``; predictions are values ``V`` in the same space.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from lenvm_rl.core import logits_to_value, value_regression_loss

__all__ = ["fit_ridge", "fit_value_head", "head_values"]


@torch.no_grad()
def head_values(head, hidden: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
    """``V = -sigmoid(z)`` (``core.logits_to_value``) of a ``ValueHead`` on ``(N, H)`` states, as ``LenVM.head``;
    float32 ``(N,)``, computed ``batch_size`` states at a time."""
    return torch.cat([logits_to_value(head(part)) for part in hidden.split(batch_size)]) if len(hidden) else \
        torch.zeros(0)


def fit_value_head(hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, *, learning_rate: float,
                   epochs: list[int], batch_size: int, seed: int = 0, weight_decay: float = 0.0,
                   lr_scheduler_type: str = "constant", evaluate: Callable | None = None):
    """A fresh ``ValueHead`` fitted on fixed states with AdamW.

    ``hidden`` ``(N, H)``, ``targets`` and ``weights`` ``(N,)``. Each step draws ``batch_size`` positions of a fresh
    random permutation per epoch and minimises ``core.value_regression_loss`` with per-position ``weights``
    (``sum w (V - G)**2 / sum w`` over the minibatch). The learning rate follows
    ``transformers.get_scheduler(lr_scheduler_type)`` without warmup over ``max(epochs)`` epochs, as the
    ``Trainer``'s: ``"constant"`` makes the head after epoch ``e`` of a longer run exactly the head of an
    ``e``-epoch run; ``"linear"`` (``LenVMConfig``'s default) decays to 0 at the last epoch. ``seed`` seeds the
    head's initialisation and the shuffling. After each epoch in ``epochs`` the head (eval mode) goes to
    ``evaluate(head)``. Returns ``[(epoch, mean training loss of that epoch, evaluate(head) or None, seconds so
    far), ...]``.
    """
    from transformers import get_scheduler

    from lenvm_rl.modeling import ValueHead

    torch.manual_seed(seed)
    head = ValueHead(hidden.shape[1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_scheduler(lr_scheduler_type, optimizer, num_warmup_steps=0,
                              num_training_steps=max(epochs) * math.ceil(len(targets) / batch_size))
    generator = torch.Generator().manual_seed(seed)
    targets, weights = targets.float(), weights.float()
    results, start = [], time.perf_counter()
    for epoch in range(1, max(epochs) + 1):
        head.train()
        losses = []
        for index in torch.randperm(len(targets), generator=generator).split(batch_size):
            values = logits_to_value(head(hidden[index]))
            every = torch.ones(1, len(index), dtype=torch.bool)
            loss = value_regression_loss(values[None], targets[index][None], every, weights=weights[index][None])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        if epoch in epochs:
            head.eval()
            results.append((epoch, statistics.fmean(losses), evaluate(head) if evaluate else None,
                            time.perf_counter() - start))
    return results


def fit_ridge(hidden: torch.Tensor, targets: torch.Tensor, alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Closed-form ridge regression of ``targets`` ``(N,)`` on standardised ``hidden`` ``(N, H)`` (unpenalised
    intercept), float64: ``coef = (Z^T Z + alpha I)^-1 Z^T (y - mean y)``, ``Z = (hidden - mean) / std``.

    Returns ``predict(states (M, H)) -> (M,)`` float32 values clamped into the range of the training targets above
    -1: a linear probe is unbounded, and a value at or below -1 would predict an infinite length. (A target of -1
    is a censored completion's, ``censored="infinite"``; with one sample per prompt there are such targets, and a
    clamp at -1 would let the probe predict infinite lengths. Clamped at the lowest finite-length target, it
    predicts at most the longest completion it was fitted on.)
    """
    x = hidden.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    y = targets.double() - targets.double().mean()
    coef = torch.linalg.solve(z.T @ z + alpha * torch.eye(z.shape[1], dtype=torch.float64), z.T @ y)
    intercept = targets.double().mean()
    finite = targets[targets > -1]
    low, high = (finite.min().item() if len(finite) else -1.0), targets.max().item()

    def predict(states: torch.Tensor) -> torch.Tensor:
        return (((states.double() - mean) / std) @ coef + intercept).clamp(low, high).float()

    return predict
