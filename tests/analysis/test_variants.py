"""lenvm_rl.analysis.variants: the grid's rows in order, each an independent fit scored on every held-out set, and
the reference rows of lenvm_rl.evaluation."""

from __future__ import annotations

import pytest
import torch
from analysis_fixtures import EVAL, GAMMA, TRAIN, tiny_lenvm, write

from lenvm_rl.analysis import (
    HeldOut,
    boundary_rows,
    extract_features,
    fit_ridge,
    fit_value_head,
    fit_variants,
    load_features,
    state_weights,
    variant_references,
)
from lenvm_rl.evaluation import NOISE_FLOOR_ROW, SPLIT_HALF_ROW


def test_variant_grid_rows_and_references(tmp_path):
    model = tiny_lenvm()

    def features(name, records, positions):
        return load_features(extract_features(lambda: model, write(tmp_path / name, records), tmp_path / "c",
                                              positions=positions, gamma=GAMMA, model_name="tiny",
                                              feature_dtype="float32", progress=False))

    train = features("train.jsonl", TRAIN, "all")
    sets = [HeldOut("eval", EVAL, features("eval.jsonl", EVAL, "all"), True, GAMMA)]
    grid = dict(positions="all", boundary_weights=[1.0, 10.0], learning_rates=[1e-2], epochs=[1, 2],
                head_batch_size=8, s0_learning_rates=[1e-2], s0_epochs=[3, 3], s0_batch_size=2, ridge_alphas=[1.0],
                seed=0)
    rows = list(fit_variants(train, sets, **grid))
    assert [(r["name"], r["kind"], r["epochs"]) for r in rows] == [
        ("head, all states, s_0 weight 1, lr 0.01, 1 ep", "head", 1),
        ("head, all states, s_0 weight 1, lr 0.01, 2 ep", "head", 2),
        ("head, all states, s_0 weight 10, lr 0.01, 1 ep", "head", 1),
        ("head, all states, s_0 weight 10, lr 0.01, 2 ep", "head", 2),
        ("head, s_0 only, prompt-mean target, lr 0.01, 3 ep", "s0_head", 3),
        ("ridge probe on s_0, prompt-mean target, alpha 1", "ridge", None)]
    assert rows[2]["boundary_weight"] == 10.0 and rows[5]["alpha"] == 1.0
    # a row is the fit of its own settings: the s_0 weight 10 head after 2 epochs, scored on the held-out set
    [(_, loss, cell, _)] = fit_value_head(train["hidden"], train["targets"], state_weights(train["is_s0"], 10.0),
                                          learning_rate=1e-2, epochs=[2], batch_size=8, seed=0,
                                          evaluate=sets[0].evaluate_head)
    assert rows[3]["train_loss"] == loss and rows[3]["eval"]["eval"] == cell  # deterministic: the same numbers
    _, s0_rows, s0_targets = boundary_rows(train)
    predict = fit_ridge(train["hidden"][s0_rows], s0_targets, 1.0)
    assert rows[5]["eval"]["eval"] == sets[0].evaluate_values(predict(sets[0].s0_hidden), predict(sets[0].hidden))
    assert rows[5]["train_loss"] == pytest.approx(torch.mean((predict(train["hidden"][s0_rows]) - s0_targets) ** 2))

    references = variant_references(TRAIN, sets, GAMMA)
    assert [(r["name"], r["kind"]) for r in references] == [
        ("constant baseline", "reference"), ("prompt-length regression", "reference"),
        (SPLIT_HALF_ROW, "reference"), (NOISE_FLOOR_ROW, "reference")]
    assert all(set(r["eval"]) == {"eval"} for r in references)
