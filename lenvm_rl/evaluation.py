"""Held-out evaluation of a LenVM on rollout records, against a constant baseline, a prompt-length
regression and the noise floor; and of a policy's lengths and GSM8K answers (:func:`evaluate_policy`, the
before/after table of length-aware RL). The metrics: docs/method.md#evaluating-predictions.

>>> from lenvm_rl.data.rollouts import read_rollouts                          # doctest: +SKIP
>>> train, test = read_rollouts("train.jsonl"), read_rollouts("test.jsonl")   # doctest: +SKIP
>>> baseline = constant_baseline_value(train, model.gamma)                   # doctest: +SKIP
>>> regression = prompt_length_baseline(train, model.gamma)                  # doctest: +SKIP
>>> print(format_report({                                                    # doctest: +SKIP
...     "LenVM": evaluate_lenvm(model, test),
...     "constant baseline": evaluate_constant(baseline, test, model.gamma),
...     "prompt-length regression": evaluate_prompt_length_baseline(regression, test),
... }, references={
...     NOISE_FLOOR_ROW: noise_floor(test, model.gamma),
...     SPLIT_HALF_ROW: split_half_mre(test, model.gamma),
... }))

References. No predictor of ``L_GT`` from ``s_0`` can expect to beat the *noise floor*: ``L_GT`` is itself an estimate
from ``K`` samples, so even an oracle that knows each prompt's true ``E[gamma**L]`` has a relative error
(:func:`noise_floor`, a bootstrap). The *split-half* MRE (:func:`split_half_mre`) is what ``K/2`` samples of
the very prompt achieve against the other ``K/2``. Both are reported as mean ± standard error over prompts.

Records are the rollout format of :mod:`lenvm_rl.data.rollouts`, one dict per completion. For a
record with ``P = len(prompt_ids)`` prompt tokens and ``L = completion_length`` completion tokens
(EOS included), the full sequence ``prompt_ids + completion_ids`` has ``P + L`` positions and state
``s_t`` (``t = 0 .. L``) sits at position ``P - 1 + t``: ``s_0`` is the last prompt token, ``s_L``
the EOS. Every formula comes from :mod:`lenvm_rl.core`.

Censoring. A completion cut at ``max_new_tokens`` (``finish_reason == "length"``) has an unknown
true length ``L* >= L``:

- value MSE and positionwise RE skip it (its targets are unknown);
- prompt MRE uses its ``L`` as a lower bound of ``L*`` inside the return-consistent ground truth,
  which biases ``L_GT`` short (towards the sampler's length limit) on prompts with censored samples; the
  prompt-length baseline, the noise floor and the split-half MRE use it the same way;
- it is counted in ``num_censored``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from lenvm_rl.core import (
    fit_linear,
    length_to_value,
    mean_and_standard_error,
    monte_carlo_targets,
    noise_floor_relative_errors,
    positionwise_relative_error,
    prompt_relative_errors,
    split_half_relative_errors,
    value_regression_loss,
    value_to_length,
)
from lenvm_rl.data.prompts import format_mismatch
from lenvm_rl.data.rollouts import group_by_prompt, rollout_encoding
from lenvm_rl.modeling import LenVM
from lenvm_rl.modeling.vocabulary import check_vocabulary

__all__ = ["FRACTIONS", "NOISE_FLOOR_ROW", "SPLIT_HALF_ROW", "LenVMEvaluation", "PolicyEvaluation",
           "PromptLengthBaseline", "constant_baseline_value", "evaluate_constant", "evaluate_lenvm",
           "evaluate_policy", "evaluate_prompt_length_baseline", "format_policy_table", "format_report",
           "noise_floor", "paired_policy_difference", "policy_prompt_means", "prompt_errors_of_groups",
           "prompt_length_baseline", "sample_and_evaluate_policy", "split_half_mre"]

FRACTIONS = (0.0, 0.25, 0.5, 0.75)
"""Fractions of each trajectory at which the remaining-length relative error is reported."""

logger = logging.getLogger(__name__)

NOISE_FLOOR_ROW = "noise floor (oracle vs K samples)"
SPLIT_HALF_ROW = "split-half (K/2 vs K/2)"
"""Report names of the :func:`noise_floor` and :func:`split_half_mre` reference rows."""

@dataclass
class LenVMEvaluation:
    """One row of a report: the metrics of one value predictor on one set of records.

    Attributes:
        value_mse: token-averaged ``sum_n sum_t (V(s_t) - G_t)**2 / sum_n (L_n + 1)`` over the states
            ``s_0 .. s_L`` of every EOS-terminated completion, ``G_t = -(1 - gamma**(L - t))`` (so
            ``G_L = 0`` at the EOS). NaN when no completion ended with EOS.
        prompt_mre: ``mean_prompts |L_hat - L_GT| / L_GT`` with ``L_hat = ln(1 + V(s_0)) / ln(gamma)``
            and ``L_GT = ln(mean_i gamma**L_i) / ln(gamma)`` over all sampled completions of the
            prompt (censored ones at their lower bound ``L_i``).
        prompt_mre_se: standard error of ``prompt_mre`` over prompts (:func:`~lenvm_rl.core.mean_and_standard_error`
            of the per-prompt errors, :func:`~lenvm_rl.core.prompt_relative_errors`); NaN with one prompt.
        positionwise_re: ``{f: mean_n |l_hat - (L_n - k)| / (L_n - k)}`` for ``f`` in :data:`FRACTIONS`,
            ``k = floor(f * L_n)``, ``l_hat = ln(1 + V(s_k)) / ln(gamma)``, over EOS-terminated
            completions. NaN values when no completion ended with EOS.
        num_prompts, num_completions, num_censored: counts of distinct prompts, records, and records
            with ``finish_reason == "length"``.
    """

    value_mse: float
    prompt_mre: float
    prompt_mre_se: float
    positionwise_re: dict[float, float]
    num_prompts: int
    num_completions: int
    num_censored: int


def constant_baseline_value(train_records: Sequence[dict], gamma: float, *, censored: str = "infinite") -> float:
    """The training set's mean in value space: ``mean_n G_0`` with ``G_0 = -(1 - gamma**L_n)``.

    This is the constant that minimises the MSE to ``G_0`` on the training set, i.e. the best
    prompt-blind prediction of ``V(s_0)``, under the same censoring policy as training
    (:mod:`lenvm_rl.data.value_dataset`): ``"infinite"`` counts a censored record as ``G_0 = -1``,
    ``"drop"`` leaves it out.

    Raises:
        ValueError: no record, a malformed record, or (``"drop"``) no record that ended with EOS.
    """
    if censored not in ("infinite", "drop"):
        raise ValueError(f"censored must be 'infinite' or 'drop', got {censored!r}")
    records = [rec for group in group_by_prompt(train_records).values() for rec in group]
    ended = [rec["finish_reason"] == "eos" for rec in records]
    if censored == "drop":
        records = [rec for rec, e in zip(records, ended) if e]
        ended = [True] * len(records)
        if not records:
            raise ValueError("none of the training records ended with EOS (all censored) and censored='drop' "
                             "leaves none for the constant baseline")
    lengths = torch.tensor([rec["completion_length"] if e else math.inf for rec, e in zip(records, ended)])
    return length_to_value(lengths, gamma).mean().item()


def evaluate_lenvm(model: LenVM, records: Sequence[dict], *, batch_size: int = 16,
                   progress: bool = False) -> LenVMEvaluation:
    """Evaluate ``model`` on rollout ``records`` with its own discount ``model.gamma``.

    Each record's full sequence ``prompt_ids + completion_ids`` is scored once (one
    :meth:`LenVM.score` call, in eval mode; the model's train/eval mode is restored afterwards), and
    those values feed all three metrics. ``V(s_0)`` of a prompt is read at position ``P - 1`` of the
    sequence of its lowest ``sample_index`` (all of a prompt's sequences share that prefix, so any
    would give it up to float noise). Results do not depend on the order of ``records``.

    Records sampled with another vocabulary than the LenVM's are refused; records whose prompts were formatted
    unlike the LenVM's training prompts (raw against chat, another chat template) log a warning
    (:func:`~lenvm_rl.data.rollouts.rollout_encoding`, :func:`~lenvm_rl.data.format_mismatch`).

    Raises:
        ValueError: see :func:`evaluate_constant`; or another vocabulary.
    """
    groups = group_by_prompt(records)
    encoding = rollout_encoding(records)
    check_vocabulary(model, (encoding.sampler, encoding.vocabulary_hash),
                     names=("the LenVM", "the sampler of the records"))
    why = format_mismatch(model, encoding.prompt_format, encoding.chat_template_hash)
    if why:
        logger.warning("evaluating on these records: %s", why)
    ordered = [rec for group in groups.values() for rec in group]
    was_training = model.training
    model.eval()
    try:
        scored = model.score([rec["prompt_ids"] + rec["completion_ids"] for rec in ordered],
                             batch_size=batch_size, progress=progress)
    finally:
        model.train(was_training)
    return _evaluate(groups, [out.values for out in scored], model.gamma)


def evaluate_constant(value: float, records: Sequence[dict], gamma: float) -> LenVMEvaluation:
    """The metrics of :func:`evaluate_lenvm` for a predictor that outputs ``V = value`` at every state.

    Args:
        value: the constant value, in ``[-1, 0]`` (e.g. :func:`constant_baseline_value`).
        records: rollout records.
        gamma: the discount in which targets and lengths are computed.

    Raises:
        ValueError: ``records`` is empty; a record's ``completion_length`` is not ``len(completion_ids)``;
            an unknown ``finish_reason``; an EOS-terminated record with no completion token; empty
            ``prompt_ids``; or records of one ``prompt_index`` with different ``prompt_ids``.
    """
    groups = group_by_prompt(records)
    sequence_values = [torch.full((len(rec["prompt_ids"]) + rec["completion_length"],), float(value))
                       for group in groups.values() for rec in group]
    return _evaluate(groups, sequence_values, gamma)


def format_report(rows: dict[str, LenVMEvaluation],
                  references: dict[str, tuple[float, float]] | None = None) -> str:
    """A plain-text table with one row per named evaluation, all on the same records.

    The header line gives the numbers of prompts, completions and censored completions; the columns
    are value MSE, prompt MRE and the positionwise relative errors (errors in percent). The prompt MRE
    cell reads ``mean ± standard error`` over prompts; a metric a row does not predict (NaN, e.g. the
    value MSE of :func:`evaluate_prompt_length_baseline`) prints as ``—``.

    Args:
        rows: named evaluations, in display order.
        references: optional named ``(prompt MRE, standard error)`` pairs shown as extra rows below them, with
            ``—`` in the other columns, e.g. ``{NOISE_FLOOR_ROW: noise_floor(...), SPLIT_HALF_ROW: ...}``.
    """
    if not rows:
        raise ValueError("rows is empty: nothing to report")
    first = next(iter(rows.values()))
    counts = (first.num_prompts, first.num_completions, first.num_censored)
    for name, row in rows.items():
        if (row.num_prompts, row.num_completions, row.num_censored) != counts:
            raise ValueError(f"row {name!r} was evaluated on other records than the first row; "
                             "a report compares predictors on the same records")
    columns = ["value MSE", "prompt MRE"] + [f"RE@{f:.0%}" for f in first.positionwise_re]

    def number(x: float, spec: str) -> str:
        return "—" if math.isnan(x) else format(x, spec)

    def mre(mean: float, se: float) -> str:
        return number(mean, ".1%") if math.isnan(se) or math.isnan(mean) else f"{mean:.1%} ± {se:.1%}"

    cells = {name: [number(row.value_mse, ".4g"), mre(row.prompt_mre, row.prompt_mre_se)]
             + [number(e, ".1%") for e in row.positionwise_re.values()] for name, row in rows.items()}
    for name, (mean, se) in (references or {}).items():
        cells[name] = ["—", mre(mean, se)] + ["—"] * len(first.positionwise_re)
    name_width = max(len("model"), *(len(name) for name in cells))
    widths = [max(len(column), 10, *(len(c[i]) for c in cells.values())) for i, column in enumerate(columns)]
    lines = [
        f"{counts[0]} prompts / {counts[1]} completions / {counts[2]} censored",
        "  ".join([f"{'model':<{name_width}}"] + [f"{c:>{w}}" for c, w in zip(columns, widths)]),
    ]
    for name, row_cells in cells.items():
        lines.append("  ".join([f"{name:<{name_width}}"] + [f"{c:>{w}}" for c, w in zip(row_cells, widths)]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- prompt-length baseline, references


@dataclass(frozen=True)
class PromptLengthBaseline:
    """A line in value space: a prompt's expected ``V(s_0)`` against its number of prompt tokens.

    Predicts ``V_hat = slope * P + intercept`` for a prompt of ``P = len(prompt_ids)`` tokens, clamped into
    ``[min_value, -(1 - gamma)]`` (a length of at least 1 token, and no longer than the fit ever saw), and
    turns it into the length ``ln(1 + V_hat) / ln(gamma)`` of the discount ``gamma`` the fit used
    (:func:`prompt_length_baseline`). It predicts at the prompt boundary only.
    """

    slope: float
    intercept: float
    gamma: float
    min_value: float

    def predict_lengths(self, records: Sequence[dict]) -> Tensor:
        """Float32 ``(N,)`` predicted lengths, one per prompt of ``records`` in ascending ``prompt_index``
        (the order of :func:`~lenvm_rl.data.group_by_prompt`)."""
        return self._predict(group_by_prompt(records))

    def _predict(self, groups: dict[int, list[dict]]) -> Tensor:
        prompt_tokens = torch.tensor([len(group[0]["prompt_ids"]) for group in groups.values()], dtype=torch.float64)
        values = (self.slope * prompt_tokens + self.intercept).clamp(min=self.min_value, max=-(1.0 - self.gamma))
        return value_to_length(values, self.gamma).float()


def prompt_length_baseline(train_records: Sequence[dict], gamma: float) -> PromptLengthBaseline:
    """Fit :class:`PromptLengthBaseline` on training rollouts: ordinary least squares
    (:func:`~lenvm_rl.core.fit_linear`) of ``y_n = mean_i -(1 - gamma**L_ni)`` over the sampled completions of
    training prompt ``n`` (censored ones at their lower bound ``L_i``, as in the prompt MRE) on
    ``x_n = len(prompt_ids)``, one point per prompt.

    The fit is in value space because ``gamma**L`` of one sample is an unbiased estimate of the prompt's
    ``E[gamma**L]``, whereas its length is not an unbiased estimate of the return-consistent length
    ``ln E[gamma**L] / ln gamma`` (with one sample per prompt a fit of lengths would fit the *mean* length, which
    Jensen's inequality makes longer). So the baseline is fair whatever the number of samples per prompt.

    Raises:
        ValueError: no or malformed records, fewer than 2 training prompts, or all training prompts of the same
            length (the slope is undefined).
    """
    groups = group_by_prompt(train_records)
    if len(groups) < 2:
        raise ValueError(f"the prompt-length baseline needs at least 2 training prompts, got {len(groups)}")
    lengths, mask = _group_lengths(groups)
    returns = torch.where(mask, length_to_value(lengths.double(), gamma), 0.0)
    targets = returns.sum(dim=1) / mask.sum(dim=1)
    prompt_tokens = torch.tensor([len(group[0]["prompt_ids"]) for group in groups.values()], dtype=torch.float64)
    if bool((prompt_tokens == prompt_tokens[0]).all()):
        raise ValueError(f"all {len(groups)} training prompts have {int(prompt_tokens[0])} tokens: the slope of the "
                         "prompt-length baseline is undefined")
    slope, intercept = fit_linear(prompt_tokens, targets)
    return PromptLengthBaseline(slope=slope, intercept=intercept, gamma=gamma, min_value=targets.min().item())


def evaluate_prompt_length_baseline(baseline: PromptLengthBaseline, records: Sequence[dict]) -> LenVMEvaluation:
    """The prompt MRE (and its standard error) of ``baseline`` on ``records``, in its own ``baseline.gamma``.

    It predicts ``L_hat`` at ``s_0`` only, so ``value_mse`` and ``positionwise_re`` are NaN (``—`` in
    :func:`format_report`).

    Raises:
        ValueError: no or malformed records (see :func:`evaluate_constant`).
    """
    groups = group_by_prompt(records)
    prompt_mre, prompt_mre_se = _prompt_mre(baseline._predict(groups), groups, baseline.gamma)
    return LenVMEvaluation(
        value_mse=math.nan,
        prompt_mre=prompt_mre,
        prompt_mre_se=prompt_mre_se,
        positionwise_re=dict.fromkeys(FRACTIONS, math.nan),
        num_prompts=len(groups),
        num_completions=sum(len(group) for group in groups.values()),
        num_censored=sum(rec["finish_reason"] == "length" for group in groups.values() for rec in group),
    )


def noise_floor(records: Sequence[dict], gamma: float, *, num_bootstrap: int = 200,
                seed: int = 0) -> tuple[float, float]:
    """The prompt MRE an oracle gets on ``records``: ``(mean, standard error)`` over prompts.

    The oracle knows each prompt's true ``E[gamma**L]``; its error comes only from ``L_GT`` being estimated
    from the prompt's ``K`` samples. Per prompt this is :func:`~lenvm_rl.core.noise_floor_relative_errors`, a
    nonparametric bootstrap (``num_bootstrap`` resamples, seeded by ``seed``) that slightly underestimates the
    floor. No predictor of ``L_GT`` can expect a lower prompt MRE on these records. Censored samples count at
    their lower bound, as in the prompt MRE.

    Raises:
        ValueError: no or malformed records, or a prompt with fewer than 2 samples.
    """
    groups = group_by_prompt(records)
    _at_least_two_samples(groups, "the noise floor")
    lengths, mask = _group_lengths(groups)
    generator = torch.Generator().manual_seed(seed)
    errors = noise_floor_relative_errors(lengths, gamma, num_bootstrap=num_bootstrap, generator=generator, mask=mask)
    return mean_and_standard_error(errors)


def split_half_mre(records: Sequence[dict], gamma: float, *, num_splits: int = 20,
                   seed: int = 0) -> tuple[float, float]:
    """The prompt MRE of half of each prompt's samples predicting the other half: ``(mean, standard error)``
    over prompts.

    Per prompt this is :func:`~lenvm_rl.core.split_half_relative_errors` (``num_splits`` random splits, seeded
    by ``seed``; both halves predict each other). It is what re-sampling the prompt ``K/2`` times achieves
    against a ``K/2``-sample ground truth. Censored samples count at their lower bound, as in the prompt MRE.

    Raises:
        ValueError: no or malformed records, or a prompt with fewer than 2 samples.
    """
    groups = group_by_prompt(records)
    _at_least_two_samples(groups, "the split-half MRE")
    lengths, mask = _group_lengths(groups)
    generator = torch.Generator().manual_seed(seed)
    return mean_and_standard_error(split_half_relative_errors(lengths, gamma, num_splits=num_splits,
                                                              generator=generator, mask=mask))


# ----------------------------------------------------------------------------- policy evaluation


@dataclass
class PolicyEvaluation:
    """Lengths and GSM8K answers of a policy's completions: one row of the before/after table.

    Every metric is a mean over prompts of the per-prompt mean over its samples, and its ``*_se`` is the
    standard error of that mean *over prompts* (:func:`~lenvm_rl.core.mean_and_standard_error` of the
    per-prompt means): prompts are the independent units, the samples of one prompt are correlated.
    With the same number of samples per prompt the mean equals the plain mean over completions. An
    ``*_se`` is NaN with fewer than two prompts.

    Attributes:
        mean_length: completion tokens, EOS included; a completion cut at the length limit counts the
            tokens it has (a lower bound of its length).
        truncated_frac: fraction of completions with ``finish_reason == "length"`` (no EOS).
        answer_rate: fraction with a parseable ``#### N`` answer (:func:`lenvm_rl.rewards.gsm8k_format_reward`).
        accuracy: fraction whose answer equals the gold one (:func:`lenvm_rl.rewards.gsm8k_correctness_reward`).
        num_prompts, num_completions: counts of distinct prompts and of records.
    """

    mean_length: float
    mean_length_se: float
    truncated_frac: float
    truncated_frac_se: float
    answer_rate: float
    answer_rate_se: float
    accuracy: float
    accuracy_se: float
    num_prompts: int
    num_completions: int


POLICY_COLUMNS = {"mean_length": "mean length", "truncated_frac": "truncated", "answer_rate": "answer rate",
                  "accuracy": "accuracy"}
"""The metrics of a :class:`PolicyEvaluation` (each has a ``*_se`` companion) and their column titles."""


def policy_prompt_means(records: Sequence[dict], answers, tokenizer) -> dict[str, torch.Tensor]:
    """Per-prompt means of each :data:`POLICY_COLUMNS` metric, plus the prompts they belong to.

    Returns ``{"prompt_index": (P,) long, "mean_length": (P,), "truncated_frac": (P,), "answer_rate": (P,),
    "accuracy": (P,)}``, prompts in ascending ``prompt_index``; each value is the mean over that prompt's
    samples. Arguments and errors as :func:`evaluate_policy`, which averages these over prompts.
    """
    from lenvm_rl.rewards import gsm8k_correctness_reward, gsm8k_format_reward

    groups = group_by_prompt(records)
    ordered = [rec for group in groups.values() for rec in group]
    golds = []
    for rec in ordered:
        try:
            golds.append(answers[rec["prompt_index"]])
        except (IndexError, KeyError):
            raise ValueError(f"no gold answer for prompt_index={rec['prompt_index']}: answers has "
                             f"{len(answers)} entries, indexed by prompt_index") from None
    texts = tokenizer.batch_decode([rec["completion_ids"] for rec in ordered], skip_special_tokens=True)
    per_completion = {
        "mean_length": [rec["completion_length"] for rec in ordered],
        "truncated_frac": [rec["finish_reason"] == "length" for rec in ordered],
        "answer_rate": gsm8k_format_reward(texts),
        "accuracy": gsm8k_correctness_reward(texts, answer=golds),
    }
    group_sizes = [len(group) for group in groups.values()]
    means = {"prompt_index": torch.tensor(list(groups), dtype=torch.long)}
    for name, values in per_completion.items():
        per_prompt = torch.tensor(values, dtype=torch.float32).split(group_sizes)
        means[name] = torch.tensor([mean_and_standard_error(x)[0] for x in per_prompt])
    return means


def evaluate_policy(records: Sequence[dict], answers, tokenizer) -> PolicyEvaluation:
    """Mean length, truncated fraction, answer rate and accuracy of rollout ``records``, with standard errors.

    Each metric is averaged over a prompt's samples, then over prompts (:func:`policy_prompt_means`); the
    standard error is over prompts.

    Args:
        records: rollout records (:mod:`lenvm_rl.data.rollouts`), e.g. ``n`` samples of each held-out prompt.
        answers: the gold answer of each prompt, indexed by the records' ``prompt_index`` (a list whose
            entry ``i`` belongs to ``prompt_index == i``, or a mapping); a full GSM8K solution ending in
            ``#### N`` or a bare number.
        tokenizer: decodes ``completion_ids`` (special tokens skipped) into the text that is parsed.

    Raises:
        ValueError: malformed records (see :func:`~lenvm_rl.data.group_by_prompt`), a prompt with no gold
            answer, or a gold answer that is not a number.
    """
    means = policy_prompt_means(records, answers, tokenizer)
    row = {}
    for name in POLICY_COLUMNS:
        row[name], row[f"{name}_se"] = mean_and_standard_error(means[name])
    return PolicyEvaluation(**row, num_prompts=len(means["prompt_index"]), num_completions=len(records))


def paired_policy_difference(means_a: dict[str, torch.Tensor], means_b: dict[str, torch.Tensor]) -> dict:
    """Policy A minus policy B on the same held-out prompts, paired by prompt: ``{metric: (mean, se)}``.

    For each :data:`POLICY_COLUMNS` metric, ``d_p = a_p - b_p`` of the per-prompt means
    (:func:`policy_prompt_means`), then the mean of ``d`` and its standard error over prompts
    (:func:`~lenvm_rl.core.mean_and_standard_error`). Pairing removes the prompt-to-prompt spread both
    policies share, so the difference is usually far tighter than the two unpaired errors suggest.

    Raises:
        ValueError: when the two cover different prompts.
    """
    if not torch.equal(means_a["prompt_index"], means_b["prompt_index"]):
        raise ValueError(f"paired differences need the same prompts: {len(means_a['prompt_index'])} vs "
                         f"{len(means_b['prompt_index'])} prompts, or other prompt_index values")
    return {name: mean_and_standard_error(means_a[name] - means_b[name]) for name in POLICY_COLUMNS}


def format_policy_table(rows: dict[str, PolicyEvaluation]) -> str:
    """A plain-text table, one row per named evaluation (e.g. ``before`` and ``after`` training), each cell
    ``mean ± standard error``; all rows must cover the same numbers of prompts and completions."""
    if not rows:
        raise ValueError("rows is empty: nothing to report")
    first = next(iter(rows.values()))
    counts = (first.num_prompts, first.num_completions)
    for name, row in rows.items():
        if (row.num_prompts, row.num_completions) != counts:
            raise ValueError(f"row {name!r} covers {row.num_prompts} prompts / {row.num_completions} completions, "
                             f"the first row {counts[0]} / {counts[1]}; a table compares the same held-out set")

    def cell(row: PolicyEvaluation, name: str) -> str:
        mean, se = getattr(row, name), getattr(row, f"{name}_se")
        if name == "mean_length":
            return f"{mean:.1f} ± {se:.1f}"
        return f"{mean:.1%} ± {se:.1%}"

    cells = {name: [cell(row, metric) for metric in POLICY_COLUMNS] for name, row in rows.items()}
    name_width = max(len("policy"), *(len(name) for name in rows))
    titles = list(POLICY_COLUMNS.values())
    widths = [max(len(title), *(len(c[i]) for c in cells.values())) for i, title in enumerate(titles)]
    lines = [
        f"{counts[0]} held-out prompts / {counts[1]} completions; mean ± standard error over prompts",
        "  ".join([f"{'policy':<{name_width}}"] + [f"{t:>{w}}" for t, w in zip(titles, widths)]),
    ]
    for name, row_cells in cells.items():
        lines.append("  ".join([f"{name:<{name_width}}"] + [f"{c:>{w}}" for c, w in zip(row_cells, widths)]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers


def _evaluate(groups: dict[int, list[dict]], sequence_values: list[Tensor], gamma: float) -> LenVMEvaluation:
    """Metrics from per-record values over full sequences.

    Args:
        groups: validated records from :func:`group_by_prompt`.
        sequence_values: one 1-D tensor of length ``P + L`` per record, in the order of
            ``groups`` flattened; entry ``j`` is the value at full-sequence position ``j``.
    """
    records = [rec for group in groups.values() for rec in group]
    prompt_lengths = torch.tensor([len(rec["prompt_ids"]) for rec in records])
    completion_lengths = torch.tensor([rec["completion_length"] for rec in records])
    terminated = torch.tensor([rec["finish_reason"] == "eos" for rec in records])

    # Right-padded (N, S) values in full-sequence space.
    values = pad_sequence([v.float() for v in sequence_values], batch_first=True)
    attention_mask = pad_sequence([torch.ones(len(v), dtype=torch.bool) for v in sequence_values], batch_first=True)
    targets, target_mask = monte_carlo_targets(attention_mask, prompt_lengths, completion_lengths, terminated, gamma)

    # V(s_0) at the last prompt token of each prompt's first record; every sampled length, censored
    # ones as lower bounds.
    first_rows = torch.tensor([0] + [len(group) for group in groups.values()][:-1]).cumsum(0)
    s0_values = values[first_rows, prompt_lengths[first_rows] - 1]
    prompt_mre, prompt_mre_se = _prompt_mre(value_to_length(s0_values, gamma), groups, gamma)

    if terminated.any():
        value_mse = value_regression_loss(values, targets, target_mask).item()
        # Completion-aligned V(s_t), t = 0 .. L-1: every target position but the EOS one; the prompt
        # and padding positions are masked (not time steps), so this is a left/right-padded (B, T).
        positions = torch.arange(values.shape[1])
        before_eos = positions < (prompt_lengths + completion_lengths - 1)[:, None]
        step_mask = target_mask & before_eos
        errors = positionwise_relative_error(values[terminated], step_mask[terminated], FRACTIONS, gamma=gamma)
        positionwise_re = dict(zip(FRACTIONS, errors.tolist()))
    else:
        value_mse = float("nan")
        positionwise_re = dict.fromkeys(FRACTIONS, float("nan"))

    return LenVMEvaluation(
        value_mse=value_mse,
        prompt_mre=prompt_mre,
        prompt_mre_se=prompt_mre_se,
        positionwise_re=positionwise_re,
        num_prompts=len(groups),
        num_completions=len(records),
        num_censored=int((~terminated).sum()),
    )


def _group_lengths(groups: dict[int, list[dict]]) -> tuple[Tensor, Tensor]:
    """Right-padded ``(N, K)`` completion lengths of each prompt (censored ones at their lower bound) and the
    bool validity mask, in the order of ``groups``."""
    group_lengths = [torch.tensor([rec["completion_length"] for rec in group]) for group in groups.values()]
    lengths = pad_sequence(group_lengths, batch_first=True)
    mask = pad_sequence([torch.ones(len(g), dtype=torch.bool) for g in group_lengths], batch_first=True)
    return lengths, mask


def prompt_errors_of_groups(predicted_lengths: Tensor, groups: dict[int, list[dict]], gamma: float) -> Tensor:
    """``(P,)`` per-prompt relative errors (:func:`~lenvm_rl.core.prompt_relative_errors`) of ``(P,)`` predicted
    lengths in the order of ``groups``."""
    lengths, mask = _group_lengths(groups)
    return prompt_relative_errors(predicted_lengths, lengths, gamma, mask)


def _prompt_mre(predicted_lengths: Tensor, groups: dict[int, list[dict]], gamma: float) -> tuple[float, float]:
    """Prompt MRE and its standard error over prompts, for ``(P,)`` predicted lengths in the order of ``groups``."""
    return mean_and_standard_error(prompt_errors_of_groups(predicted_lengths, groups, gamma))


def _at_least_two_samples(groups: dict[int, list[dict]], what: str) -> None:
    for index, group in groups.items():
        if len(group) < 2:
            raise ValueError(f"{what} needs at least 2 samples per prompt; prompt_index={index} has {len(group)}")


def sample_and_evaluate_policy(policy, tokenizer, prompts: Sequence, answers, path, config, *, model_name: str,
                               progress: bool = True) -> PolicyEvaluation:
    """Sample ``policy`` afresh on held-out ``prompts`` and score the samples (:func:`evaluate_policy`).

    The rollouts (``config``: a :class:`~lenvm_rl.data.RolloutConfig`, e.g. ``n`` samples per prompt at the
    training temperature and length limit) are written to ``path``; a file already there is deleted first,
    since another policy may have written it: an evaluation is never resumed. ``answers[i]`` is the gold
    answer of ``prompts[i]``. Runs where it is called: under several processes, call it on one.
    """
    from pathlib import Path

    from lenvm_rl.data.rollouts import sample_rollouts

    Path(path).unlink(missing_ok=True)
    records = sample_rollouts(policy, tokenizer, prompts, path, config, model_name=model_name, progress=progress)
    return evaluate_policy(records, answers, tokenizer)
