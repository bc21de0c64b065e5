"""bench_pretrain.py curve: the command line end to end on a tiny random backbone: extraction order and resuming,
the JSON, the tables and the plot (the library it calls is tested in tests/analysis)."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from analysis.analysis_fixtures import CURVE_EVAL as EVAL
from analysis.analysis_fixtures import SHARDS, shard, write
from conftest import tiny_backbone
from test_bench_pretrain_variants import bench

from lenvm_rl.analysis import (
    CURVE_PREDICTORS,
    RECIPE_HEAD,
    RECIPE_SEED_MEAN,
    HeldOut,
    concat_features,
    curve_state_mask,
    fit_slope,
    fit_value_head,
    load_features,
    parse_curve_row,
    recipe_train_files,
    state_weights,
)
from lenvm_rl.data import gamma_from_records, read_rollouts
from lenvm_rl.evaluation import constant_baseline_value, evaluate_constant


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
        "--head-also-epochs", "1", "--head-seeds", "0", "1", "--s0-batch-size", "2", "--ridge-alpha", "1",
        "--target-mre", "0.2", "--output", str(output), "--plot", str(plot)])
    bench.curve(args)
    table = capsys.readouterr().out
    result = json.loads(output.read_text())
    gamma = result["gamma"]
    assert gamma == pytest.approx(gamma_from_records(read_rollouts(paths)))  # one gamma: all training rollouts
    assert [(r["prompts"], r["samples"], r["completions"]) for r in result["rows"]] == [
        (2, 4, 8), (4, 2, 8), (6, 1, 6), (2, 1, 2), (4, 1, 4)]
    assert result["table_sets"] == ["eval_a.jsonl", "all held-out"]
    assert result["recipes"]["s_0 head"]["seeds"] == [0, 1] and result["fixed_completions"] == 8
    eval_records = read_rollouts(str(eval_a))
    all_train = [r for records in SHARDS for r in records]
    for row in result["rows"]:  # each row's baselines are fitted on that row's records
        train = [r for r in all_train if r["prompt_index"] < row["prompts"] and r["sample_index"] < row["samples"]]
        expected = evaluate_constant(constant_baseline_value(train, gamma), eval_records, gamma)
        assert row["eval"]["constant baseline"]["eval_a.jsonl"]["prompt_mre"] == pytest.approx(expected.prompt_mre,
                                                                                               abs=1e-6)
        assert list(row["eval"]) == list(CURVE_PREDICTORS)
    # the slopes come from the P x 1 rows only: 2, 4 and 6 prompts
    growing = sorted((r for r in result["rows"] if r["samples"] == 1), key=lambda r: r["prompts"])
    mres = [r["eval"]["ridge probe"]["eval_a.jsonl"]["prompt_mre"] for r in growing]
    assert result["slopes"]["ridge probe"]["eval_a.jsonl"]["slope"] == pytest.approx(
        fit_slope([2, 4, 6], mres)["slope"])
    assert "| 4 × 2 | 8 |" in table and "not measured: RE at 25/50/75 %" in table
    assert "slope per doubling of P x 1 prompts, ridge probe" in table and "target 20.0 % on eval_a.jsonl" in table
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    assert result["recipes"][RECIPE_HEAD]["boundary_weight"] == 100.0
    fractions = ["0.0", "0.25", "0.5", "0.75"]
    eval_records = read_rollouts(str(eval_a))
    all_train = [r for records in SHARDS for r in records]
    for row in result["rows"]:
        train = [r for r in all_train if r["prompt_index"] < row["prompts"] and r["sample_index"] < row["samples"]]
        assert row["recipe states"] == sum(r["completion_length"] + 1 for r in train)
        for cell in row["eval"][RECIPE_HEAD].values():
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
    assert RECIPE_HEAD in result["slopes"]

    # the 4 x 2 row's head is the recipe fitted on that row's states only (files in recipe_train_files order)
    order = recipe_train_files(paths[::-1], [parse_curve_row(r) for r in rows])
    states = concat_features([load_features(cache / f"{p.split('/')[-1]}.all") for p in order])
    keep = curve_state_mask(states, 4, 2)
    held_out = HeldOut("eval_a.jsonl", eval_records, load_features(cache / "eval_a.jsonl.all"), True,
                             gamma)
    fit = functools.partial(
        fit_value_head, states["hidden"][keep], states["targets"][keep],
        state_weights(states["is_s0"][keep], 100), learning_rate=1e-2, epochs=[2], batch_size=8, seed=0,
        evaluate=held_out.evaluate_head)
    [(_, loss, cell, _)] = fit(lr_scheduler_type="linear")  # the curve's default, LenVMConfig's schedule
    [(_, constant_loss, _, _)] = fit(lr_scheduler_type="constant")
    row = next(r for r in result["rows"] if (r["prompts"], r["samples"]) == (4, 2))
    assert row["recipe train loss"] == pytest.approx(loss, rel=1e-6)
    assert row["recipe train loss"] != pytest.approx(constant_loss, rel=1e-6)
    # paired by prompt against the prompt-length line: the difference of the MREs, with the SE of the paired mean
    for name in (RECIPE_SEED_MEAN, "ridge probe"):
        other, line = row["eval"][name]["eval_a.jsonl"], row["eval"]["prompt-length regression"]["eval_a.jsonl"]
        differences = torch.tensor(other["prompt_errors"]) - torch.tensor(line["prompt_errors"])
        paired = row["paired"][name]["eval_a.jsonl"]
        assert paired["difference"] == pytest.approx(other["prompt_mre"] - line["prompt_mre"], abs=1e-6)
        assert paired["se"] == pytest.approx((differences.std() / len(differences) ** 0.5).item(), rel=1e-4)
    assert "paired by prompt: prompt MRE minus that of the prompt-length regression" in table
    by_seed = row["recipe head by seed"]  # --recipe-seeds 0 1 2 (the default): seed 0 is the run above
    assert set(by_seed) == {"0", "1", "2"} and by_seed["0"] == row["eval"][RECIPE_HEAD]
    mean = row["eval"][RECIPE_SEED_MEAN]["eval_a.jsonl"]
    for key in ("prompt_mre", "value_mse"):
        assert mean[key] == pytest.approx(sum(cells["eval_a.jsonl"][key] for cells in by_seed.values()) / 3)
    assert mean["positionwise_re"]["0.5"] == pytest.approx(
        sum(cells["eval_a.jsonl"]["positionwise_re"]["0.5"] for cells in by_seed.values()) / 3)
    assert result["recipes"][RECIPE_HEAD]["lr_scheduler_type"] == "linear"
    assert row["eval"][RECIPE_HEAD]["eval_a.jsonl"]["prompt_mre"] == pytest.approx(cell["prompt_mre"], rel=1e-6)
    assert row["eval"][RECIPE_HEAD]["eval_a.jsonl"]["positionwise_re"] == pytest.approx(
        cell["positionwise_re"], rel=1e-6)
    assert f"| {RECIPE_HEAD}: prompt MRE | {RECIPE_HEAD}: RE at 0/25/50/75 % |" in table
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
