"""The report of an RL comparison repeated over training seeds: per-arm held-out means with two errors, paired
differences per seed, and a matched-length comparison: one arm against another run at two length coefficients and
interpolated to its length.

Layout (``bench/bench_grpo.py``): run ``ARM-seedN`` of arm ``ARM`` at training seed ``N`` keeps its checkpoints in
``OUTPUT_DIR/ARM-seedN/checkpoint-*/`` (``trainer_state.json`` holds the training log) and its held-out samples
in ``OUTPUT_DIR/eval/ARM-seedN.jsonl``; the base policy's in ``OUTPUT_DIR/eval/base.jsonl``. Sample files are
rollout records (:mod:`lenvm_rl.data.rollouts`), scored by :func:`lenvm_rl.evaluation.policy_prompt_means`.

>>> report = seed_report("bench/results/grpo", ["plain", "group", "lenvm", "group_s1.0"], [0, 1, 2],  # doctest: +SKIP
...                      answers, tokenizer, pairs=[("lenvm", "group"), ("lenvm", "plain")],
...                      matched=("lenvm", {"group": 0.5, "group_s1.0": 1.0}))
>>> print(format_seed_table(report)); print(format_seed_differences(report)); print(verdict(report))  # doctest: +SKIP

Every statistic comes from :mod:`lenvm_rl.core.seeds`; this module reads files and arranges numbers.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lenvm_rl.core import (
    interpolate_piecewise_at_length,
    paired_seed_differences,
    pooled_standard_error,
    seed_mean,
    seeds_to_resolve,
)
from lenvm_rl.data import read_rollouts
from lenvm_rl.evaluation import (
    POLICY_COLUMNS,
    PolicyEvaluation,
    evaluate_policy,
    paired_policy_difference,
    policy_prompt_means,
)

__all__ = ["ANSWER_KEY", "LENGTH_KEY", "ArmSummary", "SeedDifference", "SeedReport", "dominance", "format_matched",
           "format_seed_differences", "format_seed_table", "read_log_history", "run_name", "seed_report",
           "training_band", "verdict"]

LENGTH_KEY = "completions/mean_length"
ANSWER_KEY = "rewards/gsm8k_format_reward/mean"
"""Training-log keys (TRL's ``log_history``) of the batch's mean completion length and of the mean of the
:func:`~lenvm_rl.rewards.gsm8k_format_reward` reward function (unweighted): the training answer rate."""


def run_name(arm: str, seed: int) -> str:
    """The run of ``arm`` at training seed ``seed``: ``ARM-seedN`` (its folder and its held-out file's stem)."""
    return f"{arm}-seed{int(seed)}"


@dataclass
class ArmSummary:
    """One arm's held-out metrics over its seeds, for every :data:`~lenvm_rl.evaluation.POLICY_COLUMNS` metric.

    Attributes:
        seeds: the seeds with a complete held-out file, ascending.
        runs: each seed's :class:`~lenvm_rl.evaluation.PolicyEvaluation`.
        mean: ``{metric: mean over seeds}`` of the runs' means over prompts.
        seed_se: ``{metric: between-seed SE}`` (:func:`~lenvm_rl.core.seed_mean`; NaN with one seed).
        prompt_se: ``{metric: within-run prompt SE}``, the runs' SEs over prompts pooled over seeds
            (:func:`~lenvm_rl.core.pooled_standard_error`, ``sqrt(mean_i se_i**2)``): one run's error from the
            choice of held-out prompts, which every seed shares.
    """

    seeds: list[int]
    runs: dict[int, PolicyEvaluation]
    mean: dict[str, float]
    seed_se: dict[str, float]
    prompt_se: dict[str, float]


@dataclass
class SeedDifference:
    """Arm A minus arm B, paired by seed, for every metric in ``mean``.

    Attributes:
        name: e.g. ``"lenvm - group"``.
        seeds: the seeds both have, ascending.
        per_seed: ``{metric: (S,) tensor}``, ``d_i = a_i - b_i`` of the runs' means.
        per_seed_se: ``{metric: (S,) tensor}``, the SE over prompts of ``d_i``, paired by prompt
            (:func:`~lenvm_rl.evaluation.paired_policy_difference`); NaN where B is no run (an interpolation).
        mean, se: ``{metric: float}``, the mean of ``d`` over seeds and its between-seed SE.
    """

    name: str
    seeds: list[int]
    per_seed: dict[str, torch.Tensor]
    per_seed_se: dict[str, torch.Tensor]
    mean: dict[str, float]
    se: dict[str, float]

    def sd(self, metric: str) -> float:
        """The between-seed standard deviation of ``d``: ``se * sqrt(S)``."""
        return self.se[metric] * math.sqrt(len(self.seeds))


@dataclass
class SeedReport:
    """What :func:`seed_report` found (see there). ``matched`` is the target arm minus its twin at one arm's length,
    ``matched_to``, with the estimator run at two or more coefficients, ``matched_pair`` (``"A/B/..."``),
    interpolated to it (``per_seed_se`` NaN); ``matched_coef`` ``(mean, se)`` over seeds of the coefficient ``s*``
    at which the pair reaches that length, ``matched_coefs`` the pair's coefficients in increasing ``s`` and
    ``matched_weights`` the per-seed ``w`` of :func:`~lenvm_rl.core.interpolate_piecewise_at_length` (outside
    ``[0, 1]``: extrapolated)."""

    arms: dict[str, ArmSummary]
    base: PolicyEvaluation | None
    differences: list[SeedDifference]
    matched: SeedDifference | None = None
    matched_coef: tuple[float, float] | None = None
    matched_coefs: tuple[float, ...] | None = None
    matched_weights: list[float] = field(default_factory=list)
    matched_pair: str = "the twin"
    matched_to: str = "the target"
    missing: list[str] = field(default_factory=list)


def _held_out(output_dir: Path, name: str, answers, tokenizer, prompts: set) -> dict | None:
    """Per-prompt means of ``eval/NAME.jsonl``, or None when the file is missing or lacks a held-out prompt."""
    path = output_dir / "eval" / f"{name}.jsonl"
    if not path.is_file():
        return None
    records = read_rollouts(path)
    means = policy_prompt_means(records, answers, tokenizer)
    if set(means["prompt_index"].tolist()) != prompts:
        warnings.warn(f"{path} covers {len(means['prompt_index'])} of the {len(prompts)} held-out prompts "
                      "(still sampling?); left out of the report", stacklevel=3)
        return None
    return {"means": means, "evaluation": evaluate_policy(records, answers, tokenizer)}


def _stack(values: Sequence[Mapping[str, float]], metrics) -> torch.Tensor:
    """``(S, M)`` float64 from one ``{metric: value}`` per seed."""
    return torch.tensor([[v[m] for m in metrics] for v in values], dtype=torch.float64)


def _summary(runs: dict[int, dict]) -> ArmSummary:
    metrics = list(POLICY_COLUMNS)
    evaluations = {seed: run["evaluation"] for seed, run in sorted(runs.items())}
    means = _stack([vars(e) for e in evaluations.values()], metrics)
    ses = _stack([{m: getattr(e, f"{m}_se") for m in metrics} for e in evaluations.values()], metrics)
    mean, se = seed_mean(means)
    return ArmSummary(seeds=list(evaluations), runs=evaluations, mean=dict(zip(metrics, mean.tolist())),
                      seed_se=dict(zip(metrics, se.tolist())),
                      prompt_se=dict(zip(metrics, pooled_standard_error(ses).tolist())))


def _seed_difference(name: str, seeds: list[int], a: torch.Tensor, b: torch.Tensor,
                     per_seed_se: dict[str, torch.Tensor] | None = None) -> SeedDifference:
    """``a - b`` of two ``(S, M)`` stacks (:func:`_stack`, metrics in :data:`POLICY_COLUMNS` order), paired by seed."""
    metrics = list(POLICY_COLUMNS)
    d, mean, se = paired_seed_differences(a, b)
    unpaired = torch.full((len(seeds),), math.nan, dtype=torch.float64)
    return SeedDifference(name, seeds, per_seed={m: d[:, j] for j, m in enumerate(metrics)},
                          per_seed_se=per_seed_se or dict.fromkeys(metrics, unpaired),
                          mean=dict(zip(metrics, mean.tolist())), se=dict(zip(metrics, se.tolist())))


def _difference(name: str, a: dict[int, dict], b: dict[int, dict]) -> SeedDifference | None:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    metrics = list(POLICY_COLUMNS)
    paired = [paired_policy_difference(a[s]["means"], b[s]["means"]) for s in seeds]
    return _seed_difference(name, seeds, _stack([vars(a[s]["evaluation"]) for s in seeds], metrics),
                            _stack([vars(b[s]["evaluation"]) for s in seeds], metrics),
                            {m: torch.tensor([p[m][1] for p in paired], dtype=torch.float64) for m in metrics})


def _matched(report: SeedReport, runs: dict[str, dict[int, dict]], target: str | Mapping[str, float],
             twin: str | Mapping[str, float]) -> None:
    """Fill ``report.matched*``: ``target - twin`` at one side's length, the other side (an estimator's arms at two
    or more coefficients, ``{arm: s}``) interpolated in ``s`` to it."""
    pair, fixed = (twin, target) if isinstance(twin, Mapping) else (target, twin)
    if not isinstance(pair, Mapping) or len(pair) < 2 or isinstance(fixed, Mapping):
        raise ValueError(f"matched needs one arm and one pair of arms at two coefficients ({{arm: s}}), got "
                         f"{target!r} and {twin!r}")
    pair = dict(sorted(pair.items(), key=lambda item: item[1]))
    seeds = sorted(set(runs[fixed]).intersection(*(runs[arm] for arm in pair)))
    if not seeds:
        return
    metrics = list(POLICY_COLUMNS)
    values = {arm: _stack([vars(runs[arm][s]["evaluation"]) for s in seeds], metrics) for arm in (fixed, *pair)}
    length = metrics.index("mean_length")
    try:
        s_star, interpolated, w, _ = interpolate_piecewise_at_length(
            list(pair.values()), torch.stack([values[arm][:, length] for arm in pair]),
            torch.stack([values[arm] for arm in pair]), values[fixed][:, length])
    except ValueError as err:
        raise ValueError(f"matched length of {fixed} against {', '.join(pair)}, seed rows of seeds {seeds}: "
                         f"{err}") from None
    report.matched_pair, report.matched_to = "/".join(pair), fixed
    if isinstance(twin, Mapping):  # the twin moves to the target's length
        report.matched = _seed_difference(f"{fixed} - {report.matched_pair} at {fixed}'s length", seeds,
                                          values[fixed], interpolated)
    else:
        report.matched = _seed_difference(f"{report.matched_pair} - {fixed} at {fixed}'s length", seeds,
                                          interpolated, values[fixed])
    report.matched_coef = tuple(x.item() for x in seed_mean(s_star))
    report.matched_coefs, report.matched_weights = tuple(pair.values()), w.tolist()


def seed_report(output_dir, arms: Sequence[str], seeds: Sequence[int], answers, tokenizer, *,
                pairs: Sequence[tuple[str, str]] = (),
                matched: tuple[str | Mapping[str, float], str | Mapping[str, float]] | None = None) -> SeedReport:
    """Held-out metrics of every arm over its seeds, paired differences, and a matched-length comparison.

    Args:
        output_dir: the comparison's folder (layout in the module docstring).
        arms, seeds: the runs ``ARM-seedN`` to read; a run without a complete held-out file (every prompt of
            ``answers``) is left out and listed in ``missing`` (an arm may have fewer seeds than another).
        answers: the gold answers, indexed by ``prompt_index`` (:func:`~lenvm_rl.evaluation.evaluate_policy`); a
            list of ``P`` entries means held-out prompts ``0 .. P-1``.
        tokenizer: decodes the completions.
        pairs: ``(A, B)`` arm pairs: ``A - B`` per seed (both runs present) and over seeds.
        matched: ``(target, twin)``, one of them an arm and the other an estimator run at two or more length
            coefficients, ``{arm_a: s_a, arm_b: s_b, ...}``: target minus twin, with the latter interpolated per
            seed, (piecewise) linearly in ``s``, to the single arm's mean length
            (:func:`~lenvm_rl.core.interpolate_piecewise_at_length`), over the seeds they all have.
            ``("lenvm", {"group": 0.5, "group_s2.0": 2.0})`` moves the twin to lenvm's length;
            ``({"plain": 0.0, "lenvm_s0.25": 0.25, "lenvm": 0.5}, "group_s4.0")`` moves lenvm to the twin's.
    Returns:
        A :class:`SeedReport`; ``base`` from ``eval/base.jsonl`` when there.
    Raises:
        ValueError: an arm of ``pairs`` or ``matched`` not in ``arms``, or malformed records.
    """
    output_dir = Path(output_dir)
    named = {a for pair in pairs for a in pair}
    named |= {arm for side in matched or () for arm in ([side] if isinstance(side, str) else side)}
    if named - set(arms):
        raise ValueError(f"pairs and matched name arms that are not in arms {list(arms)}: {sorted(named - set(arms))}")
    prompts = set(answers) if isinstance(answers, Mapping) else set(range(len(answers)))
    runs: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    missing = []
    for arm in arms:
        for seed in seeds:
            found = _held_out(output_dir, run_name(arm, seed), answers, tokenizer, prompts)
            if found is None:
                missing.append(run_name(arm, seed))
            else:
                runs[arm][int(seed)] = found
    base = _held_out(output_dir, "base", answers, tokenizer, prompts)
    report = SeedReport(arms={arm: _summary(r) for arm, r in runs.items() if r},
                        base=base["evaluation"] if base else None, differences=[], missing=missing)
    for a, b in pairs:
        difference = _difference(f"{a} - {b}", runs[a], runs[b])
        if difference is not None:
            report.differences.append(difference)
    if matched:
        _matched(report, runs, *matched)
    return report


# ----------------------------------------------------------------------------- training curves


def read_log_history(run_dir) -> list[dict]:
    """The training log of a run: ``log_history`` of its last checkpoint's ``trainer_state.json``.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``checkpoint-*`` folder with a ``trainer_state.json``.
    """
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(run_dir)) if Path(run_dir).is_dir() else None
    if last is None or not (Path(last) / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoint-*/trainer_state.json (not trained yet?)")
    return json.loads((Path(last) / "trainer_state.json").read_text())["log_history"]


def training_band(output_dir, arm: str, seeds: Sequence[int], key: str
                  ) -> tuple[list[int], torch.Tensor, torch.Tensor, list[int]] | None:
    """Mean ± between-seed SE of a logged training metric against step, over the seeds of ``arm``.

    ``key`` is a ``log_history`` key (:data:`LENGTH_KEY`, :data:`ANSWER_KEY`); the steps are those every seed
    with a log has logged (a run still training shortens the band), and the last entry of a step counts.

    Returns:
        ``(steps, mean, se, seeds_used)``: ``steps`` ascending, ``mean`` and ``se`` ``(T,)`` float64 from
        :func:`~lenvm_rl.core.seed_mean` (``se`` NaN with one seed); None when no seed has a log with ``key``.
    """
    curves = {}
    for seed in seeds:
        try:
            history = read_log_history(Path(output_dir) / run_name(arm, seed))
        except FileNotFoundError:
            continue
        curve = {entry["step"]: entry[key] for entry in history if key in entry}
        if curve:
            curves[int(seed)] = curve
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(curve) for curve in curves.values())))
    mean, se = seed_mean(torch.tensor([[curve[s] for s in steps] for curve in curves.values()], dtype=torch.float64))
    return steps, mean, se, sorted(curves)


