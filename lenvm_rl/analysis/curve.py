"""The learning curve: fixed value-predictor recipes fitted on growing training subsets of cached features and
evaluated on the same held-out sets.

A *row* ``P x K`` takes samples ``0 .. K-1`` of the questions ``prompt_index 0 .. P-1`` (:func:`curve_mask`), so
rows of one number of completions differ only in how they are split, and a growing ``P x 1`` row contains the
smaller ones. Per row (:func:`evaluate_curve_row`), each predictor of :data:`CURVE_PREDICTORS` (and, with the
all-state features, :data:`RECIPE_HEAD` and :data:`RECIPE_SEED_MEAN`) gets a cell per held-out set
(:meth:`~lenvm_rl.analysis.HeldOut.evaluate_values`). The slope (:func:`fit_slope`) is the least-squares change of
the MRE per doubling of the prompts over the ``P x 1`` rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lenvm_rl.analysis.baselines import baseline_s0_values
from lenvm_rl.analysis.features import boundary_rows, record_steps, state_weights
from lenvm_rl.analysis.heads import fit_ridge, fit_value_head
from lenvm_rl.analysis.heldout import HeldOut
from lenvm_rl.core import fit_linear, mean_and_standard_error, seed_mean, slope_standard_error

__all__ = ["CURVE_PREDICTORS", "MSE_PREDICTORS", "PAIRED_PREDICTORS", "PAIRED_REFERENCE", "RECIPE_HEAD",
           "RECIPE_SEED_MEAN", "RECIPE_TABLE", "SEED_MEAN", "CurveData", "CurveSettings", "curve_mask", "curve_slopes",
           "curve_state_mask", "evaluate_curve_row", "fit_slope", "mean_over_seeds", "paired_difference",
           "parse_curve_row", "prompts_for_target", "recipe_train_files"]

SEED_MEAN = "s_0 head, mean of seeds"
CURVE_PREDICTORS = ("s_0 head", SEED_MEAN, "ridge probe", "constant baseline", "prompt-length regression")
"""The curve's predictors. ``s_0 head`` is the run of ``CurveSettings.seed``; ``prompt-length regression`` is
``lenvm_rl.evaluation.prompt_length_baseline``, the least-squares line of the prompt-mean ``V(s_0)`` target on the
prompt's token count (fitted in value space, so unbiased whatever the samples per prompt)."""
RECIPE_HEAD = "recipe head (all states)"
"""With the all-state features: the item-2 recipe, a ``ValueHead`` fitted on every state of the row's training
completions (``variants``' all-states head), evaluated at every held-out state."""
RECIPE_SEED_MEAN = "recipe head, mean of seeds"
RECIPE_TABLE = (RECIPE_HEAD, RECIPE_SEED_MEAN, "constant baseline", "prompt-length regression")
PAIRED_REFERENCE = "prompt-length regression"
PAIRED_PREDICTORS = (SEED_MEAN, "ridge probe", RECIPE_SEED_MEAN)
MSE_PREDICTORS = ("s_0 head", "ridge probe", "constant baseline", "prompt-length regression")


def parse_curve_row(text: str) -> tuple[int, int]:
    """``"800x2"`` -> ``(800, 2)``: that many prompts (rows ``0 .. P-1``) times samples per prompt."""
    try:
        prompts, samples = (int(part) for part in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"a curve row is PROMPTSxSAMPLES, e.g. 800x2; got {text!r}") from None
    if prompts < 2 or samples < 1:
        raise ValueError(f"a curve row needs at least 2 prompts and 1 sample per prompt; got {text!r}")
    return prompts, samples


def curve_mask(prompt_index: torch.Tensor, sample_index: torch.Tensor, prompts: int, samples: int) -> torch.Tensor:
    """The records (or cached rows) of one curve row: ``prompt_index < prompts`` and ``sample_index < samples``.

    ``prompt_index``, ``sample_index``: ``(N,)``; returns an ``(N,)`` bool mask. A row of ``P x K`` takes the first
    ``K`` samples of each of the prompts ``0 .. P-1`` (``prompt_index`` is the question's row in the data set), so
    rows with the same number of completions differ only in how they are split and a growing row contains the
    smaller ones. Raises ``ValueError`` unless every one of the ``P x K`` (prompt, sample) pairs is present exactly
    once.
    """
    prompt_index, sample_index = torch.as_tensor(prompt_index), torch.as_tensor(sample_index)
    mask = (prompt_index >= 0) & (prompt_index < prompts) & (sample_index >= 0) & (sample_index < samples)
    keys = prompt_index[mask] * samples + sample_index[mask]
    distinct = torch.unique(keys)
    if len(distinct) != len(keys):
        raise ValueError(f"{prompts}x{samples}: {len(keys) - len(distinct)} duplicate (prompt_index, sample_index) "
                         "pairs; pass each rollout file once")
    if len(distinct) != prompts * samples:
        found = torch.zeros(prompts * samples, dtype=torch.bool)
        found[distinct] = True
        first = int((~found).nonzero()[0, 0])
        raise ValueError(f"{prompts}x{samples}: {prompts * samples - len(distinct)} of the {prompts * samples} "
                         f"completions are missing (first: prompt_index {first // samples}, sample_index "
                         f"{first % samples}); sample them first")
    return mask


