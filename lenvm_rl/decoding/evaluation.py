"""Evaluating length control: the LIFEBench length score, and accuracy against length for tilting vs a token budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lenvm_rl.core import length_score, mean_and_standard_error
from lenvm_rl.data.prompts import to_messages
from lenvm_rl.decoding.generate import GuidedCompletion, guided_generate
from lenvm_rl.decoding.guidance import GuidanceConfig

__all__ = [
    "LengthReport",
    "TradeoffPoint",
    "budget_baseline",
    "length_instruction",
    "length_report",
    "length_score_benchmark",
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
    the denominator) of the per-completion scores or lengths; NaN when ``n`` is 1.
    """

    score: float
    deviation: float
    abs_deviation: float
    mean_length: float
    n: int
    score_se: float = math.nan
    mean_length_se: float = math.nan


def length_report(output_lengths: Sequence[int], target_lengths: Sequence[int] | int, constraint: str) -> LengthReport:
    """LIFEBench length score and deviation ``LD = (L_out - L_target) / L_target`` of completions.

    The score is :func:`lenvm_rl.core.length_score` (``constraint`` ``"equal"``, ``"at_most"`` or
    ``"at_least"``); one target for all, or one per completion. ``score_se`` is the standard error of the mean
    score, ``sd(scores) / sqrt(n)`` (sample sd), and ``mean_length_se`` that of the mean length.
    """
    out = torch.as_tensor(list(output_lengths), dtype=torch.float32)
    if out.numel() == 0:
        raise ValueError("output_lengths is empty")
    target = torch.as_tensor(target_lengths, dtype=torch.float32).expand_as(out) if isinstance(
        target_lengths, int) else torch.as_tensor(list(target_lengths), dtype=torch.float32)
    scores = length_score(out, target, constraint)  # checks the constraint, the shapes and target > 0
    deviation = (out - target) / target
    score, score_se = _mean_se(scores.tolist())
    mean_length, mean_length_se = _mean_se(out.tolist())
    return LengthReport(score=score, deviation=deviation.mean().item(), abs_deviation=deviation.abs().mean().item(),
                        mean_length=mean_length, n=out.numel(), score_se=score_se, mean_length_se=mean_length_se)


_INSTRUCTIONS = {
    "equal": "Answer in exactly {target} tokens.",
    "at_most": "Answer in at most {target} tokens.",
    "at_least": "Answer in at least {target} tokens.",
}


def length_instruction(prompt, target: int, constraint: str = "equal") -> list[dict]:
    """The prompt-only baseline: the length target stated at the end of the (last) user message."""
    if constraint not in _INSTRUCTIONS:
        raise ValueError(f"constraint must be one of {sorted(_INSTRUCTIONS)}, got {constraint!r}")
    messages = [dict(m) for m in to_messages(prompt)]
    messages[-1]["content"] = f"{messages[-1]['content']}\n\n{_INSTRUCTIONS[constraint].format(target=target)}"
    return messages


def length_score_benchmark(
    policy, tokenizer, lenvm, prompts: list, targets: Sequence[int], *, constraint: str = "equal",
    top_k: int = 16, top_p: float = 1.0, min_p: float = 0.0, do_sample: bool = False, temperature: float = 1.0,
    max_new_tokens_factor: float = 2.0, batch_size: int = 8, seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[int, dict[str, LengthReport]]:
    """Length score per target for three methods on the same prompts.

    ``"unguided"``: the policy alone; ``"prompt-only"``: the target stated in the prompt
    (:func:`length_instruction`); ``"lenvm"``: the plain prompt with the hard ``constraint`` of the
    LenVM. Completions may run to ``max_new_tokens_factor * target`` tokens. All three use the same
    candidate set (``top_k``, ``top_p``, ``min_p``) and ``temperature``.
    """
    candidates = dict(top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature)
    results: dict[int, dict[str, LengthReport]] = {}
    for target in targets:
        kwargs = dict(max_new_tokens=max(1, int(max_new_tokens_factor * target)), do_sample=do_sample,
                      batch_size=batch_size, seed=seed)
        base = GuidanceConfig(**candidates)
        runs = {
            "unguided": guided_generate(policy, tokenizer, prompts, guidance=base, **kwargs),
            "prompt-only": guided_generate(policy, tokenizer,
                                           [length_instruction(p, target, constraint) for p in prompts],
                                           guidance=base, **kwargs),
            "lenvm": guided_generate(policy, tokenizer, prompts, lenvm=lenvm, **kwargs,
                                     guidance=GuidanceConfig(constraint=constraint, target=target, **candidates)),
        }
        results[target] = {name: length_report([c.length for c in out], target, constraint)
                           for name, out in runs.items()}
        if progress:
            progress(f"target {target}: " + ", ".join(f"{k} LS {v.score:.1f}" for k, v in results[target].items()))
    return results


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
    top_k: int = 16, top_p: float = 1.0, min_p: float = 0.0, temperature: float = 1.0, do_sample: bool = False,
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
    max_new_tokens: int = 512, top_k: int = 16, top_p: float = 1.0, min_p: float = 0.0, temperature: float = 1.0,
    do_sample: bool = False, batch_size: int = 8, seed: int = 0, progress: Callable[[str], None] | None = None,
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
