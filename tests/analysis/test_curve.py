"""lenvm_rl.analysis.curve: the records of each prompts x samples row, the slope fit, seed means and paired
differences by hand, and each row's predictors on a tiny random trunk (its baselines agree with
lenvm_rl.evaluation on the same records)."""

from __future__ import annotations

import math

import pytest
import torch
from analysis_fixtures import CURVE_EVAL, SHARDS, tiny_lenvm, write

from lenvm_rl.analysis import (
    CURVE_PREDICTORS,
    PAIRED_REFERENCE,
    RECIPE_HEAD,
    RECIPE_SEED_MEAN,
    SEED_MEAN,
    CurveData,
    CurveSettings,
    concat_features,
    curve_mask,
    curve_slopes,
    curve_state_mask,
    evaluate_curve_row,
    extract_features,
    fit_slope,
    held_out_sets,
    load_features,
    mean_over_seeds,
    paired_difference,
    parse_curve_row,
    prompts_for_target,
    recipe_train_files,
)
from lenvm_rl.data import gamma_from_records, read_rollouts
from lenvm_rl.evaluation import (
    constant_baseline_value,
    evaluate_constant,
    evaluate_prompt_length_baseline,
    prompt_length_baseline,
)


def test_curve_rows_select_the_first_samples_of_the_first_prompts(tmp_path):
    paths = [write(tmp_path / f"shard{i}.jsonl", records) for i, records in enumerate(SHARDS)]
    records = read_rollouts([str(p) for p in paths])
    prompt = torch.tensor([r["prompt_index"] for r in records])
    sample = torch.tensor([r["sample_index"] for r in records])

    def pairs(prompts, samples):
        mask = curve_mask(prompt, sample, prompts, samples)
        return sorted((r["prompt_index"], r["sample_index"]) for r, m in zip(records, mask.tolist()) if m)

    assert pairs(2, 4) == [(p, s) for p in (0, 1) for s in range(4)]
    assert pairs(4, 2) == [(p, s) for p in range(4) for s in range(2)]
    assert pairs(6, 1) == [(p, 0) for p in range(6)]
    assert pairs(2, 1) == [(0, 0), (1, 0)]
    with pytest.raises(ValueError, match=r"missing \(first: prompt_index 2, sample_index 2\)"):
        curve_mask(prompt, sample, 4, 4)  # prompts 2-3 have only 2 samples
    with pytest.raises(ValueError, match="prompt_index 6"):
        curve_mask(prompt, sample, 7, 1)  # no prompt 6 yet (a file still being sampled)
    with pytest.raises(ValueError, match="duplicate"):  # e.g. the cached rows of one file concatenated twice
        curve_mask(torch.cat([prompt, prompt]), torch.cat([sample, sample]), 2, 1)
    assert parse_curve_row("800x2") == (800, 2) and parse_curve_row("3200×1") == (3200, 1)
    with pytest.raises(ValueError, match="PROMPTSxSAMPLES"):
        parse_curve_row("800")
    with pytest.raises(ValueError, match="at least 2 prompts"):
        parse_curve_row("1x8")


def test_slope_per_doubling_and_prompts_for_target():
    prompts = [200, 400, 800, 1600]
    fit = fit_slope(prompts, [0.30 - 0.02 * math.log2(p / 200) for p in prompts])
    assert fit["slope"] == pytest.approx(-0.02) and fit["slope_se"] == pytest.approx(0.0, abs=1e-12)
    assert prompts_for_target(fit, 0.24) == pytest.approx(200 * 2 ** 3)
    assert prompts_for_target(fit_slope([200, 400], [0.3, 0.31]), 0.2) == math.inf
    assert prompts_for_target({"slope": -1e-9, "intercept": 0.3}, 0.2) == math.inf  # 2**1e8 overflows
    assert math.isnan(fit_slope([200, 400], [0.3, 0.28])["slope_se"])
    # by hand: log2 prompts 1, 2, 3 and MREs 0, 1, 1: slope 1/2, intercept -1/3, SE sqrt(1/12)
    assert fit_slope([2, 4, 8], [0.0, 1.0, 1.0]) == pytest.approx(
        {"slope": 0.5, "slope_se": math.sqrt(1 / 12), "intercept": -1 / 3})
    # a saturated head's infinite MRE: no line
    assert all(math.isnan(v) for v in fit_slope([2, 4, 8], [math.inf, 0.3, 0.2]).values())
    with pytest.raises(ValueError, match="distinct"):
        fit_slope([200, 200], [0.3, 0.28])


