"""The variant grid of head-only fits on a frozen trunk's cached states, each evaluated on held-out sets.

Variants: a ``ValueHead`` on the training states (all cached positions, ``s_0`` weighted), a ``ValueHead`` on one
``s_0`` row per training prompt with the prompt-mean target, and the ridge probe on those rows. Every variant is
chosen on the held-out sets: read the best row as optimistic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lenvm_rl.analysis.baselines import baseline_cells
from lenvm_rl.analysis.features import boundary_rows, state_weights
from lenvm_rl.analysis.heads import fit_ridge, fit_value_head
from lenvm_rl.analysis.heldout import HeldOut

__all__ = ["fit_variants", "variant_references"]


def _row(name: str, kind: str, params: dict, epoch, loss: float, result: dict, seconds: float) -> dict:
    return {"name": name, "kind": kind, **params, "epochs": epoch, "train_loss": loss, "eval": result,
            "train_seconds": seconds}


def fit_variants(train: dict[str, torch.Tensor], sets: Sequence[HeldOut], *, positions: str,
                 boundary_weights: Sequence[float], learning_rates: Sequence[float], epochs: list[int],
                 head_batch_size: int, s0_learning_rates: Sequence[float], s0_epochs: list[int], s0_batch_size: int,
                 ridge_alphas: Sequence[float], weight_decay: float = 0.0, seed: int = 0) -> Iterator[dict]:
    """Fit the variant grid on the training features ``train`` and yield one row per variant as it finishes.

    In order: for each ``boundary_weights`` ``w`` and ``learning_rates`` ``lr``, a head on every cached training
    state (``positions`` names them in the row) with loss weight ``w`` at ``s_0`` (:func:`fit_value_head`, constant
    lr, ``head_batch_size`` states a step), one row after each of ``epochs``; for each ``s0_learning_rates`` lr, a
    head on one ``s_0`` row per training prompt with its prompt-mean target (:func:`boundary_rows`;
    ``s0_batch_size`` prompts a step), one row after each of ``s0_epochs``; for each ``ridge_alphas`` alpha, the
    ridge probe on those rows (:func:`fit_ridge`). A row is ``{"name", "kind", <its parameters>, "epochs",
    "train_loss", "eval": {set name: HeldOut.evaluate_values cell}, "train_seconds"}``.
    """
    def evaluate(head):
        return {s.name: s.evaluate_head(head) for s in sets}

    hidden, targets, is_s0 = train["hidden"], train["targets"], train["is_s0"]
    for boundary_weight in boundary_weights:
        weights = state_weights(is_s0, boundary_weight)
        for lr in learning_rates:
            for epoch, loss, result, seconds in fit_value_head(
                    hidden, targets, weights, learning_rate=lr, epochs=epochs, batch_size=head_batch_size,
                    seed=seed, weight_decay=weight_decay, evaluate=evaluate):
                yield _row(f"head, {positions} states, s_0 weight {boundary_weight:g}, lr {lr:g}, {epoch} ep", "head",
                           {"boundary_weight": boundary_weight, "learning_rate": lr}, epoch, loss, result, seconds)

    _, s0_rows, s0_targets = boundary_rows(train)
    s0_hidden = hidden[s0_rows]
    for lr in s0_learning_rates:
        for epoch, loss, result, seconds in fit_value_head(
                s0_hidden, s0_targets, torch.ones(len(s0_targets)), learning_rate=lr, epochs=sorted(set(s0_epochs)),
                batch_size=s0_batch_size, seed=seed, weight_decay=weight_decay, evaluate=evaluate):
            yield _row(f"head, s_0 only, prompt-mean target, lr {lr:g}, {epoch} ep", "s0_head", {"learning_rate": lr},
                       epoch, loss, result, seconds)
    for alpha in ridge_alphas:
        predict = fit_ridge(s0_hidden, s0_targets, alpha)
        result = {s.name: s.evaluate_values(predict(s.s0_hidden), predict(s.hidden) if s.all_positions else None)
                  for s in sets}
        loss = torch.mean((predict(s0_hidden) - s0_targets) ** 2).item()
        yield _row(f"ridge probe on s_0, prompt-mean target, alpha {alpha:g}", "ridge", {"alpha": alpha}, None, loss,
                   result, 0.0)


def variant_references(train_records: list[dict], sets: Sequence[HeldOut], gamma: float) -> list[dict]:
    """The reference rows beside the variants: per :func:`baseline_cells` name (the constant baseline, the
    prompt-length regression, the split-half MRE, the noise floor), ``{"name", "kind": "reference", "eval": {set
    name: cell}}``, the baselines fitted on ``train_records``."""
    baselines = {s.name: baseline_cells(train_records, s, gamma) for s in sets}
    return [{"name": name, "kind": "reference", "eval": {s.name: baselines[s.name][name] for s in sets}}
            for name in baselines[sets[0].name]]