def curve_state_mask(features: dict[str, torch.Tensor], prompts: int, samples: int) -> torch.Tensor:
    """``curve_mask`` on cached features: the records are selected (and checked) at their ``s_0`` rows, one per
    record, and the ``(N,)`` mask extends to every cached state of the selected records (``record_steps``)."""
    block, _ = record_steps(features)
    s0 = features["is_s0"]
    return curve_mask(features["prompt_index"][s0], features["sample_index"][s0], prompts, samples)[block]


def recipe_train_files(paths, rows_spec) -> list[str]:
    """The training rollout files that hold records of the curve rows ``[(P, K), ...]``, ordered by the smallest
    row (fewest completions, then prompts) that needs each, so an extraction in this order completes small rows
    first; files that no row needs are left out."""
    from lenvm_rl.data import read_rollouts

    first_needed = {}
    for path in paths:
        records = read_rollouts(path)
        rows = [(prompts * samples, prompts) for prompts, samples in rows_spec
                if any(r["prompt_index"] < prompts and r.get("sample_index", 0) < samples for r in records)]
        if rows:
            first_needed[path] = min(rows)
    return sorted(first_needed, key=first_needed.get)


def fit_slope(prompts, mres) -> dict:
    """Least squares ``MRE = slope * log2(prompts) + intercept`` (``core.fit_linear``): the MRE change per doubling
    of the prompts.

    ``slope_se`` is the textbook standard error from the residuals (``core.slope_standard_error``; NaN with 2
    points); the points share one held-out set, so their errors are correlated and it is only a rough guide. An
    infinite or NaN MRE (a saturated head) makes every entry NaN.
    """
    x = torch.tensor([math.log2(p) for p in prompts], dtype=torch.float64)
    y = torch.tensor(list(mres), dtype=torch.float64)
    if len(x) < 2 or bool((x == x[0]).all()):
        raise ValueError(f"a slope needs at least 2 distinct numbers of prompts, got {list(prompts)}")
    if not bool(torch.isfinite(y).all()):
        return {"slope": math.nan, "slope_se": math.nan, "intercept": math.nan}
    slope, intercept = fit_linear(x, y)
    return {"slope": slope, "slope_se": slope_standard_error(x, y), "intercept": intercept}


def prompts_for_target(fit: dict, target: float) -> float:
    """The number of prompts at which the fitted line reaches ``target`` (inf if it never does: slope >= 0)."""
    if fit["slope"] >= 0:
        return math.inf
    try:
        return 2.0 ** ((target - fit["intercept"]) / fit["slope"])
    except OverflowError:  # a slope barely below 0: beyond any float
        return math.inf


def mean_over_seeds(cells: list[dict]) -> dict:
    """One cell from the cells of several seeds (``core.seed_mean``): means (NaN where a seed's is), ``seed_sd``
    (standard deviation of the MRE over seeds, NaN for one seed) and ``seeds``; ``num_infinite`` is the largest."""
    keys = ("prompt_mre", "prompt_mre_se", "s0_value_mse", "re_at_0", "value_mse")
    fractions = list(cells[0]["positionwise_re"])
    table = torch.tensor([[cell[key] for key in keys] + [cell["positionwise_re"][f] for f in fractions]
                          for cell in cells], dtype=torch.float64)
    mean, se = seed_mean(table)
    errors, _ = seed_mean(torch.tensor([cell["prompt_errors"] for cell in cells], dtype=torch.float64))
    sd = se[0].item() * math.sqrt(len(cells))
    return dict(zip(keys, mean[:len(keys)].tolist())) | {
        "seed_sd": sd, "seeds": len(cells), "num_infinite": max(cell["num_infinite"] for cell in cells),
        "positionwise_re": dict(zip(fractions, mean[len(keys):].tolist())), "prompt_errors": errors.tolist()}


def paired_difference(cell: dict, reference: dict) -> dict:
    """The prompt MRE of ``cell`` minus that of ``reference`` on the same held-out prompts, paired by prompt:
    ``{"difference": mean_p (e_p - r_p), "se": its standard error over prompts}``. Pairing removes the spread of
    the prompts' difficulty that both predictors share, which the unpaired SEs of the two MREs both carry."""
    difference, se = mean_and_standard_error(torch.tensor(cell["prompt_errors"], dtype=torch.float64)
                                             - torch.tensor(reference["prompt_errors"], dtype=torch.float64))
    return {"difference": difference, "se": se}