def cell(mre, errors, positionwise, infinite=0):
    return {"prompt_mre": mre, "prompt_mre_se": 0.1, "s0_value_mse": 0.2, "re_at_0": 0.3, "value_mse": math.nan,
            "num_infinite": infinite, "positionwise_re": positionwise, "prompt_errors": errors}


def test_mean_over_seeds_and_paired_difference_by_hand():
    cells = [cell(0.2, [0.1, 0.3], {"0.0": 1.0}), cell(0.4, [0.5, 0.3], {"0.0": 2.0})]
    mean = mean_over_seeds(cells)
    assert mean["prompt_mre"] == pytest.approx(0.3) and mean["seed_sd"] == pytest.approx(math.sqrt(0.02))
    assert mean["prompt_errors"] == pytest.approx([0.3, 0.3]) and mean["positionwise_re"] == {"0.0": 1.5}
    assert mean["seeds"] == 2 and math.isnan(mean["value_mse"]) and mean["s0_value_mse"] == pytest.approx(0.2)
    assert math.isnan(mean_over_seeds(cells[:1])["seed_sd"])
    # a seed whose head saturates (V = -1 somewhere): an infinite mean, no spread (the bench's seed_mean raised)
    saturated = mean_over_seeds([cell(math.inf, [math.inf, 0.2], {"0.0": 1.0}, infinite=1), cells[1]])
    assert saturated["prompt_mre"] == math.inf and math.isnan(saturated["seed_sd"])
    assert saturated["num_infinite"] == 1 and saturated["prompt_errors"][0] == math.inf
    # paired by prompt: differences 0.4 and 0, mean 0.2, SE = sd / sqrt(2) = 0.2
    paired = paired_difference(cells[1], cells[0] | {"prompt_errors": [0.1, 0.3]})
    assert paired == pytest.approx({"difference": 0.2, "se": 0.2})


def test_curve_state_mask_selects_whole_trajectories(tmp_path):
    model = tiny_lenvm()
    path = write(tmp_path / "shard0.jsonl", SHARDS[0] + SHARDS[1])
    settings = dict(gamma=0.9, model_name="tiny", batch_size=2, chunk_records=3, feature_dtype="float32",
                    progress=False)
    states = load_features(extract_features(lambda: model, path, tmp_path / "c", positions="all", **settings))
    records = read_rollouts(str(path))
    mask = curve_state_mask(states, 4, 2)
    assert len(mask) == len(states["targets"])
    picked = {(int(p), int(s)) for p, s in zip(states["prompt_index"][mask], states["sample_index"][mask])}
    assert picked == {(p, s) for p in range(4) for s in range(2)}
    assert int(mask.sum()) == sum(r["completion_length"] + 1 for r in records
                                  if r["prompt_index"] < 4 and r["sample_index"] < 2)
    with pytest.raises(ValueError, match="missing"):
        curve_state_mask(states, 4, 4)
    # on boundary features (one row per record) it is curve_mask itself
    boundary = load_features(extract_features(lambda: model, path, tmp_path / "c", positions="boundary", **settings))
    assert torch.equal(curve_state_mask(boundary, 2, 4),
                       curve_mask(boundary["prompt_index"], boundary["sample_index"], 2, 4))


def test_recipe_train_files_smallest_row_first(tmp_path):
    paths = [str(write(tmp_path / f"shard{i}.jsonl", records)) for i, records in enumerate(SHARDS)]
    assert recipe_train_files(paths[::-1], [(6, 1), (4, 1), (2, 1)]) == paths
    assert recipe_train_files(paths, [(2, 4), (2, 1)]) == paths[:1]  # no row needs prompts 2-5
    assert recipe_train_files(paths, [(4, 2), (6, 1)]) == paths  # 6 x 1 (6 completions) first needs all


def curve_data(tmp_path, recipe: bool) -> CurveData:
    model = tiny_lenvm()
    paths = [str(write(tmp_path / f"shard{i}.jsonl", records)) for i, records in enumerate(SHARDS)]
    eval_paths = [str(write(tmp_path / "eval_a.jsonl", [r for r in CURVE_EVAL if r["prompt_index"] < 3])),
                  str(write(tmp_path / "eval_b.jsonl", [r for r in CURVE_EVAL if r["prompt_index"] == 4]))]
    train_records = read_rollouts(paths)
    gamma = gamma_from_records(train_records)

    def dirs(files, positions):
        return [extract_features(lambda: model, p, tmp_path / "cache", positions=positions, gamma=gamma,
                                 model_name="tiny", batch_size=2, chunk_records=3, progress=False) for p in files]

    data = CurveData(train_records, concat_features([load_features(d) for d in dirs(paths, "boundary")]),
                     held_out_sets(eval_paths, dirs(eval_paths, "boundary"), False, gamma), gamma)
    if recipe:
        data.train_states = concat_features([load_features(d) for d in dirs(paths, "all")])
        data.state_sets = held_out_sets(eval_paths, dirs(eval_paths, "all"), True, gamma)
    return data


