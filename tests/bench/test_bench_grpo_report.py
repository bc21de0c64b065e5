"""bench_grpo.py report over seeds, end to end on synthetic runs: trainer logs and held-out rollout files in the real
formats, with every printed number computed by hand; and the single-seed report of the same files."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from lenvm_rl.core import seed_mean
from lenvm_rl.rl_report import (
    ANSWER_KEY,
    LENGTH_KEY,
    SeedDifference,
    SeedReport,
    dominance,
    format_matched,
    seed_report,
    training_band,
    verdict,
)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_grpo.py"
ANSWERS = ["#### 5", "#### 7"]  # gold answers of held-out prompts 0 and 1
LIMIT = 20  # the sampler's max_new_tokens
FILLER, EOS = " ok", 2


def _bench():
    spec = importlib.util.spec_from_file_location("bench_grpo", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()

# run -> (completion length of all 4 completions, answered flags of prompt 0 samples 0-1 and prompt 1 samples 0-1).
# An answer on prompt 0 is "#### 5" (correct), on prompt 1 "#### 8" (wrong): accuracy = answered on prompt 0 / 4.
RUNS = {
    "plain-seed0": (16, [0, 0, 1, 0]), "plain-seed1": (16, [0, 1, 1, 0]), "plain-seed2": (16, [0, 0, 1, 0]),
    "group-seed0": (12, [1, 1, 0, 0]), "group-seed1": (14, [1, 1, 0, 0]), "group-seed2": (13, [1, 1, 0, 0]),
    "group_s1.0-seed0": (8, [1, 0, 0, 0]), "group_s1.0-seed1": (10, [1, 0, 0, 0]),
    "group_s1.0-seed2": (9, [1, 0, 0, 0]),
    "lenvm-seed0": (10, [1, 1, 0, 0]), "lenvm-seed1": (12, [1, 1, 1, 0]), "lenvm-seed2": (11, [1, 0, 1, 0]),
    "lenvm_s1.0-seed0": (6, [1, 0, 0, 0]), "lenvm_s1.0-seed1": (8, [1, 0, 0, 0]), "lenvm_s1.0-seed2": (7, [1, 0, 0, 0]),
    "lenvm_pass_rate-seed0": (14, [1, 1, 1, 1]),
    "base": (LIMIT, [0, 0, 0, 0]),  # every completion cut at the limit
}
ARMS = "plain,group,lenvm,group_s1.0,lenvm_pass_rate"


def records(tokenizer, length, answered):
    """Rollout records (lenvm_rl.data.rollouts format) of 2 prompts x 2 samples, each ``length`` tokens long."""
    out = []
    for k, flag in enumerate(answered):
        prompt_index, sample_index = divmod(k, 2)
        if length == LIMIT and not flag:
            completion, reason = tokenizer.encode(FILLER) * LIMIT, "length"
        else:
            tail = tokenizer.encode(f" #### {5 if prompt_index == 0 else 8}") if flag else []
            completion = tokenizer.encode(FILLER) * (length - len(tail) - 1) + tail + [EOS]
            reason = "eos"
        out.append({"prompt_index": prompt_index, "sample_index": sample_index,
                    "prompt": [{"role": "user", "content": f"Q{prompt_index}"}],
                    "prompt_ids": tokenizer.encode(f"Q{prompt_index}"), "completion_ids": completion,
                    "completion_length": len(completion), "finish_reason": reason,
                    "sampler": {"model": "synthetic", "temperature": 0.7, "top_p": 1.0, "max_new_tokens": LIMIT,
                                "seed": 0, "backend": "hf"}})
        assert len(completion) == (length if flag or length != LIMIT else LIMIT)
    return out


def trainer_state(run_dir, seed, steps=4, offset=100):
    """A TRL trainer_state.json at checkpoint-STEPS: one log per step (length offset + step + seed, answer rate
    step / 10), then TRL's closing summary, which has neither key."""
    history = [{"step": s, LENGTH_KEY: offset + s + seed, ANSWER_KEY: s / 10, "reward": s / 5, "step_time": 2.0}
               for s in range(1, steps + 1)]
    history.append({"step": steps, "train_runtime": 8.0, "train_loss": 0.1})
    checkpoint = run_dir / f"checkpoint-{steps}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": steps, "log_history": history}))


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory, smollm2_tokenizer):
    out = tmp_path_factory.mktemp("grpo")
    (out / "eval").mkdir()
    for run, (length, answered) in RUNS.items():
        (out / "eval" / f"{run}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records(smollm2_tokenizer, length, answered)))
        if run != "base":
            seed = int(run.rpartition("-seed")[2])
            trainer_state(out / run, seed, steps=3 if run == "plain-seed2" else 4)  # plain seed 2: still training
            (out / run / "final").mkdir()
    return out


@pytest.fixture(autouse=True)
def held_out_answers(monkeypatch):
    monkeypatch.setattr(bench, "gsm8k_problems", lambda data, train_prompts, eval_prompts: (None, [], ANSWERS))


def test_seeds_report_end_to_end(output_dir, smollm2_dir, tmp_path, capsys):
    plot = tmp_path / "docs" / "grpo_seeds.png"
    bench.main(["report", "--output-dir", str(output_dir), "--model", smollm2_dir, "--arms", ARMS,
                "--seeds", "0,1,2", "--eval-prompts", "2", "--seeds-plot", str(plot)])
    out = capsys.readouterr().out
    assert plot.is_file() and plot.stat().st_size > 0
    # mean over seeds ± between-seed SE (pooled prompt SE). lenvm: lengths 10, 12, 11 -> 11 ± 1/sqrt(3);
    # answers 2/4, 3/4, 2/4 -> 7/12 ± 1/12, prompt SEs 0.5, 0.25, 0 -> sqrt((0.25 + 0.0625) / 3) = 32.3 %;
    # accuracy 2/4, 2/4, 1/4 -> 5/12 ± 1/12, prompt SEs 0.5, 0.5, 0.25 -> sqrt(0.5625 / 3) = 43.3 %
    assert "| base (before RL) | — | 20.0 (0.0) | 100.0 % (0.0) | 0.0 % (0.0) | 0.0 % (0.0) |" in out
    assert "| plain | 0,1,2 | 16.0 ± 0.0 (0.0) | 0.0 % ± 0.0 (0.0) | 33.3 % ± 8.3 (20.4) | 8.3 % ± 8.3 (14.4) |" in out
    assert "| group | 0,1,2 | 13.0 ± 0.6 (0.0) | 0.0 % ± 0.0 (0.0) | 50.0 % ± 0.0 (50.0) | 50.0 % ± 0.0 (50.0) |" in out
    assert "| lenvm | 0,1,2 | 11.0 ± 0.6 (0.0) | 0.0 % ± 0.0 (0.0) | 58.3 % ± 8.3 (32.3) | 41.7 % ± 8.3 (43.3) |" in out
    assert "| group_s1.0 | 0,1,2 | 9.0 ± 0.6 (0.0) | 0.0 % ± 0.0 (0.0) | 25.0 % ± 0.0 (25.0) | 25.0 % ± 0.0 (25.0) |" \
        in out
    assert "| lenvm_pass_rate | 0 | 14.0 ± — (0.0) | 0.0 % ± — (0.0) | 100.0 % ± — (0.0) | 50.0 % ± — (50.0) |" in out
    assert "not trained or not evaluated): lenvm_pass_rate-seed1, lenvm_pass_rate-seed2" in out
    # per seed ± SE over prompts; lenvm - group answers: seed 1 (0, +0.5) by prompt, seed 2 (-0.5, +0.5)
    assert "| lenvm - group | mean length | -2.0 ± 0.0 | -2.0 ± 0.0 | -2.0 ± 0.0 | -2.0 ± 0.0 (3 seeds) |" in out
    assert ("| lenvm - group | answer rate | +0.0 pp ± 0.0 | +25.0 pp ± 25.0 | +0.0 pp ± 50.0 | "
            "+8.3 pp ± 8.3 (3 seeds) |") in out
    # lenvm - plain answers by prompt: seed 0 (+1, -0.5) -> SE 0.75; seeds 1 and 2 (+0.5, 0) -> SE 0.25
    assert ("| lenvm - plain | answer rate | +25.0 pp ± 75.0 | +25.0 pp ± 25.0 | +25.0 pp ± 25.0 | "
            "+25.0 pp ± 0.0 (3 seeds) |") in out
    # matched: the twin's lengths (12, 8), (14, 10), (13, 9) put lenvm's 10, 12, 11 half way (w = 0.5, s* = 0.75);
    # there it answers 0.375 and is right 0.375: lenvm - twin = 1/8, 3/8, 1/8 and 1/8, 1/8, -1/8
    matched = "lenvm - group/group_s1.0 at lenvm's length"
    assert f"| {matched} | answer rate | +12.5 pp | +37.5 pp | +12.5 pp | +20.8 pp ± 8.3 (3 seeds) |" in out
    assert f"| {matched} | accuracy | +12.5 pp | +12.5 pp | -12.5 pp | +4.2 pp ± 8.3 (3 seeds) |" in out
    assert f"| {matched} | mean length |" not in out
    assert "group/group_s1.0 interpolated per seed, linearly in s between s = 0.5 and s = 1, to lenvm's mean length, at " \
           "s* = 0.75 ± 0.00 (w per seed: 0.50, 0.50, 0.50;" in out
    assert "EXTRAPOLATED" not in out
    # 20.8 >= 2 x 8.3: resolved; sd = sqrt(3) x 8.3 = 14.4 pp; (2 x 14.4 / 20.8)**2 = 1.9 -> 2 seeds
    assert ("at matched length the token-level critic keeps 20.8 ± 8.3 pp more answers (3 seeds); with the measured "
            "between-seed SD (14.4 pp) a difference of 20.8 pp is resolved at 2 SE by 2 seeds.") in out


def test_seeds_report_matches_lenvm_at_two_coefficients_to_the_twins_length(output_dir, smollm2_dir, capsys):
    def report(arms: str, matched: str, seeds: str = "0,1,2") -> str:
        bench.main(["report", "--output-dir", str(output_dir), "--model", smollm2_dir, "--arms", arms,
                    "--seeds", seeds, "--eval-prompts", "2", "--matched", matched])
        return capsys.readouterr().out

    out = report("plain,group,lenvm,lenvm_s1.0,group_s1.0", "lenvm,lenvm_s1.0:group_s1.0")
    # lenvm's lengths (10, 6), (12, 8), (11, 7) at s = 0.5, 1 put the twin's 8, 10, 9 half way (w = 0.5, s* = 0.75);
    # there lenvm answers (0.5 + 0.25) / 2, (0.75 + 0.25) / 2, (0.5 + 0.25) / 2 against the twin's 0.25: +1/8, +1/4,
    # +1/8 -> mean 1/6, SE sd(12.5, 25, 12.5 pp) / sqrt(3) = 7.22 / sqrt(3) = 4.2 pp
    matched = "lenvm/lenvm_s1.0 - group_s1.0 at group_s1.0's length"
    assert f"| {matched} | answer rate | +12.5 pp | +25.0 pp | +12.5 pp | +16.7 pp ± 4.2 (3 seeds) |" in out
    assert ("lenvm/lenvm_s1.0 interpolated per seed, linearly in s between s = 0.5 and s = 1, to group_s1.0's mean "
            "length, at s* = 0.75 ± 0.00 (w per seed: 0.50, 0.50, 0.50;") in out
    assert "at matched length the token-level critic keeps 16.7 ± 4.2 pp more answers (3 seeds)" in out
    # lenvm through plain (s = 0), lenvm and lenvm_s1.0 at group's lengths 12, 14, 13: on the segment from plain's 16
    # to lenvm's 10, 12, 11 (w = 2/3, 1/2, 3/5), answering 1/4 + w/4, 1/2 + w/4, 1/4 + w/4 against group's 1/2
    out = report("plain,group,lenvm,lenvm_s1.0", "plain,lenvm,lenvm_s1.0:group")
    matched = "plain/lenvm/lenvm_s1.0 - group at group's length"
    assert f"| {matched} | answer rate | -8.3 pp | +12.5 pp | -10.0 pp | -1.9 pp ± 7.2 (3 seeds) |" in out
    assert ("interpolated per seed, piecewise linearly in s through s = 0, 0.5, 1, to group's mean length, at "
            "s* = 0.29 ± 0.02 (w per seed: 0.67, 0.50, 0.60;") in out
    with pytest.raises(SystemExit, match="expected TARGET:TWIN"):
        report("lenvm,group", "lenvm", seeds="0,1")
    with pytest.raises(ValueError, match="matched needs one arm and one pair of arms"):
        report("lenvm,group", "lenvm:group", seeds="0,1")


def test_training_band_over_seeds(output_dir):
    # lenvm: length 100 + step + seed at seeds 0-2 -> mean 101 + step, SE sd(0, 1, 2) / sqrt(3) = 1 / sqrt(3)
    steps, mean, se, used = training_band(output_dir, "lenvm", [0, 1, 2], LENGTH_KEY)
    assert steps == [1, 2, 3, 4] and used == [0, 1, 2]
    torch.testing.assert_close(mean, torch.tensor([102.0, 103.0, 104.0, 105.0], dtype=torch.float64))
    torch.testing.assert_close(se, torch.full((4,), 1 / math.sqrt(3), dtype=torch.float64))
    # plain seed 2 has logged 3 steps: the band stops there; a seed without a run is skipped
    steps, mean, se, used = training_band(output_dir, "plain", [0, 1, 2, 7], ANSWER_KEY)
    assert steps == [1, 2, 3] and used == [0, 1, 2]
    torch.testing.assert_close(se, torch.zeros(3, dtype=torch.float64))
    assert training_band(output_dir, "lenvm_pass_rate", [0], LENGTH_KEY)[2].isnan().all()
    assert training_band(output_dir, "group_s2.0", [0, 1], LENGTH_KEY) is None


def test_single_seed_report_keeps_its_output(output_dir, smollm2_dir, tmp_path, capsys):
    plot = tmp_path / "grpo_compare.png"
    bench.main(["report", "--output-dir", str(output_dir), "--model", smollm2_dir, "--arms", "plain,group,lenvm",
                "--eval-prompts", "2", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert plot.is_file()
    assert "lenvm: 4 steps logged (lenvm-seed0)" in out and "| lenvm | 2.0 | 1.00 |" in out
    table = out.split("paired differences")[0].splitlines()
    rows = {line.split()[0]: line for line in table if line.split()[:1] in (["base"], ["lenvm"])}
    assert "10.0 ± 0.0" in rows["lenvm"] and "50.0% ± 50.0%" in rows["lenvm"]  # seed 0: answers (1, 0) by prompt
    assert "20.0 ± 0.0" in rows["base"] and "100.0% ± 0.0%" in rows["base"]
    assert "lenvm - group" in out and "seed" not in out.split("paired differences")[1]


def test_an_incomplete_held_out_file_is_left_out(output_dir, smollm2_tokenizer, tmp_path):
    out = tmp_path / "partial"
    (out / "eval").mkdir(parents=True)
    for seed in (0, 1):
        partial = records(smollm2_tokenizer, 10, [1, 1, 0, 0])[:2 if seed else 4]  # seed 1: prompt 0 only
        (out / "eval" / f"lenvm-seed{seed}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in partial))
    with pytest.warns(UserWarning, match="lenvm-seed1.jsonl covers 1 of the 2 held-out prompts"):
        report = seed_report(out, ["lenvm"], [0, 1], ANSWERS, smollm2_tokenizer)
    assert report.missing == ["lenvm-seed1"] and report.arms["lenvm"].seeds == [0] and report.base is None
    with pytest.raises(ValueError, match=r"not in arms \['lenvm'\]: \['group'\]"):
        seed_report(out, ["lenvm"], [0], ANSWERS, smollm2_tokenizer, pairs=[("lenvm", "group")])


def difference(name, seeds, answer_rates):
    values = torch.tensor(answer_rates, dtype=torch.float64)
    mean, se = (x.item() for x in seed_mean(values))
    nan = torch.full((len(seeds),), math.nan, dtype=torch.float64)
    return SeedDifference(name, seeds, per_seed={"answer_rate": values}, per_seed_se={"answer_rate": nan},
                          mean={"answer_rate": mean}, se={"answer_rate": se})


def test_verdict_and_matched_line_by_hand():
    # +11, +3, +1 pp: mean +5, sd sqrt((36 + 4 + 16) / 2) = sqrt(28) = 5.29, se 3.06; 5 < 2 x 3.06: unresolved;
    # sd 5.29 pp resolves 5 pp at 2 SE with ceil(4 x 28 / 25) = ceil(4.48) = 5 seeds
    unresolved = SeedReport(arms={}, base=None, differences=[difference("lenvm - group", [0, 1, 2], [0.11, 0.03, 0.01])])
    assert verdict(unresolved) == (
        "at the same length coefficient (lenvm - group): no difference resolvable at this scale (Δ = +5.0 ± 3.1 pp, "
        "3 seeds); with the measured between-seed SD (5.3 pp) a difference of 5.0 pp is resolved at 2 SE by 5 seeds.")
    # -10, -30 pp at matched length: mean -20 ± 10; |-20| >= 2 x 10: resolved, fewer answers; sd 14.1 -> 2 seeds
    matched = SeedReport(arms={}, base=None, differences=[], matched=difference("m", [0, 4], [-0.1, -0.3]),
                         matched_coef=(0.9, 0.2), matched_coefs=(0.5, 1.0), matched_weights=[0.5, 1.3])
    # extrapolated at seed 4 (w = 1.3): no matched-length verdict; the same-coefficient difference is judged
    matched.differences = [difference("lenvm - group", [0, 4], [0.02, 0.04])]
    assert verdict(matched).startswith(
        "no matched-length verdict: the coefficients of the twin bracket the target's length at seeds [0] of [0, 4] "
        "only; at the same length coefficient (lenvm - group) the token-level critic keeps 3.0 ± 1.0 pp more")
    matched.matched_weights = [0.5, 1.0]  # both inside [0, 1]: interpolated, judged at matched length
    assert verdict(matched).startswith("at matched length the token-level critic keeps 20.0 ± 10.0 pp fewer answers")
    matched.matched_weights = [0.5, 1.3]
    line = format_matched(matched)
    assert "at s* = 0.90 ± 0.20 (w per seed: 0.50, 1.30;" in line and "EXTRAPOLATED at seeds [4]" in line
    # +1, +3, -1, +1 pp: mean 1, sd sqrt(8/3) = 1.63, se 0.82: unresolved; ceil(4 x (8/3) / 1) = ceil(10.67) = 11
    assert verdict(SeedReport(arms={}, base=None, differences=[
        difference("d", [0, 1, 2, 3], [0.01, 0.03, -0.01, 0.01])])).endswith("is resolved at 2 SE by 11 seeds.")
    one = SeedReport(arms={}, base=None, differences=[difference("d", [0], [0.04])])
    assert verdict(one) == ("at the same length coefficient (d): Δ = +4.0 pp from one seed; its run-to-run variance "
                            "is unknown")
    assert verdict(SeedReport(arms={}, base=None, differences=[])) == "verdict: no paired difference to judge"


def test_dominance_needs_shorter_and_more_answers_at_every_seed():
    def row(name, lengths, answer_rates):
        d = difference(name, list(range(len(lengths))), answer_rates)
        d.per_seed["mean_length"] = torch.tensor(lengths, dtype=torch.float64)
        d.mean["mean_length"], d.se["mean_length"] = (x.item() for x in seed_mean(d.per_seed["mean_length"]))
        return d

    # -10, -20 tokens and +10, +30 pp: mean -15 ± 5 tokens, +20 ± 10 pp
    shorter_better = row("lenvm - group_s2.0", [-10.0, -20.0], [0.1, 0.3])
    mixed = row("lenvm - group", [-10.0, 2.0], [0.1, 0.3])  # longer at seed 1: no dominance
    other = row("plain - group", [-10.0, -20.0], [0.1, 0.3])  # not the target
    one = row("lenvm - plain", [-5.0], [0.02])
    report = SeedReport(arms={}, base=None, differences=[shorter_better, mixed, other, one])
    assert dominance(report) == [
        "lenvm is shorter and answers more than group_s2.0 at every one of 2 seeds: -15.0 ± 5.0 tokens, "
        "+20.0 ± 10.0 pp answer rate",
        "lenvm is shorter and answers more than plain at its one seed: -5.0 tokens, +2.0 pp answer rate"]
