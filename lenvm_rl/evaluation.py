"""Held-out evaluation of a LenVM on rollout records (LENVM.md §4), against a constant baseline.

>>> from lenvm_rl.data.rollouts import read_rollouts                          # doctest: +SKIP
>>> train, test = read_rollouts("train.jsonl"), read_rollouts("test.jsonl")   # doctest: +SKIP
>>> baseline = constant_baseline_value(train, model.gamma)                   # doctest: +SKIP
>>> print(format_report({                                                    # doctest: +SKIP
...     "LenVM": evaluate_lenvm(model, test),
...     "constant baseline": evaluate_constant(baseline, test, model.gamma),
... }))

Records are the rollout format of :mod:`lenvm_rl.data.rollouts`, one dict per completion. For a
record with ``P = len(prompt_ids)`` prompt tokens and ``L = completion_length`` completion tokens
(EOS included), the full sequence ``prompt_ids + completion_ids`` has ``P + L`` positions and state
``s_t`` (``t = 0 .. L``) sits at position ``P - 1 + t``: ``s_0`` is the last prompt token, ``s_L``
the EOS. Every formula comes from :mod:`lenvm_rl.core`.

Censoring. A completion cut at ``max_new_tokens`` (``finish_reason == "length"``) has an unknown
true length ``L* >= L``:

- value MSE and positionwise RE skip it (its targets are unknown);
- prompt MRE uses its ``L`` as a lower bound of ``L*`` inside the return-consistent ground truth,
  which biases ``L_GT`` short (towards the sampler's length limit) on prompts with censored samples;
- it is counted in ``num_censored``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from lenvm_rl.core import (
    length_to_value,
    monte_carlo_targets,
    positionwise_relative_error,
    prompt_boundary_mre,
    value_regression_loss,
)
from lenvm_rl.data.rollouts import group_by_prompt
from lenvm_rl.modeling import LenVM

__all__ = ["FRACTIONS", "LenVMEvaluation", "constant_baseline_value", "evaluate_constant", "evaluate_lenvm",
           "format_report"]

FRACTIONS = (0.0, 0.25, 0.5, 0.75)
"""Fractions of each trajectory at which the remaining-length relative error is reported."""

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
        positionwise_re: ``{f: mean_n |l_hat - (L_n - k)| / (L_n - k)}`` for ``f`` in :data:`FRACTIONS`,
            ``k = floor(f * L_n)``, ``l_hat = ln(1 + V(s_k)) / ln(gamma)``, over EOS-terminated
            completions. NaN values when no completion ended with EOS.
        num_prompts, num_completions, num_censored: counts of distinct prompts, records, and records
            with ``finish_reason == "length"``.
    """

    value_mse: float
    prompt_mre: float
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

    Raises:
        ValueError: see :func:`evaluate_constant`.
    """
    groups = group_by_prompt(records)
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


def format_report(rows: dict[str, LenVMEvaluation]) -> str:
    """A plain-text table with one row per named evaluation, all on the same records.

    The header line gives the numbers of prompts, completions and censored completions; the columns
    are value MSE, prompt MRE and the positionwise relative errors (errors in percent).
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
    name_width = max(len("model"), *(len(name) for name in rows))
    widths = [max(len(column), 10) for column in columns]
    lines = [
        f"{counts[0]} prompts / {counts[1]} completions / {counts[2]} censored",
        "  ".join([f"{'model':<{name_width}}"] + [f"{c:>{w}}" for c, w in zip(columns, widths)]),
    ]
    for name, row in rows.items():
        cells = [f"{row.value_mse:.4g}", f"{row.prompt_mre:.1%}"] + [f"{e:.1%}" for e in row.positionwise_re.values()]
        lines.append("  ".join([f"{name:<{name_width}}"] + [f"{c:>{w}}" for c, w in zip(cells, widths)]))
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
    group_lengths = [torch.tensor([rec["completion_length"] for rec in group]) for group in groups.values()]
    lengths = pad_sequence(group_lengths, batch_first=True)
    length_mask = pad_sequence([torch.ones(len(g), dtype=torch.bool) for g in group_lengths], batch_first=True)
    prompt_mre = prompt_boundary_mre(s0_values, lengths, gamma, length_mask).item()

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
        positionwise_re=positionwise_re,
        num_prompts=len(groups),
        num_completions=len(records),
        num_censored=int((~terminated).sum()),
    )
