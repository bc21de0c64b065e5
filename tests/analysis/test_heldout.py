"""lenvm_rl.analysis.heldout and .baselines: a held-out set of cached states scores a head as evaluate_lenvm scores
the LenVM, and the baselines on cached states agree with lenvm_rl.evaluation on the same records."""

from __future__ import annotations

import math

import pytest
import torch
from analysis_fixtures import EVAL, GAMMA, TRAIN, tiny_lenvm, write

from lenvm_rl.analysis import (
    HeldOut,
    baseline_cells,
    baseline_s0_values,
    extract_features,
    held_out_sets,
    load_features,
    reference_cells,
)
from lenvm_rl.core import length_to_value
from lenvm_rl.evaluation import (
    NOISE_FLOOR_ROW,
    SPLIT_HALF_ROW,
    constant_baseline_value,
    evaluate_constant,
    evaluate_lenvm,
    evaluate_prompt_length_baseline,
    noise_floor,
    prompt_length_baseline,
)


@pytest.fixture(scope="module")
def model():
    return tiny_lenvm()


def held_out(model, tmp_path, positions, records=EVAL, name="eval"):
    path = write(tmp_path / f"{name}.jsonl", records)
    directory = extract_features(lambda: model, path, tmp_path / "cache", positions=positions, gamma=GAMMA,
                                 model_name="tiny", batch_size=2, chunk_records=2, feature_dtype="float32",
                                 progress=False)
    return HeldOut(name, records, load_features(directory), positions == "all", GAMMA)


@pytest.mark.parametrize("positions", ["all", "boundary"])
def test_held_out_metrics_match_evaluate_lenvm(model, tmp_path, positions):
    got = held_out(model, tmp_path, positions).evaluate_head(model.v_head)
    expected = evaluate_lenvm(model, EVAL)
    assert got["prompt_mre"] == pytest.approx(expected.prompt_mre, abs=1e-5)
    assert got["prompt_mre_se"] == pytest.approx(expected.prompt_mre_se, abs=1e-5)
    assert len(got["prompt_errors"]) == 3 and sum(got["prompt_errors"]) / 3 == pytest.approx(got["prompt_mre"])
    if positions == "all":
        assert got["value_mse"] == pytest.approx(expected.value_mse, rel=1e-5)
        # RE at 0/25/50/75 % of the trajectory from each completion's own cached states
        assert got["positionwise_re"] == pytest.approx({str(f): e for f, e in expected.positionwise_re.items()},
                                                       rel=1e-5)
    else:
        assert math.isnan(got["value_mse"])  # no states beyond s_0 were cached
        assert all(math.isnan(e) for e in got["positionwise_re"].values())
    assert got["re_at_0"] == pytest.approx(expected.positionwise_re[0.0], rel=1e-5)
    assert got["num_infinite"] == 0


def test_held_out_refuses_features_of_other_records(model, tmp_path):
    features = load_features(extract_features(lambda: model, write(tmp_path / "e.jsonl", EVAL), tmp_path / "c",
                                              positions="boundary", gamma=GAMMA, model_name="tiny",
                                              feature_dtype="float32", progress=False))
    with pytest.raises(ValueError, match="cached prompts differ"):
        HeldOut("eval", [r for r in EVAL if r["prompt_index"] < 2], features, False, GAMMA)


def test_baselines_agree_with_evaluation(model, tmp_path):
    eval_set = held_out(model, tmp_path, "all")
    values = baseline_s0_values(TRAIN, eval_set, GAMMA)
    constant = constant_baseline_value(TRAIN, GAMMA)
    assert values["constant baseline"].tolist() == pytest.approx([constant] * 3)
    # the constant at every cached state: evaluate_constant's prompt MRE, value MSE and positionwise RE
    cell = eval_set.evaluate_values(values["constant baseline"], torch.full((len(eval_set.targets),), constant))
    expected = evaluate_constant(constant, EVAL, GAMMA)
    assert cell["prompt_mre"] == pytest.approx(expected.prompt_mre, abs=1e-6)
    assert cell["value_mse"] == pytest.approx(expected.value_mse, rel=1e-5)
    assert cell["positionwise_re"] == pytest.approx({str(f): e for f, e in expected.positionwise_re.items()}, rel=1e-5)
    ended = torch.tensor([r["completion_length"] for r in EVAL if r["finish_reason"] == "eos"])
    assert cell["s0_value_mse"] == pytest.approx(torch.mean((constant - length_to_value(ended, GAMMA)) ** 2).item(),
                                                 rel=1e-5)
    regression = evaluate_prompt_length_baseline(prompt_length_baseline(TRAIN, GAMMA), EVAL)
    assert eval_set.evaluate_values(values["prompt-length regression"])["prompt_mre"] == pytest.approx(
        regression.prompt_mre, abs=1e-5)
    cells = baseline_cells(TRAIN, eval_set, GAMMA)
    assert list(cells) == ["constant baseline", "prompt-length regression", SPLIT_HALF_ROW, NOISE_FLOOR_ROW]
    assert cells["constant baseline"]["prompt_mre"] == pytest.approx(expected.prompt_mre)
    assert cells["prompt-length regression"]["prompt_mre"] == pytest.approx(regression.prompt_mre)
    floor = reference_cells(eval_set, GAMMA)[NOISE_FLOOR_ROW]
    assert floor["prompt_mre"] == pytest.approx(noise_floor(EVAL, GAMMA)[0]) and math.isnan(floor["value_mse"])


def test_held_out_sets_add_their_union(model, tmp_path):
    paths = [write(tmp_path / "a.jsonl", [r for r in EVAL if r["prompt_index"] < 2]),
             write(tmp_path / "b.jsonl", [r for r in EVAL if r["prompt_index"] == 2])]
    dirs = [extract_features(lambda: model, p, tmp_path / "c", positions="boundary", gamma=GAMMA, model_name="tiny",
                             feature_dtype="float32", progress=False) for p in paths]
    sets = held_out_sets([str(p) for p in paths], dirs, False, GAMMA)
    assert [(s.name, len(s.groups)) for s in sets] == [("a.jsonl", 2), ("b.jsonl", 1), ("all held-out", 3)]
    whole = sets[-1].evaluate_head(model.v_head)
    assert whole["prompt_mre"] == pytest.approx(evaluate_lenvm(model, EVAL).prompt_mre, abs=1e-5)
