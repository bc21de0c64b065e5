"""bench_pretrain.py variants: cached trunk states + a head reproduce LenVM.forward, resume skips done chunks,
and the variant table runs end to end on a tiny random backbone."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone
from safetensors.torch import load_file

from lenvm_rl import LenVM
from lenvm_rl.core import monte_carlo_targets
from lenvm_rl.evaluation import evaluate_lenvm

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_pretrain.py"
GAMMA = 0.9
EOS = 2


def _bench():
    spec = importlib.util.spec_from_file_location("bench_pretrain", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()


def make_records(prompts, lengths, seed=0):
    """One record per (prompt, length); a negative length is a completion cut at |length| tokens."""
    rng = random.Random(seed)
    records = []
    for prompt_index, (prompt_ids, sample_lengths) in enumerate(zip(prompts, lengths)):
        for sample_index, length in enumerate(sample_lengths):
            cut = length < 0
            completion = [rng.randrange(3, 128) for _ in range(abs(length))]
            if not cut:
                completion[-1] = EOS
            records.append({"prompt_index": prompt_index, "sample_index": sample_index,
                            "prompt": [{"role": "user", "content": str(prompt_index)}],
                            "prompt_ids": list(prompt_ids), "completion_ids": completion,
                            "completion_length": abs(length), "finish_reason": "length" if cut else "eos",
                            "sampler": {"max_new_tokens": 12}})
    return records


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


PROMPTS = [[5, 17, 99], [42, 7], [1, 64, 3, 120, 9]]
TRAIN = make_records(PROMPTS, [[4, 7, -12], [2, 9], [5, 3, 11]], seed=0)
EVAL = make_records(PROMPTS, [[6, 3], [-12, 8, 1], [4, 10]], seed=1)


@pytest.fixture(scope="module")
def model():
    return LenVM(tiny_backbone("llama", vocab_size=128, seed=1), gamma=GAMMA).eval()


def extract(model, path, root, positions, **kw):
    settings = dict(positions=positions, gamma=GAMMA, model_name="tiny", batch_size=2, chunk_records=2,
                    feature_dtype="float32", progress=False)
    return bench.extract_features(lambda: model, path, root, **{**settings, **kw})


def test_cached_states_and_head_reproduce_forward(model, tmp_path):
    path = write(tmp_path / "train.jsonl", TRAIN)
    features = bench.load_features(extract(model, path, tmp_path / "cache", "all"))
    scored = model.score([r["prompt_ids"] + r["completion_ids"] for r in TRAIN])
    values = bench.head_values(model.v_head, features["hidden"])
    for i, record in enumerate(TRAIN):
        rows = features["record"] == i
        p, n = len(record["prompt_ids"]), record["completion_length"]
        torch.testing.assert_close(values[rows], scored[i].values[p - 1:p + n], rtol=0, atol=1e-6)
        targets, mask = monte_carlo_targets(torch.ones(1, p + n), torch.tensor([p]), torch.tensor([n]),
                                            torch.tensor([record["finish_reason"] == "eos"]), GAMMA,
                                            censored="infinite")
        torch.testing.assert_close(features["targets"][rows], targets[mask])
        assert features["is_s0"][rows].tolist() == [True] + [False] * n
        assert set(features["prompt_index"][rows].tolist()) == {record["prompt_index"]}
    # boundary mode runs the prompt alone: the same V(s_0) as the full sequence
    boundary = bench.load_features(extract(model, path, tmp_path / "cache", "boundary"))
    assert bool(boundary["is_s0"].all()) and len(boundary["targets"]) == len(TRAIN)
    for i, record in enumerate(TRAIN):
        row = boundary["record"] == i
        p = len(record["prompt_ids"])
        torch.testing.assert_close(bench.head_values(model.v_head, boundary["hidden"][row]),
                                   scored[i].values[p - 1:p], rtol=0, atol=1e-6)


@pytest.mark.parametrize("positions", ["all", "boundary"])
def test_held_out_metrics_match_evaluate_lenvm(model, tmp_path, positions):
    path = write(tmp_path / "eval.jsonl", EVAL)
    features = bench.load_features(extract(model, path, tmp_path / "cache", positions))
    held_out = bench.HeldOut("eval", EVAL, features, positions == "all", GAMMA)
    got = held_out.evaluate_head(model.v_head)
    expected = evaluate_lenvm(model, EVAL)
    assert got["prompt_mre"] == pytest.approx(expected.prompt_mre, abs=1e-5)
    assert got["prompt_mre_se"] == pytest.approx(expected.prompt_mre_se, abs=1e-5)
    if positions == "all":
        assert got["value_mse"] == pytest.approx(expected.value_mse, rel=1e-5)
        # RE at 0/25/50/75 % of the trajectory from each completion's own cached states
        assert got["positionwise_re"] == pytest.approx({str(f): e for f, e in expected.positionwise_re.items()},
                                                       rel=1e-5)
    else:
        assert got["value_mse"] != got["value_mse"]  # NaN: no states beyond s_0 were cached
        assert all(e != e for e in got["positionwise_re"].values())
    assert got["re_at_0"] == pytest.approx(expected.positionwise_re[0.0], rel=1e-5)


def test_resume_computes_missing_chunks_only(model, tmp_path):
    path = write(tmp_path / "train.jsonl", TRAIN)
    directory = extract(model, path, tmp_path / "cache", "all")
    chunks = sorted(directory.glob("ranks-*.safetensors"))
    assert len(chunks) == 4  # 8 records, 2 per chunk
    before = {c.name: load_file(c) for c in chunks}
    stamps = {c.name: c.stat().st_mtime_ns for c in chunks}
    chunks[1].unlink()
    calls = []
    trunk_rows = []
    original = model.trunk

    def counting_trunk(input_ids, attention_mask, *args, **kwargs):
        trunk_rows.append(input_ids.shape[0])
        return original(input_ids, attention_mask, *args, **kwargs)

    def load():
        calls.append(1)
        model.trunk = counting_trunk
        return model

    try:
        bench.extract_features(load, path, tmp_path / "cache", positions="all", gamma=GAMMA, model_name="tiny",
                               batch_size=2, chunk_records=2, feature_dtype="float32", progress=False)
    finally:
        del model.trunk
    assert calls == [1] and sum(trunk_rows) == 2  # one chunk of two records recomputed
    for c in chunks:
        after = load_file(c)
        assert after.keys() == before[c.name].keys()
        for key, tensor in after.items():
            torch.testing.assert_close(tensor, before[c.name][key], rtol=0, atol=1e-6)
        if c != chunks[1]:
            assert c.stat().st_mtime_ns == stamps[c.name]
    # complete: the model is not even loaded
    bench.extract_features(lambda: pytest.fail("loaded the model"), path, tmp_path / "cache", positions="all",
                           gamma=GAMMA, model_name="tiny", batch_size=2, chunk_records=2, feature_dtype="float32",
                           progress=False)
    with pytest.raises(ValueError, match="gamma"):
        extract(model, path, tmp_path / "cache", "all", gamma=0.8)
    chunks[0].unlink()
    with pytest.raises(FileNotFoundError, match="resume"):
        bench.load_features(directory)


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
