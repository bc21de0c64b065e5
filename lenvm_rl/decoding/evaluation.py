"""Evaluating length control: the LIFEBench length score, and accuracy against length for tilting vs a token budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lenvm_rl.core import length_score, lifebench_word_count, mean_and_standard_error
from lenvm_rl.data.prompts import to_messages
from lenvm_rl.decoding.generate import GuidedCompletion, guided_generate
from lenvm_rl.decoding.guidance import GuidanceConfig

__all__ = [
    "LengthReport",
    "TradeoffPoint",
    "UNITS",
    "answer_length",
    "average_over_targets",
    "budget_baseline",
    "length_instruction",
    "length_report",
    "length_score_benchmark",
    "lenvm_token_target",
    "plot_tradeoff",
    "tilt_point",
    "tradeoff_arm",
    "tradeoff_point",
    "tradeoff_sweep",
]


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    """:func:`lenvm_rl.core.mean_and_standard_error` of plain numbers (flags count as 0/1)."""
    return mean_and_standard_error(torch.tensor([float(v) for v in values], dtype=torch.float64))


@dataclass(frozen=True)
class LengthReport:
    """Means over ``n`` completions: LIFEBench length ``score`` (0-100), signed ``deviation`` ``LD``, ``abs_deviation``.

    ``score_se = s / sqrt(n)`` and ``mean_length_se`` likewise, ``s`` the sample standard deviation (``n - 1`` in
    the denominator) of the per-completion scores or lengths; NaN when ``n`` is 1 (every mean is NaN when ``n``
    is 0). ``dropped`` completions (length <= 1, with ``drop_short``) are not among the ``n``.
    """

    score: float
    deviation: float
    abs_deviation: float
    mean_length: float
    n: int
    score_se: float = math.nan
    mean_length_se: float = math.nan
    dropped: int = 0


def length_report(output_lengths: Sequence[int], target_lengths: Sequence[int] | int, constraint: str, *,
                  drop_short: bool = False) -> LengthReport:
    """LIFEBench length score and deviation ``LD = (L_out - L_target) / L_target`` of completions.

    The score is :func:`lenvm_rl.core.length_score` (``constraint`` ``"equal"``, ``"at_most"`` or
    ``"at_least"``); one target for all, or one per completion. ``score_se`` is the standard error of the mean
    score, ``sd(scores) / sqrt(n)`` (sample sd), and ``mean_length_se`` that of the mean length.
    ``drop_short`` leaves out completions of length <= 1 (LIFEBench's scorer drops such answers) and counts
    them in ``dropped``.
    """
    out = torch.as_tensor(list(output_lengths), dtype=torch.float32)
    if out.numel() == 0:
        raise ValueError("output_lengths is empty")
    target = torch.as_tensor(target_lengths, dtype=torch.float32).expand_as(out) if isinstance(
        target_lengths, int) else torch.as_tensor(list(target_lengths), dtype=torch.float32)
    scores = length_score(out, target, constraint)  # checks the constraint, the shapes and target > 0
    keep = out > 1 if drop_short else torch.ones_like(out, dtype=torch.bool)
    out, scores, deviation = out[keep], scores[keep], ((out - target) / target)[keep]
    score, score_se = _mean_se(scores.tolist())
    mean_length, mean_length_se = _mean_se(out.tolist())
    return LengthReport(score=score, deviation=deviation.mean().item(), abs_deviation=deviation.abs().mean().item(),
                        mean_length=mean_length, n=out.numel(), score_se=score_se, mean_length_se=mean_length_se,
                        dropped=int((~keep).sum()))


UNITS = ("tokens", "words")
"""Length units of a length instruction: the answer's tokens (EOS not counted), or its LIFEBench words."""

_INSTRUCTIONS = {
    "equal": "Answer in exactly {target} {unit}.",
    "at_most": "Answer in at most {target} {unit}.",
    "at_least": "Answer in at least {target} {unit}.",
}


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


def length_instruction(prompt, target: int, constraint: str = "equal", unit: str = "tokens") -> list[dict]:
    """The length target stated at the end of the (last) user message, in ``unit`` (``"tokens"`` or ``"words"``)."""
    if constraint not in _INSTRUCTIONS:
        raise ValueError(f"constraint must be one of {sorted(_INSTRUCTIONS)}, got {constraint!r}")
    _check_unit(unit)
    messages = [dict(m) for m in to_messages(prompt)]
    instruction = _INSTRUCTIONS[constraint].format(target=target, unit=unit)
    messages[-1]["content"] = f"{messages[-1]['content']}\n\n{instruction}"
    return messages


def answer_length(completion: GuidedCompletion, unit: str = "tokens") -> int:
    """The length a length instruction asks about: the answer's tokens, EOS not counted (``"tokens"``), or
    its words as LIFEBench counts them (``"words"``, :func:`lenvm_rl.core.lifebench_word_count` of the text)."""
    _check_unit(unit)
    if unit == "words":
        return lifebench_word_count(completion.text)
    return completion.length - int(completion.finish_reason == "eos")


def lenvm_token_target(target: int, unit: str = "tokens", tokens_per_word: float = 1.0) -> int:
    """The LenVM's token target (EOS included) for an answer of ``target`` tokens or words.

    ``T* = target + 1`` for tokens (the EOS), ``round(tokens_per_word * target) + 1`` for words. With the default
    ``tokens_per_word = 1`` a word target is taken as a token target, as the reference's LIFEBench client does.
    """
    _check_unit(unit)
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise ValueError(f"target must be a positive integer, got {target!r}")
    if not tokens_per_word > 0:
        raise ValueError(f"tokens_per_word must be > 0, got {tokens_per_word!r}")
    return (target if unit == "tokens" else max(1, round(tokens_per_word * target))) + 1


def length_score_benchmark(
    policy, tokenizer, lenvm, prompts: list, targets: Sequence[int], *, constraint: str = "equal",
    unit: str = "tokens", tokens_per_word: float = 1.0, top_k: int = 16, top_p: float = 1.0,
    min_p: float | None = None, do_sample: bool = False, temperature: float = 1.0, max_new_tokens_factor: float = 2.0,
    batch_size: int = 8, seed: int = 0, progress: Callable[[str], None] | None = None,
) -> dict[int, dict[str, LengthReport]]:
    """LIFEBench length score per target for three methods on the same prompts.

    ``"unguided"``: the plain prompt; ``"prompt-only"``: the target stated in the prompt
    (:func:`length_instruction`, in ``unit``); ``"lenvm"``: the same instructed prompt, decoded under the
    hard ``constraint`` of the LenVM at the token target :func:`lenvm_token_target`. Each answer is
    measured by :func:`answer_length` (tokens before EOS, or LIFEBench words); answers of length <= 1 are
    left out, as LIFEBench's scorer does (counted in ``LengthReport.dropped``). Completions may run to
    ``max_new_tokens_factor`` times the LenVM's token target. All three use the same candidate set and
    ``temperature``; ``min_p=None`` takes the hard constraint's default (:class:`GuidanceConfig`) for all three.
    :func:`average_over_targets` averages the per-target scores, as LIFEBench does.
    """
    results: dict[int, dict[str, LengthReport]] = {}
    for target in targets:
        instructed = [length_instruction(p, target, constraint, unit) for p in prompts]
        token_target = lenvm_token_target(target, unit, tokens_per_word)
        guided = GuidanceConfig(constraint=constraint, target=token_target, top_k=top_k, top_p=top_p, min_p=min_p,
                                temperature=temperature)
        base = GuidanceConfig(top_k=top_k, top_p=top_p, min_p=guided.min_p, temperature=temperature)
        kwargs = dict(max_new_tokens=max(1, int(max_new_tokens_factor * token_target)), do_sample=do_sample,
                      batch_size=batch_size, seed=seed)
        runs = {
            "unguided": guided_generate(policy, tokenizer, prompts, guidance=base, **kwargs),
            "prompt-only": guided_generate(policy, tokenizer, instructed, guidance=base, **kwargs),
            "lenvm": guided_generate(policy, tokenizer, instructed, lenvm=lenvm, guidance=guided, **kwargs),
        }
        results[target] = {name: length_report([answer_length(c, unit) for c in out], target, constraint,
                                               drop_short=True) for name, out in runs.items()}
        if progress:
            progress(f"target {target}: " + ", ".join(f"{k} LS {v.score:.1f}" for k, v in results[target].items()))
    return results


def average_over_targets(results: dict[int, dict[str, LengthReport]]) -> dict[str, float]:
    """Each method's length score averaged over targets, every target weighing the same (LIFEBench's average).

    The mean of the per-target mean scores; a target where every answer of a method was dropped (its score is
    NaN) is left out of that method's average, as LIFEBench leaves it out. NaN when no target is left.
    """
    methods = {name for rows in results.values() for name in rows}
    averages = {}
    for name in sorted(methods):
        scores = [rows[name].score for rows in results.values() if name in rows and not math.isnan(rows[name].score)]
        averages[name] = sum(scores) / len(scores) if scores else math.nan
    return averages


@dataclass(frozen=True)
class TradeoffPoint:
    """One point of the trade-off: ``method`` ``"tilt"`` (``setting`` = beta) or ``"budget"`` (``setting`` = B).

    Over ``n`` completions: ``accuracy`` (correct answers), ``answer_rate`` (a parseable ``#### N``,
    :func:`lenvm_rl.rewards.extract_answer`) and ``mean_length``, each with the standard error of its mean,
    ``s / sqrt(n)`` with ``s`` the sample standard deviation of the per-completion 0/1 flags or lengths
    (:func:`lenvm_rl.core.mean_and_standard_error`, as :func:`lenvm_rl.evaluation.evaluate_policy`; for a rate
    ``p`` that is ``sqrt(p (1 - p) / (n - 1))``); NaN when ``n`` is 1.
    """

    method: str
    setting: float
    accuracy: float
    mean_length: float
    answer_rate: float
    n: int
    accuracy_se: float
    answer_rate_se: float
    mean_length_se: float


def tradeoff_point(method: str, setting: float, lengths: Sequence[float], correct: Sequence[bool],
                   answered: Sequence[bool]) -> TradeoffPoint:
    """A :class:`TradeoffPoint` from per-completion lengths, correctness and answer flags (means and SEs)."""
    if not lengths or not len(lengths) == len(correct) == len(answered):
        raise ValueError(f"need as many (> 0) lengths, correctness and answer flags, got {len(lengths)}, "
                         f"{len(correct)} and {len(answered)}")
    accuracy, accuracy_se = _mean_se(correct)
    answer_rate, answer_rate_se = _mean_se(answered)
    mean_length, mean_length_se = _mean_se([float(x) for x in lengths])
    return TradeoffPoint(method=method, setting=float(setting), accuracy=accuracy, mean_length=mean_length,
                         answer_rate=answer_rate, n=len(lengths), accuracy_se=accuracy_se,
                         answer_rate_se=answer_rate_se, mean_length_se=mean_length_se)


def _answered(completions: Sequence[GuidedCompletion]) -> list[bool]:
    from lenvm_rl.rewards import gsm8k_format_reward

    return [r > 0 for r in gsm8k_format_reward([c.text for c in completions])]


def _check_flags(completions: Sequence[GuidedCompletion], correct: Sequence[bool]) -> None:
    if len(completions) != len(correct) or not completions:
        raise ValueError(f"need one correctness flag per completion, got {len(correct)} for {len(completions)}")


def tilt_point(completions: Sequence[GuidedCompletion], correct: Sequence[bool], beta: float) -> TradeoffPoint:
    """The ``"tilt"`` point of completions decoded with tilt ``beta`` (0: unguided), as they are.

    A completion is answered when its text has a parseable ``#### N``
    (:func:`lenvm_rl.rewards.extract_answer`, as :func:`lenvm_rl.rewards.gsm8k_format_reward`); its length
    is ``L`` (EOS included).
    """
    _check_flags(completions, correct)
    return tradeoff_point("tilt", beta, [c.length for c in completions], correct, _answered(completions))


def budget_baseline(completions: Sequence[GuidedCompletion], correct: Sequence[bool], budget: int) -> TradeoffPoint:
    """A hard token budget ``B`` on unguided completions.

    A completion longer than ``B`` (or cut without EOS) is truncated at ``B``: it counts as neither correct
    nor answered. An answer (for ``accuracy`` and ``answer_rate``) counts only when the completion ended
    with EOS within the budget (``finish_reason == "eos"`` and ``L <= B``); its length counts as
    ``min(L, B)``.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    _check_flags(completions, correct)
    fits = [c.finish_reason == "eos" and c.length <= budget for c in completions]
    return tradeoff_point("budget", budget, [min(c.length, budget) for c in completions],
                          [ok and fit for ok, fit in zip(correct, fits)],
                          [ok and fit for ok, fit in zip(_answered(completions), fits)])


def tradeoff_arm(
    policy, tokenizer, lenvm, prompts: list, answers: list[str], *, beta: float, max_new_tokens: int = 512,
    top_k: int = 16, top_p: float = 1.0, min_p: float | None = None, temperature: float = 1.0, do_sample: bool = False,
    batch_size: int = 8, seed: int = 0,
) -> tuple[list[GuidedCompletion], list[bool]]:
    """One arm of the trade-off: completions tilted with ``beta`` (``lenvm=None``: unguided) and their correctness
    (:func:`lenvm_rl.rewards.gsm8k_correctness_reward` against ``answers``)."""
    from lenvm_rl.rewards import gsm8k_correctness_reward

    out = guided_generate(policy, tokenizer, prompts, lenvm=lenvm, max_new_tokens=max_new_tokens,
                          do_sample=do_sample, batch_size=batch_size, seed=seed,
                          guidance=GuidanceConfig(beta=beta, top_k=top_k, top_p=top_p, min_p=min_p,
                                                  temperature=temperature))
    return out, [r > 0 for r in gsm8k_correctness_reward([c.text for c in out], answers)]


def tradeoff_sweep(
    policy, tokenizer, lenvm, prompts: list, answers: list[str], *, betas: Sequence[float], budgets: Sequence[int],
    max_new_tokens: int = 512, top_k: int = 16, top_p: float = 1.0, min_p: float | None = None,
    temperature: float = 1.0, do_sample: bool = False, batch_size: int = 8, seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[TradeoffPoint]:
    """GSM8K accuracy and answer rate against mean length: tilting with each ``beta`` vs a hard budget on unguided
    decoding.

    The unguided arm (:func:`tradeoff_arm` without the LenVM) gives the ``"tilt"`` point at beta 0
    (:func:`tilt_point`) and, truncated at each budget, the ``"budget"`` points (:func:`budget_baseline`);
    each nonzero ``beta`` is one more arm. Points come in that order.
    """
    arm = dict(max_new_tokens=max_new_tokens, top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature,
               do_sample=do_sample, batch_size=batch_size, seed=seed)
    base, base_correct = tradeoff_arm(policy, tokenizer, None, prompts, answers, beta=0.0, **arm)
    points = [tilt_point(base, base_correct, 0.0)]
    points += [budget_baseline(base, base_correct, b) for b in budgets]
    for beta in betas:
        if beta == 0.0:
            continue
        out, correct = tradeoff_arm(policy, tokenizer, lenvm, prompts, answers, beta=beta, **arm)
        points.append(tilt_point(out, correct, beta))
        if progress:
            p = points[-1]
            progress(f"beta {beta}: accuracy {p.accuracy:.3f}, answer rate {p.answer_rate:.3f}, "
                     f"mean length {p.mean_length:.1f}")
    return points


def plot_tradeoff(points: Sequence[TradeoffPoint], path: str | Path, title: str = "accuracy vs length") -> Path:
    """Two panels, accuracy and answer rate against mean length, one line per method with standard-error bars
    (both axes), each point labelled with its setting; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, field, ylabel in ((axes[0], "accuracy", "accuracy"), (axes[1], "answer_rate", "answer rate (#### N)")):
        for method, marker, label in (("tilt", "o", "LenVM tilt (beta)"), ("budget", "s", "token budget B")):
            pts = sorted((p for p in points if p.method == method), key=lambda p: p.mean_length)
            if not pts:
                continue
            ys = [getattr(p, field) for p in pts]
            ax.errorbar([p.mean_length for p in pts], ys, xerr=[p.mean_length_se for p in pts],
                        yerr=[getattr(p, f"{field}_se") for p in pts], marker=marker, capsize=3, label=label)
            for p, y in zip(pts, ys):
                ax.annotate(f"{p.setting:g}", (p.mean_length, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
        ax.set_xlabel("mean completion length (tokens)")
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.suptitle(title + " (bars: ±1 standard error)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
