"""bench_pretrain.py curve: the records of each prompts x samples row, the slope fit, and the curve end to end on a
tiny random backbone (its baselines agree with lenvm_rl.evaluation on the same records)."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from conftest import tiny_backbone
from test_bench_pretrain_variants import bench, make_records, write

from lenvm_rl.core import length_to_value
from lenvm_rl.data import read_rollouts
from lenvm_rl.evaluation import (
    constant_baseline_value,
    evaluate_constant,
    evaluate_prompt_length_baseline,
    prompt_length_baseline,
)

PROMPTS = [[5, 17, 99], [42, 7], [1, 64, 3, 120, 9], [8, 8, 8, 8], [3, 4], [77, 66, 55, 44, 33, 22]]


def shard(prompt_indices, lengths, seed):
    """Records of ``prompt_indices`` (their ``PROMPTS`` entry), as ``make_records`` but with the real indices."""
    records = make_records([PROMPTS[i] for i in prompt_indices], lengths, seed=seed)
    for record in records:
        record["prompt_index"] = prompt_indices[record["prompt_index"]]
    return records


# like the GSM8K files: prompts 0-1 x 4, prompts 2-3 x 2, prompts 4-5 x 1, each in its own file
SHARDS = [shard([0, 1], [[4, 7, -12, 3], [2, 9, 5, 6]], 0), shard([2, 3], [[5, 3], [11, -12]], 1),
          shard([4, 5], [[6], [2]], 2)]
EVAL = shard([0, 2, 4], [[6, 3], [-12, 8, 1], [4, 10]], 3)


def test_curve_rows_select_the_first_samples_of_the_first_prompts(tmp_path):
    paths = [write(tmp_path / f"shard{i}.jsonl", records) for i, records in enumerate(SHARDS)]
    records = read_rollouts([str(p) for p in paths])
    prompt = torch.tensor([r["prompt_index"] for r in records])
    sample = torch.tensor([r["sample_index"] for r in records])

    def pairs(prompts, samples):
        mask = bench.curve_mask(prompt, sample, prompts, samples)
        return sorted((r["prompt_index"], r["sample_index"]) for r, m in zip(records, mask.tolist()) if m)

    assert pairs(2, 4) == [(p, s) for p in (0, 1) for s in range(4)]
    assert pairs(4, 2) == [(p, s) for p in range(4) for s in range(2)]
    assert pairs(6, 1) == [(p, 0) for p in range(6)]
    assert pairs(2, 1) == [(0, 0), (1, 0)]
    with pytest.raises(ValueError, match=r"missing \(first: prompt_index 2, sample_index 2\)"):
        bench.curve_mask(prompt, sample, 4, 4)  # prompts 2-3 have only 2 samples
    with pytest.raises(ValueError, match="prompt_index 6"):
        bench.curve_mask(prompt, sample, 7, 1)  # no prompt 6 yet (a file still being sampled)
    with pytest.raises(ValueError, match="duplicate"):  # e.g. the cached rows of one file concatenated twice
        bench.curve_mask(torch.cat([prompt, prompt]), torch.cat([sample, sample]), 2, 1)
    assert bench.parse_curve_row("800x2") == (800, 2) and bench.parse_curve_row("3200×1") == (3200, 1)
    with pytest.raises(ValueError, match="PROMPTSxSAMPLES"):
        bench.parse_curve_row("800")


def test_slope_per_doubling_and_prompts_for_target():
    prompts = [200, 400, 800, 1600]
    fit = bench.fit_slope(prompts, [0.30 - 0.02 * math.log2(p / 200) for p in prompts])
    assert fit["slope"] == pytest.approx(-0.02) and fit["slope_se"] == pytest.approx(0.0, abs=1e-12)
    assert bench.prompts_for_target(fit, 0.24) == pytest.approx(200 * 2 ** 3)
    assert bench.prompts_for_target(bench.fit_slope([200, 400], [0.3, 0.31]), 0.2) == math.inf
    assert bench.prompts_for_target({"slope": -1e-9, "intercept": 0.3}, 0.2) == math.inf  # 2**1e8 overflows
    assert math.isnan(bench.fit_slope([200, 400], [0.3, 0.28])["slope_se"])
    with pytest.raises(ValueError, match="distinct"):
        bench.fit_slope([200, 200], [0.3, 0.28])


def test_curve_end_to_end(tmp_path, capsys):
    backbone_dir = tmp_path / "tiny"
    tiny_backbone("llama", vocab_size=128, seed=1).save_pretrained(backbone_dir)
    paths = [str(write(tmp_path / f"shard{i}.jsonl", records)) for i, records in enumerate(SHARDS)]
    eval_a = write(tmp_path / "eval_a.jsonl", [r for r in EVAL if r["prompt_index"] < 3])
    eval_b = write(tmp_path / "eval_b.jsonl", [r for r in EVAL if r["prompt_index"] == 4])
    output, plot = tmp_path / "curve.json", tmp_path / "docs" / "curve.png"
    args = bench.parse_args([
        "curve", "--model", str(backbone_dir), "--train-rollouts", *paths, "--eval-rollouts", str(eval_a),
        str(eval_b), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "2", "--chunk-records", "3",
        "--rows", "2x4", "4x2", "6x1", "2x1", "4x1", "--head-lr", "1e-2", "--head-epochs", "3",
        "--head-also-epochs", "1", "--head-seeds", "0", "1", "--s0-batch-size", "2", "--ridge-alpha", "1", "--target-mre", "0.2",
        "--output", str(output), "--plot", str(plot)])
    bench.curve(args)
    table = capsys.readouterr().out
    result = json.loads(output.read_text())
    gamma = result["gamma"]
    assert [(r["prompts"], r["samples"], r["completions"]) for r in result["rows"]] == [
        (2, 4, 8), (4, 2, 8), (6, 1, 6), (2, 1, 2), (4, 1, 4)]
    assert result["table_sets"] == ["eval_a.jsonl", "all held-out"]
    eval_records = read_rollouts(str(eval_a))
    all_train = [r for records in SHARDS for r in records]
    for row in result["rows"]:
        train = [r for r in all_train if r["prompt_index"] < row["prompts"] and r["sample_index"] < row["samples"]]
        constant = row["eval"]["constant baseline"]["eval_a.jsonl"]
        value = constant_baseline_value(train, gamma)
        expected = evaluate_constant(value, eval_records, gamma)
        assert constant["prompt_mre"] == pytest.approx(expected.prompt_mre, abs=1e-6)
        assert constant["re_at_0"] == pytest.approx(expected.positionwise_re[0.0], abs=1e-6)
        ended = torch.tensor([r["completion_length"] for r in eval_records if r["finish_reason"] == "eos"])
        assert constant["s0_value_mse"] == pytest.approx(
            torch.mean((value - length_to_value(ended, gamma)) ** 2).item(), rel=1e-5)
        regression = evaluate_prompt_length_baseline(prompt_length_baseline(train, gamma), eval_records)
        assert row["eval"]["prompt-length regression"]["eval_a.jsonl"]["prompt_mre"] == pytest.approx(
            regression.prompt_mre, abs=1e-5)
        assert set(row["s_0 head by epoch"]) == {"1", "3"}
        assert row["eval"]["s_0 head"] == row["s_0 head by epoch"]["3"] == row["s_0 head by seed"]["0"]
        seeds = [row["s_0 head by seed"][k]["all held-out"]["prompt_mre"] for k in ("0", "1")]
        mean = row["eval"][bench.SEED_MEAN]["all held-out"]
        assert mean["prompt_mre"] == pytest.approx(sum(seeds) / 2) and mean["seeds"] == 2
        # censored training targets (-1) never make a line or probe predict an infinite length
        assert row["eval"]["prompt-length regression"]["all held-out"]["num_infinite"] == 0
        assert row["eval"]["ridge probe"]["all held-out"]["num_infinite"] == 0
        for predictor in bench.CURVE_PREDICTORS:
            assert all(cell["prompt_mre"] >= 0 for cell in row["eval"][predictor].values())
    # the slopes come from the P x 1 rows only: 2, 4 and 6 prompts
    growing = [r for r in result["rows"] if r["samples"] == 1]
    mres = [r["eval"]["ridge probe"]["eval_a.jsonl"]["prompt_mre"] for r in sorted(growing, key=lambda r: r["prompts"])]
    assert result["slopes"]["ridge probe"]["eval_a.jsonl"]["slope"] == pytest.approx(
        bench.fit_slope([2, 4, 6], mres)["slope"])
    assert "| 4 × 2 | 8 |" in table and "not measured: RE at 25/50/75 %" in table
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ridge_clamps_above_the_censored_target():
    hidden = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    targets = torch.tensor([-0.2, -0.5, -0.9, -1.0])  # the last: a censored completion (infinite length)
    predict = bench.fit_ridge(hidden, targets, 0.0)
    values = predict(torch.tensor([[-10.0], [1.0], [10.0]]))
    assert values[0] == pytest.approx(-0.2) and values[2] == pytest.approx(-0.9)  # the finite targets' range
    assert -0.9 < values[1] < -0.2


def test_curve_state_mask_selects_whole_trajectories(tmp_path):
    from lenvm_rl import LenVM

    model = LenVM(tiny_backbone("llama", vocab_size=128, seed=1), gamma=0.9).eval()
    path = write(tmp_path / "shard0.jsonl", SHARDS[0] + SHARDS[1])
    settings = dict(gamma=0.9, model_name="tiny", batch_size=2, chunk_records=3, feature_dtype="float32",
                    progress=False)
    states = bench.load_features(bench.extract_features(lambda: model, path, tmp_path / "c", positions="all",
                                                        **settings))
    records = read_rollouts(str(path))
    block, step = bench.record_steps(states)
    for b in range(int(block.max()) + 1):  # one block per record, its states s_0 .. s_L in order
        rows = block == b
        assert len(states["record"][rows].unique()) == 1 and bool(states["is_s0"][rows][0])
        record = records[int(states["record"][rows][0])]
        assert step[rows].tolist() == list(range(record["completion_length"] + 1))
    mask = bench.curve_state_mask(states, 4, 2)
    assert len(mask) == len(states["targets"])
    picked = {(int(p), int(s)) for p, s in zip(states["prompt_index"][mask], states["sample_index"][mask])}
    assert picked == {(p, s) for p in range(4) for s in range(2)}
    assert int(mask.sum()) == sum(r["completion_length"] + 1 for r in records
                                  if r["prompt_index"] < 4 and r["sample_index"] < 2)
    with pytest.raises(ValueError, match="missing"):
        bench.curve_state_mask(states, 4, 4)
    # on boundary features (one row per record) it is curve_mask itself
    boundary = bench.load_features(bench.extract_features(lambda: model, path, tmp_path / "c", positions="boundary",
                                                          **settings))
    assert torch.equal(bench.curve_state_mask(boundary, 2, 4),
                       bench.curve_mask(boundary["prompt_index"], boundary["sample_index"], 2, 4))


def test_recipe_train_files_smallest_row_first(tmp_path):
    paths = [str(write(tmp_path / f"shard{i}.jsonl", records)) for i, records in enumerate(SHARDS)]
    assert bench.recipe_train_files(paths[::-1], [(6, 1), (4, 1), (2, 1)]) == paths
    assert bench.recipe_train_files(paths, [(2, 4), (2, 1)]) == paths[:1]  # no row needs prompts 2-5
    assert bench.recipe_train_files(paths, [(4, 2), (6, 1)]) == paths  # 6 x 1 (6 completions) first needs all


def test_curve_recipe_head_on_all_states(tmp_path, capsys, monkeypatch):
    backbone_dir = tmp_path / "tiny"
    tiny_backbone("llama", vocab_size=128, seed=1).save_pretrained(backbone_dir)
    paths = [str(write(tmp_path / f"shard{i}.jsonl", records)) for i, records in enumerate(SHARDS)]
    eval_a = write(tmp_path / "eval_a.jsonl", [r for r in EVAL if r["prompt_index"] < 3])
    eval_b = write(tmp_path / "eval_b.jsonl", [r for r in EVAL if r["prompt_index"] == 4])
    cache, output = tmp_path / "cache", tmp_path / "curve.json"
    extracted = []
    original = bench.extract_features

    def recording(load_model, path, root, *, positions, **kw):
        extracted.append((positions, path.split("/")[-1]))
        return original(load_model, path, root, positions=positions, **kw)

    monkeypatch.setattr(bench, "extract_features", recording)
    common = ["curve", "--model", str(backbone_dir), "--train-rollouts", *paths[::-1], "--eval-rollouts",
              str(eval_a), str(eval_b), "--cache-dir", str(cache), "--batch-size", "2", "--chunk-records", "3",
              "--recipe-positions", "all"]
    # extraction only, for one row: the held-out files first, then only the training file that row needs
    bench.curve(bench.parse_args(common + ["--rows", "2x4", "--extract-only"]))
    assert [name for positions, name in extracted if positions == "all"] == [
        "eval_a.jsonl", "eval_b.jsonl", "shard0.jsonl"]
    assert not (cache / "shard1.jsonl.all").exists() and (cache / "shard1.jsonl.boundary").is_dir()

    extracted.clear()
    rows = ["2x4", "4x2", "6x1", "2x1", "4x1"]
    args = bench.parse_args(common + [
        "--rows", *rows, "--head-lr", "1e-2", "--head-epochs", "2", "--head-also-epochs", "--head-seeds", "0",
        "--s0-batch-size", "2", "--ridge-alpha", "1", "--recipe-lr", "1e-2", "--recipe-epochs", "2",
        "--head-batch-size", "8", "--output", str(output)])
    bench.curve(args)
    table = capsys.readouterr().out
    assert [name for positions, name in extracted if positions == "all"] == [
        "eval_a.jsonl", "eval_b.jsonl", "shard0.jsonl", "shard1.jsonl", "shard2.jsonl"]
    result = json.loads(output.read_text())
    gamma = result["gamma"]
    assert result["recipes"][bench.RECIPE_HEAD]["boundary_weight"] == 100.0
    fractions = ["0.0", "0.25", "0.5", "0.75"]
    eval_records = read_rollouts(str(eval_a))
    all_train = [r for records in SHARDS for r in records]
    for row in result["rows"]:
        train = [r for r in all_train if r["prompt_index"] < row["prompts"] and r["sample_index"] < row["samples"]]
        assert row["recipe states"] == sum(r["completion_length"] + 1 for r in train)
        for cell in row["eval"][bench.RECIPE_HEAD].values():
            assert math.isfinite(cell["prompt_mre"]) and math.isfinite(cell["value_mse"])
            assert list(cell["positionwise_re"]) == fractions
            assert all(math.isfinite(e) for e in cell["positionwise_re"].values())
        # the constant is V at every state: evaluate_constant's RE and value MSE
        expected = evaluate_constant(constant_baseline_value(train, gamma), eval_records, gamma)
        constant = row["eval"]["constant baseline"]["eval_a.jsonl"]
        assert constant["prompt_mre"] == pytest.approx(expected.prompt_mre, abs=1e-6)
        assert constant["value_mse"] == pytest.approx(expected.value_mse, rel=1e-5)
        assert constant["positionwise_re"] == pytest.approx(
            {str(f): e for f, e in expected.positionwise_re.items()}, rel=1e-5)
        regression = row["eval"]["prompt-length regression"]["all held-out"]  # s_0 only
        assert math.isfinite(regression["re_at_0"]) and math.isnan(regression["value_mse"])
        assert all(math.isnan(regression["positionwise_re"][f]) for f in fractions[1:])
    assert bench.RECIPE_HEAD in result["slopes"]

    # the 4 x 2 row's head is the recipe fitted on that row's states only (files in recipe_train_files order)
    order = bench.recipe_train_files(paths[::-1], [bench.parse_curve_row(r) for r in rows])
    states = bench._concat_features([bench.load_features(cache / f"{p.split('/')[-1]}.all") for p in order])
    keep = bench.curve_state_mask(states, 4, 2)
    held_out = bench.HeldOut("eval_a.jsonl", eval_records, bench.load_features(cache / "eval_a.jsonl.all"), True,
                             gamma)
    fit = functools.partial(
        bench.fit_value_head, states["hidden"][keep], states["targets"][keep],
        bench.state_weights(states["is_s0"][keep], 100), learning_rate=1e-2, epochs=[2], batch_size=8, seed=0,
        evaluate=held_out.evaluate_head)
    [(_, loss, cell, _)] = fit(lr_scheduler_type="linear")  # the curve's default, LenVMConfig's schedule
    [(_, constant_loss, _, _)] = fit(lr_scheduler_type="constant")
    row = next(r for r in result["rows"] if (r["prompts"], r["samples"]) == (4, 2))
    assert row["recipe train loss"] == pytest.approx(loss, rel=1e-6)
    assert row["recipe train loss"] != pytest.approx(constant_loss, rel=1e-6)
    # paired by prompt against the prompt-length line: the difference of the MREs, with the SE of the paired mean
    for name in (bench.RECIPE_SEED_MEAN, "ridge probe"):
        other, line = row["eval"][name]["eval_a.jsonl"], row["eval"]["prompt-length regression"]["eval_a.jsonl"]
        differences = torch.tensor(other["prompt_errors"]) - torch.tensor(line["prompt_errors"])
        paired = row["paired"][name]["eval_a.jsonl"]
        assert paired["difference"] == pytest.approx(other["prompt_mre"] - line["prompt_mre"], abs=1e-6)
        assert paired["se"] == pytest.approx((differences.std() / len(differences) ** 0.5).item(), rel=1e-4)
    assert "paired by prompt: prompt MRE minus that of the prompt-length regression" in table
    by_seed = row["recipe head by seed"]  # --recipe-seeds 0 1 2 (the default): seed 0 is the run above
    assert set(by_seed) == {"0", "1", "2"} and by_seed["0"] == row["eval"][bench.RECIPE_HEAD]
    mean = row["eval"][bench.RECIPE_SEED_MEAN]["eval_a.jsonl"]
    for key in ("prompt_mre", "value_mse"):
        assert mean[key] == pytest.approx(sum(cells["eval_a.jsonl"][key] for cells in by_seed.values()) / 3)
    assert mean["positionwise_re"]["0.5"] == pytest.approx(
        sum(cells["eval_a.jsonl"]["positionwise_re"]["0.5"] for cells in by_seed.values()) / 3)
    assert result["recipes"][bench.RECIPE_HEAD]["lr_scheduler_type"] == "linear"
    assert row["eval"][bench.RECIPE_HEAD]["eval_a.jsonl"]["prompt_mre"] == pytest.approx(cell["prompt_mre"], rel=1e-6)
    assert row["eval"][bench.RECIPE_HEAD]["eval_a.jsonl"]["positionwise_re"] == pytest.approx(
        cell["positionwise_re"], rel=1e-6)
    assert f"| {bench.RECIPE_HEAD}: prompt MRE | {bench.RECIPE_HEAD}: RE at 0/25/50/75 % |" in table
    recipe_lines = [line for line in table.splitlines() if line.startswith("| 4 × 2 | 8 |")]
    assert len(recipe_lines) == 2 and recipe_lines[1].count(" / — / — / — |") == 1  # the regression: s_0 only
    assert "not measured: RE at 25/50/75 % of the trajectory of the s_0 head" in table


def test_curve_gamma_keeps_the_caches_of_a_shorter_file_list(tmp_path):
    backbone_dir = tmp_path / "tiny"
    tiny_backbone("llama", vocab_size=128, seed=1).save_pretrained(backbone_dir)
    paths = [str(write(tmp_path / f"shard{i}.jsonl", records)) for i, records in enumerate(SHARDS[:2])]
    late = shard([4, 5], [[40], [2]], 4)  # prompts 4-5 sampled later; a 40-token completion moves L99, so gamma
    paths.append(str(write(tmp_path / "late.jsonl", late)))
    cache = tmp_path / "cache"
    common = ["curve", "--model", str(backbone_dir), "--cache-dir", str(cache), "--batch-size", "2",
              "--chunk-records", "3", "--extract-only"]
    bench.curve(bench.parse_args(common + ["--train-rollouts", *paths[:2]]))
    meta = json.loads((cache / "shard0.jsonl.boundary" / "meta.json").read_text())
    chunks = {p: p.read_bytes() for p in sorted(cache.glob("shard[01].jsonl.boundary/*.safetensors"))}
    with pytest.raises(ValueError, match="written for other settings.*gamma"):
        bench.curve(bench.parse_args(common + ["--train-rollouts", *paths]))  # all files: another gamma
    bench.curve(bench.parse_args(common + ["--train-rollouts", *paths, "--gamma", str(meta["gamma"])]))
    assert json.loads((cache / "late.jsonl.boundary" / "meta.json").read_text())["gamma"] == meta["gamma"]
    assert {p: p.read_bytes() for p in chunks} == chunks  # the first files' features were reused, not rewritten
    with pytest.raises(SystemExit):
        bench.parse_args(common + ["--train-rollouts", *paths, "--gamma", "1"])