# ----------------------------------------------------------------------------- markdown


def _cell(metric: str, value: float, signed: bool = False) -> str:
    """A length in tokens (``.1f``), a fraction in percent, or in points when ``signed`` (a difference)."""
    if math.isnan(value):
        return "—"
    if metric == "mean_length":
        return f"{value:+.1f}" if signed else f"{value:.1f}"
    return f"{100 * value:+.1f} pp" if signed else f"{100 * value:.1f} %"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _error(metric: str, se: float) -> str:
    return "—" if math.isnan(se) else (f"{se:.1f}" if metric == "mean_length" else f"{100 * se:.1f}")


def format_seed_table(report: SeedReport) -> str:
    """A markdown table, one row per arm (and the base policy first, when there): every metric as
    ``mean ± between-seed SE (within-run prompt SE)``; ``—`` where one seed leaves no between-seed SE."""
    titles = list(POLICY_COLUMNS.values())
    lines = ["| policy | seeds | " + " | ".join(titles) + " |", "|---|---|" + "---:|" * len(titles)]
    if report.base is not None:
        lines.append("| base (before RL) | — | " + " | ".join(
            f"{_cell(m, getattr(report.base, m))} ({_error(m, getattr(report.base, f'{m}_se'))})"
            for m in POLICY_COLUMNS) + " |")
    for arm, summary in report.arms.items():
        lines.append(f"| {arm} | {','.join(map(str, summary.seeds))} | " + " | ".join(
            f"{_cell(m, summary.mean[m])} ± {_error(m, summary.seed_se[m])} ({_error(m, summary.prompt_se[m])})"
            for m in POLICY_COLUMNS) + " |")
    return "\n".join(lines)


