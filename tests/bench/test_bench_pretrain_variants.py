"""bench_pretrain.py variants: the command line end to end on a tiny random backbone (the library it calls is tested
in tests/analysis)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from analysis.analysis_fixtures import EVAL, TRAIN, write
from conftest import tiny_backbone

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_pretrain.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_pretrain", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()


def test_variants_table_end_to_end(tmp_path, capsys):
    backbone_dir = tmp_path / "tiny"
    tiny_backbone("llama", vocab_size=128, seed=1).save_pretrained(backbone_dir)
    train = write(tmp_path / "train.jsonl", TRAIN)
    eval_a = write(tmp_path / "eval_a.jsonl", [r for r in EVAL if r["prompt_index"] < 2])
    eval_b = write(tmp_path / "eval_b.jsonl", [r for r in EVAL if r["prompt_index"] == 2])
    output = tmp_path / "variants.json"
    args = bench.parse_args([
        "variants", "--model", str(backbone_dir), "--train-rollouts", str(train), "--eval-rollouts", str(eval_a),
        str(eval_b), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "2", "--chunk-records", "3",
        "--boundary-weights", "1", "10", "--learning-rates", "1e-2", "--epochs", "1", "2", "--s0-epochs", "3",
        "--s0-batch-size", "2", "--head-batch-size", "8", "--ridge-alphas", "1", "--output", str(output)])
    bench.variants(args)
    table = capsys.readouterr().out
    result = json.loads(output.read_text())
    assert [v["name"] for v in result["variants"]] == [
        "head, all states, s_0 weight 1, lr 0.01, 1 ep", "head, all states, s_0 weight 1, lr 0.01, 2 ep",
        "head, all states, s_0 weight 10, lr 0.01, 1 ep", "head, all states, s_0 weight 10, lr 0.01, 2 ep",
        "head, s_0 only, prompt-mean target, lr 0.01, 3 ep", "ridge probe on s_0, prompt-mean target, alpha 1"]
    assert set(result["held_out"]) == {"eval_a.jsonl", "eval_b.jsonl", "all held-out"}
    assert [r["name"] for r in result["references"]] == [
        "constant baseline", "prompt-length regression", "split-half (K/2 vs K/2)",
        "noise floor (oracle vs K samples)"]
    for row in result["variants"]:
        assert all(cell["prompt_mre"] >= 0 for cell in row["eval"].values())
    assert "| constant baseline |" in table and "prompt MRE ± SE, all held-out (3 prompts)" in table


def test_variants_refuses_fractional_epochs():
    args = bench.parse_args(["variants", "--train-rollouts", "unused.jsonl", "--epochs", "1.5"])
    with pytest.raises(SystemExit, match="whole --epochs"):
        bench.variants(args)