@dataclass
class CurveSettings:
    """The fixed recipes of every row (``bench/bench_pretrain.py curve``'s flags of the same names).

    The ``s_0`` head: ``head_lr``, ``head_epochs`` (also evaluated after ``head_also_epochs``), ``s0_batch_size``
    prompts a step, seeds ``seed`` and ``head_seeds``; the ridge probe: ``ridge_alpha``. The recipe head (with the
    all-state features): loss weight ``recipe_boundary_weight`` at ``s_0``, ``recipe_lr`` under
    ``recipe_lr_scheduler_type``, ``recipe_epochs``, ``head_batch_size`` states a step, seeds ``seed`` and
    ``recipe_seeds``. Both heads use AdamW with ``weight_decay``.
    """

    head_lr: float = 3e-5
    head_epochs: int = 30
    head_also_epochs: Sequence[int] = (10, 100)
    head_seeds: Sequence[int] = (0, 1, 2, 3, 4)
    s0_batch_size: int = 16
    ridge_alpha: float = 1e3
    weight_decay: float = 0.0
    seed: int = 0
    recipe_boundary_weight: float = 100.0
    recipe_lr: float = 3e-4
    recipe_epochs: int = 3
    recipe_seeds: Sequence[int] = (0, 1, 2)
    recipe_lr_scheduler_type: str = "linear"
    head_batch_size: int = 1024


@dataclass
class CurveData:
    """What every row is fitted and evaluated on: all training records (``train_records``) and their boundary
    features (``train``, ``s_0`` only), the boundary held-out ``sets``, one ``gamma``; and, for the recipe head,
    the all-state features of the training files the rows need (``train_states``) and the all-state held-out
    ``state_sets`` (the same files), or ``None``."""

    train_records: list[dict]
    train: dict[str, torch.Tensor]
    sets: list[HeldOut]
    gamma: float
    train_states: dict[str, torch.Tensor] | None = None
    state_sets: list[HeldOut] | None = None

    @property
    def recipe(self) -> bool:
        return self.train_states is not None

    @property
    def predictors(self) -> tuple[str, ...]:
        return CURVE_PREDICTORS + ((RECIPE_HEAD, RECIPE_SEED_MEAN) if self.recipe else ())


def _s0_predictors(data: CurveData, prompts: int, samples: int, settings: CurveSettings):
    """The ``s_0`` head (by epoch, by seed), its seed mean and the ridge probe on the row's ``s_0`` rows."""
    part = {key: value[curve_state_mask(data.train, prompts, samples)] for key, value in data.train.items()}
    _, s0_rows, s0_targets = boundary_rows(part)
    s0_hidden = part["hidden"][s0_rows]

    def fit_head(seed, at):
        return {epoch: {s.name: result for s, result in zip(data.sets, results)}
                for epoch, _, results, _ in fit_value_head(
                    s0_hidden, s0_targets, torch.ones(len(s0_targets)), learning_rate=settings.head_lr, epochs=at,
                    batch_size=settings.s0_batch_size, seed=seed, weight_decay=settings.weight_decay,
                    evaluate=lambda head: [s.evaluate_head(head) for s in data.sets])}

    by_epoch = fit_head(settings.seed, sorted({settings.head_epochs, *settings.head_also_epochs}))
    by_seed = {settings.seed: by_epoch[settings.head_epochs]}
    by_seed |= {seed: fit_head(seed, [settings.head_epochs])[settings.head_epochs]
                for seed in settings.head_seeds if seed != settings.seed}
    predict = fit_ridge(s0_hidden, s0_targets, settings.ridge_alpha)
    evaluation = {"s_0 head": by_epoch[settings.head_epochs],
                  SEED_MEAN: {s.name: mean_over_seeds([cells[s.name] for cells in by_seed.values()])
                              for s in data.sets},
                  "ridge probe": {s.name: s.evaluate_values(predict(s.s0_hidden)) for s in data.sets}}
    return evaluation, by_epoch, by_seed


def _baseline_predictors(data: CurveData, row_records: list[dict]) -> dict:
    """The constant (``V`` the constant at every cached state too) and the prompt-length regression (``s_0``
    only) fitted on the row's records; on the all-state sets with the recipe (the ``s_0`` metrics are the same)."""
    sets = data.state_sets if data.recipe else data.sets
    baselines = {s.name: baseline_s0_values(row_records, s, data.gamma) for s in sets}
    constant = {s.name: s.evaluate_values(
        baselines[s.name]["constant baseline"],
        torch.full((len(s.targets),), baselines[s.name]["constant baseline"][0].item()) if data.recipe else None)
        for s in sets}
    regression = {s.name: s.evaluate_values(baselines[s.name]["prompt-length regression"]) for s in sets}
    return {"constant baseline": constant, "prompt-length regression": regression}