@pytest.mark.parametrize("recipe", [False, True])
def test_curve_rows_agree_with_evaluation(tmp_path, recipe):
    data = curve_data(tmp_path, recipe)
    settings = CurveSettings(head_lr=1e-2, head_epochs=3, head_also_epochs=[1], head_seeds=[0, 1], s0_batch_size=2,
                             ridge_alpha=1.0, recipe_lr=1e-2, recipe_epochs=2, recipe_seeds=[0, 1], head_batch_size=8)
    rows = [evaluate_curve_row(data, p, k, settings) for p, k in [(2, 4), (4, 2), (6, 1), (2, 1), (4, 1)]]
    eval_records = data.sets[0].records
    all_train = [r for records in SHARDS for r in records]
    for row in rows:
        train = [r for r in all_train if r["prompt_index"] < row["prompts"] and r["sample_index"] < row["samples"]]
        assert row["completions"] == len(train) and list(row["eval"]) == list(data.predictors)
        value = constant_baseline_value(train, data.gamma)
        expected = evaluate_constant(value, eval_records, data.gamma)
        constant = row["eval"]["constant baseline"]["eval_a.jsonl"]
        assert constant["prompt_mre"] == pytest.approx(expected.prompt_mre, abs=1e-6)
        assert constant["re_at_0"] == pytest.approx(expected.positionwise_re[0.0], abs=1e-6)
        if recipe:  # the constant at every state: evaluate_constant's value MSE
            assert constant["value_mse"] == pytest.approx(expected.value_mse, rel=1e-5)
            assert row["recipe states"] == sum(r["completion_length"] + 1 for r in train)
            assert set(row["recipe head by seed"]) == {"0", "1"}
            assert row["eval"][RECIPE_HEAD] == row["recipe head by seed"]["0"]
        regression = evaluate_prompt_length_baseline(prompt_length_baseline(train, data.gamma), eval_records)
        assert row["eval"]["prompt-length regression"]["eval_a.jsonl"]["prompt_mre"] == pytest.approx(
            regression.prompt_mre, abs=1e-5)
        assert set(row["s_0 head by epoch"]) == {"1", "3"}
        assert row["eval"]["s_0 head"] == row["s_0 head by epoch"]["3"] == row["s_0 head by seed"]["0"]
        seeds = [row["s_0 head by seed"][k]["all held-out"]["prompt_mre"] for k in ("0", "1")]
        assert row["eval"][SEED_MEAN]["all held-out"]["prompt_mre"] == pytest.approx(sum(seeds) / 2)
        # censored training targets (-1) never make a line or probe predict an infinite length
        assert row["eval"]["prompt-length regression"]["all held-out"]["num_infinite"] == 0
        assert row["eval"]["ridge probe"]["all held-out"]["num_infinite"] == 0
        assert set(row["paired"]) == {SEED_MEAN, "ridge probe"} | ({RECIPE_SEED_MEAN} if recipe else set())
        assert row["paired"]["ridge probe"]["eval_a.jsonl"] == paired_difference(
            row["eval"]["ridge probe"]["eval_a.jsonl"], row["eval"][PAIRED_REFERENCE]["eval_a.jsonl"])
    # the slopes come from the P x 1 rows only: 2, 4 and 6 prompts
    names = [s.name for s in data.sets]
    slopes, needed = curve_slopes(rows, names, CURVE_PREDICTORS, 0.2)
    growing = sorted((r for r in rows if r["samples"] == 1), key=lambda r: r["prompts"])
    fit = fit_slope([2, 4, 6], [r["eval"]["ridge probe"]["eval_a.jsonl"]["prompt_mre"] for r in growing])
    assert slopes["ridge probe"]["eval_a.jsonl"] == fit and set(slopes["ridge probe"]) == set(names)
    assert needed["ridge probe"] == prompts_for_target(fit, 0.2)
    assert curve_slopes(rows[:2], names, CURVE_PREDICTORS, 0.2) == ({}, {})  # no P x 1 rows