def format_seed_differences(report: SeedReport) -> str:
    """A markdown table of every paired difference (and the matched one): per seed ``d_i ± its prompt-paired SE``,
    then ``mean ± between-seed SE`` over seeds; lengths in tokens, rates in percentage points."""
    rows = report.differences + ([report.matched] if report.matched else [])
    if not rows:
        return "no paired difference: no seed has both runs of a pair"
    seeds = sorted({s for row in rows for s in row.seeds})
    lines = ["| difference | metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± SE over seeds |",
             "|---|---|" + "---:|" * (len(seeds) + 1)]
    for row in rows:
        for metric, title in POLICY_COLUMNS.items():
            if row is report.matched and metric == "mean_length":
                continue  # 0 by construction
            cells = []
            for seed in seeds:
                if seed not in row.seeds:
                    cells.append("—")
                    continue
                i = row.seeds.index(seed)
                value, se = row.per_seed[metric][i].item(), row.per_seed_se[metric][i].item()
                error = "" if math.isnan(se) else f" ± {_error(metric, se)}"
                cells.append(_cell(metric, value, signed=True) + error)
            total = f"{_cell(metric, row.mean[metric], signed=True)} ± {_error(metric, row.se[metric])} " \
                    f"({_seeds(len(row.seeds))})"
            lines.append(f"| {row.name} | {title} | " + " | ".join(cells) + f" | {total} |")
    return "\n".join(lines)