def _recipe_predictors(data: CurveData, prompts: int, samples: int, settings: CurveSettings):
    """The item-2 recipe head on every state of the row's records, for each seed; its cells, their seed mean,
    and the row's recipe fields."""
    states = curve_state_mask(data.train_states, prompts, samples)
    hidden, targets, is_s0 = (data.train_states[key][states] for key in ("hidden", "targets", "is_s0"))
    runs = {seed: fit_value_head(
        hidden, targets, state_weights(is_s0, settings.recipe_boundary_weight), learning_rate=settings.recipe_lr,
        epochs=[settings.recipe_epochs], batch_size=settings.head_batch_size, seed=seed,
        weight_decay=settings.weight_decay, lr_scheduler_type=settings.recipe_lr_scheduler_type,
        evaluate=lambda head: [s.evaluate_head(head) for s in data.state_sets])[0]
        for seed in dict.fromkeys([settings.seed, *settings.recipe_seeds])}
    by_seed = {seed: {s.name: cell for s, cell in zip(data.state_sets, run[2])} for seed, run in runs.items()}
    _, loss, _, seconds = runs[settings.seed]
    evaluation = {RECIPE_HEAD: by_seed[settings.seed],
                  RECIPE_SEED_MEAN: {s.name: mean_over_seeds([cells[s.name] for cells in by_seed.values()])
                                     for s in data.state_sets}}
    fields = {"recipe states": int(states.sum()), "recipe train loss": loss, "recipe seconds": seconds,
              "recipe head by seed": {str(seed): cells for seed, cells in by_seed.items()}}
    return evaluation, fields


def evaluate_curve_row(data: CurveData, prompts: int, samples: int, settings: CurveSettings) -> dict:
    """Fit and evaluate every predictor of one row ``prompts x samples``.

    Returns ``{"prompts", "samples", "completions", "censored", "own_gamma" (the row's own
    ``gamma_from_records``), "eval": {predictor: {set name: cell}}, "s_0 head by epoch", "s_0 head by seed",
    "seconds", "paired": {predictor of PAIRED_PREDICTORS: {set name: paired_difference to PAIRED_REFERENCE}}}``,
    plus, with the recipe, ``"recipe states"``, ``"recipe train loss"``, ``"recipe seconds"`` and ``"recipe head
    by seed"``.
    """
    from lenvm_rl.data import gamma_from_records

    start = time.perf_counter()
    record_prompt = torch.tensor([r["prompt_index"] for r in data.train_records])
    record_sample = torch.tensor([r.get("sample_index", 0) for r in data.train_records])
    keep = curve_mask(record_prompt, record_sample, prompts, samples).tolist()
    row_records = [r for r, k in zip(data.train_records, keep) if k]
    evaluation, by_epoch, by_seed = _s0_predictors(data, prompts, samples, settings)
    evaluation |= _baseline_predictors(data, row_records)
    recipe_fields = {}
    if data.recipe:
        recipe_evaluation, recipe_fields = _recipe_predictors(data, prompts, samples, settings)
        evaluation |= recipe_evaluation
    row = {"prompts": prompts, "samples": samples, "completions": len(row_records),
           "censored": sum(r["finish_reason"] == "length" for r in row_records),
           "own_gamma": gamma_from_records(row_records),
           "eval": {name: evaluation[name] for name in data.predictors},
           "s_0 head by epoch": {str(e): v for e, v in by_epoch.items()},
           "s_0 head by seed": {str(seed): v for seed, v in by_seed.items()},
           "seconds": time.perf_counter() - start}
    row["paired"] = {name: {s: paired_difference(cells[s], evaluation[PAIRED_REFERENCE][s]) for s in cells}
                     for name, cells in evaluation.items() if name in PAIRED_PREDICTORS}
    return row | recipe_fields


def curve_slopes(rows: list[dict], set_names: list[str], predictors, target_mre: float) -> tuple[dict, dict]:
    """Per predictor, :func:`fit_slope` over the ``P x 1`` rows on each held-out set (``{name: {set: fit}}``), and
    :func:`prompts_for_target` of ``target_mre`` on the first set (``{name: prompts}``); both empty with fewer than
    2 distinct numbers of prompts in those rows."""
    growing = sorted((r for r in rows if r["samples"] == 1), key=lambda r: r["prompts"])
    slopes, needed = {}, {}
    if len({r["prompts"] for r in growing}) >= 2:
        for name in predictors:
            slopes[name] = {s: fit_slope([r["prompts"] for r in growing],
                                         [r["eval"][name][s]["prompt_mre"] for r in growing]) for s in set_names}
            needed[name] = prompts_for_target(slopes[name][set_names[0]], target_mre)
    return slopes, needed
