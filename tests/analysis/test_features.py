"""lenvm_rl.analysis.features: cached trunk states + the LenVM's head reproduce LenVM.forward, the targets are
core.monte_carlo_targets', a resumed extraction computes the missing chunks only, and the block layout of
record_steps."""

from __future__ import annotations

import pytest
import torch
from analysis_fixtures import GAMMA, SHARDS, TRAIN, tiny_lenvm, write
from safetensors.torch import load_file

from lenvm_rl.analysis import extract_features, head_values, load_features, record_steps, state_weights
from lenvm_rl.core import boundary_weights, monte_carlo_targets
from lenvm_rl.data import read_rollouts


@pytest.fixture(scope="module")
def model():
    return tiny_lenvm()


def extract(model, path, root, positions, **kw):
    settings = dict(positions=positions, gamma=GAMMA, model_name="tiny", batch_size=2, chunk_records=2,
                    feature_dtype="float32", progress=False)
    return extract_features(lambda: model, path, root, **{**settings, **kw})


def test_cached_states_and_head_reproduce_forward(model, tmp_path):
    path = write(tmp_path / "train.jsonl", TRAIN)
    features = load_features(extract(model, path, tmp_path / "cache", "all"))
    scored = model.score([r["prompt_ids"] + r["completion_ids"] for r in TRAIN])
    values = head_values(model.v_head, features["hidden"])
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
        # the loss weights of the cached states are core.boundary_weights on the trajectory layout
        torch.testing.assert_close(state_weights(features["is_s0"][rows], 10.0), boundary_weights(mask, 10.0)[mask])
    # boundary mode runs the prompt alone: the same V(s_0) as the full sequence
    boundary = load_features(extract(model, path, tmp_path / "cache", "boundary"))
    assert bool(boundary["is_s0"].all()) and len(boundary["targets"]) == len(TRAIN)
    for i, record in enumerate(TRAIN):
        row = boundary["record"] == i
        p = len(record["prompt_ids"])
        torch.testing.assert_close(head_values(model.v_head, boundary["hidden"][row]),
                                   scored[i].values[p - 1:p], rtol=0, atol=1e-6)


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
        extract_features(load, path, tmp_path / "cache", positions="all", gamma=GAMMA, model_name="tiny",
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
    extract_features(lambda: pytest.fail("loaded the model"), path, tmp_path / "cache", positions="all",
                     gamma=GAMMA, model_name="tiny", batch_size=2, chunk_records=2, feature_dtype="float32",
                     progress=False)
    with pytest.raises(ValueError, match="gamma"):
        extract(model, path, tmp_path / "cache", "all", gamma=0.8)
    with pytest.raises(ValueError, match="positions must be"):
        extract(model, path, tmp_path / "cache", "some")
    chunks[0].unlink()
    with pytest.raises(FileNotFoundError, match="resume"):
        load_features(directory)


def test_record_steps_number_each_records_states(model, tmp_path):
    path = write(tmp_path / "shard0.jsonl", SHARDS[0] + SHARDS[1])
    states = load_features(extract(model, path, tmp_path / "c", "all", chunk_records=3))
    records = read_rollouts(str(path))
    block, step = record_steps(states)
    for b in range(int(block.max()) + 1):  # one block per record, its states s_0 .. s_L in order
        rows = block == b
        assert len(states["record"][rows].unique()) == 1 and bool(states["is_s0"][rows][0])
        record = records[int(states["record"][rows][0])]
        assert step[rows].tolist() == list(range(record["completion_length"] + 1))
    with pytest.raises(ValueError, match="do not start at an s_0 row"):
        record_steps({key: value[1:] for key, value in states.items()})