def _extrapolated_seeds(report: SeedReport) -> list[int]:
    """The seeds at which the matched-length interpolation extrapolates (``w`` outside ``[0, 1]``)."""
    if report.matched is None:
        return []
    return [s for s, w in zip(report.matched.seeds, report.matched_weights) if not 0.0 <= w <= 1.0]


def format_matched(report: SeedReport) -> str:
    """One line: how the pair was interpolated to the other arm's length, and where (warns of extrapolation)."""
    if report.matched is None:
        return "matched length: not available (needs the target and the twin at two coefficients, at a common seed)"
    coefs = report.matched_coefs
    s_star, s_se = report.matched_coef
    weights = ", ".join(f"{w:.2f}" for w in report.matched_weights)
    outside = _extrapolated_seeds(report)
    how = (f"linearly in s between s = {coefs[0]:g} and s = {coefs[1]:g}" if len(coefs) == 2 else
           f"piecewise linearly in s through s = {', '.join(f'{c:g}' for c in coefs)}")
    line = (f"matched length: {report.matched.name}: {report.matched_pair} interpolated per seed, {how}, to "
            f"{report.matched_to}'s mean length, at s* = {s_star:.2f}" + ("" if math.isnan(s_se) else f" ± {s_se:.2f}"))
    line += f" (w per seed: {weights}; error: SE over seeds of the per-seed differences)"
    if outside:
        line += (f"; EXTRAPOLATED at seeds {outside} (w outside [0, 1]): the lengths of {report.matched_pair} do not "
                 f"bracket {report.matched_to}'s")
    return line


def dominance(report: SeedReport, target: str = "lenvm") -> list[str]:
    """One line per paired difference ``target - B`` in which the target is shorter (``mean_length``) *and*
    answers more (``answer_rate``) at every seed: a comparison that needs no interpolation, since B is worse on
    both axes at once. Each line gives both differences as mean ± SE over seeds."""
    lines = []
    for row in report.differences:
        a, _, b = row.name.partition(" - ")
        if a != target or not ((row.per_seed["mean_length"] < 0).all() and (row.per_seed["answer_rate"] > 0).all()):
            continue
        length = f"{row.mean['mean_length']:+.1f}" + ("" if math.isnan(row.se["mean_length"])
                                                        else f" ± {row.se['mean_length']:.1f}")
        answers = f"{100 * row.mean['answer_rate']:+.1f}" + ("" if math.isnan(row.se["answer_rate"])
                                                            else f" ± {100 * row.se['answer_rate']:.1f}")
        lines.append(f"{target} is shorter and answers more than {b} "
                     f"{'at its one seed' if len(row.seeds) == 1 else f'at every one of {len(row.seeds)} seeds'}: "
                     f"{length} tokens, {answers} pp answer rate")
    return lines


def verdict(report: SeedReport, metric: str = "answer_rate", z: float = 2.0) -> str:
    """One sentence on the target's answers against its twin, resolved when ``|mean| >= z * SE``, with the number
    of seeds at which the measured between-seed SD would resolve the measured mean
    (:func:`~lenvm_rl.core.seeds_to_resolve`).

    From the matched difference when the pair's coefficients bracket the other arm's length at every seed;
    otherwise (an extrapolation in ``s`` is no measurement) it says where they do not, and judges the first of
    ``report.differences``, at the same coefficient."""
    outside = _extrapolated_seeds(report)
    if report.matched is not None and not outside:
        return _judge(report.matched, "at matched length", metric, z)
    preface = ""
    if report.matched is not None:
        inside = [s for s in report.matched.seeds if s not in outside]
        preface = (f"no matched-length verdict: the coefficients of {report.matched_pair} bracket "
                   f"{report.matched_to}'s length at {f'seeds {inside}' if inside else 'no seed'} of "
                   f"{report.matched.seeds} only; ")
    if not report.differences:
        return preface + "verdict: no paired difference to judge"
    row = report.differences[0]
    return preface + _judge(row, f"at the same length coefficient ({row.name})", metric, z)


def _judge(row: SeedDifference, where: str, metric: str, z: float) -> str:
    """``where``, then the difference ``row`` of ``metric`` (in pp) judged at ``z`` SE over seeds."""
    mean, se, n = 100 * row.mean[metric], 100 * row.se[metric], len(row.seeds)
    if math.isnan(se):
        return f"{where}: Δ = {mean:+.1f} pp from one seed; its run-to-run variance is unknown"
    if abs(mean) >= z * se and mean != 0:
        sentence = (f"{where} the token-level critic keeps {abs(mean):.1f} ± {se:.1f} pp "
                    f"{'more' if mean > 0 else 'fewer'} answers ({_seeds(n)})")
    else:
        sentence = f"{where}: no difference resolvable at this scale (Δ = {mean:+.1f} ± {se:.1f} pp, {_seeds(n)})"
    sd = 100 * row.sd(metric)
    needed = seeds_to_resolve(torch.tensor(mean), torch.tensor(sd), z).item()
    scale = ("no number of seeds resolves a zero difference" if math.isinf(needed) else
             f"with the measured between-seed SD ({sd:.1f} pp) a difference of {abs(mean):.1f} pp "
             f"is resolved at {z:g} SE by {int(needed)} seeds")
    return f"{sentence}; {scale}."
