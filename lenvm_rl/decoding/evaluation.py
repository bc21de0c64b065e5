"""Evaluating length control: the LIFEBench length score, and accuracy against length for tilting vs a token budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lenvm_rl.core import length_score
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
    "tradeoff_sweep",
]


@dataclass(frozen=True)
class LengthReport:
    """Means over completions: LIFEBench length ``score`` (0-100), signed ``deviation`` ``LD``, ``abs_deviation``."""

    score: float
    deviation: float
    abs_deviation: float
    mean_length: float
    n: int


def length_report(output_lengths: Sequence[int], target_lengths: Sequence[int] | int, constraint: str) -> LengthReport:
    """LIFEBench length score and deviation ``LD = (L_out - L_target) / L_target`` of completions.

    The score is :func:`lenvm_rl.core.length_score` (``constraint`` ``"equal"``, ``"at_most"`` or
    ``"at_least"``); one target for all, or one per completion.
    """
    out = torch.as_tensor(list(output_lengths), dtype=torch.float32)
    if out.numel() == 0:
        raise ValueError("output_lengths is empty")
    target = torch.as_tensor(target_lengths, dtype=torch.float32).expand_as(out) if isinstance(
        target_lengths, int) else torch.as_tensor(list(target_lengths), dtype=torch.float32)
    scores = length_score(out, target, constraint)  # checks the constraint, the shapes and target > 0
    deviation = (out - target) / target
    return LengthReport(score=scores.mean().item(), deviation=deviation.mean().item(),
                        abs_deviation=deviation.abs().mean().item(), mean_length=out.mean().item(), n=out.numel())


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
    """One point of the trade-off: ``method`` ``"tilt"`` (``setting`` = beta) or ``"budget"`` (``setting`` = B)."""

    method: str
    setting: float
    accuracy: float
    mean_length: float


def budget_baseline(completions: Sequence[GuidedCompletion], correct: Sequence[bool], budget: int) -> TradeoffPoint:
    """A hard token budget ``B`` on unguided completions: a completion longer than ``B`` (or cut without
    EOS) is truncated at ``B`` and counts as wrong; its length counts as ``min(L, B)``."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if len(completions) != len(correct) or not completions:
        raise ValueError(f"need one correctness flag per completion, got {len(correct)} for {len(completions)}")
    kept = [ok and c.finish_reason == "eos" and c.length <= budget for c, ok in zip(completions, correct)]
    return TradeoffPoint("budget", float(budget), sum(kept) / len(kept),
                         sum(min(c.length, budget) for c in completions) / len(completions))


def tradeoff_sweep(
    policy, tokenizer, lenvm, prompts: list, answers: list[str], *, betas: Sequence[float], budgets: Sequence[int],
    max_new_tokens: int = 512, top_k: int = 16, top_p: float = 1.0, min_p: float = 0.0, temperature: float = 1.0,
    do_sample: bool = False, batch_size: int = 8, seed: int = 0, progress: Callable[[str], None] | None = None,
) -> list[TradeoffPoint]:
    """GSM8K accuracy against mean length: tilting with each ``beta`` vs a hard budget on unguided decoding.

    The budget points reuse the unguided completions (``beta`` = 0 without the LenVM), truncated at each
    budget (:func:`budget_baseline`); correctness is :func:`lenvm_rl.rewards.gsm8k_correctness_reward`.
    """
    from lenvm_rl.rewards import gsm8k_correctness_reward

    def run(lenvm_or_none, beta):
        out = guided_generate(policy, tokenizer, prompts, lenvm=lenvm_or_none, max_new_tokens=max_new_tokens,
                              do_sample=do_sample, batch_size=batch_size, seed=seed,
                              guidance=GuidanceConfig(beta=beta, top_k=top_k, top_p=top_p, min_p=min_p,
                                                      temperature=temperature))
        correct = [r > 0 for r in gsm8k_correctness_reward([c.text for c in out], answers)]
        return out, correct

    base, base_correct = run(None, 0.0)
    points = [TradeoffPoint("tilt", 0.0, sum(base_correct) / len(base), sum(c.length for c in base) / len(base))]
    points += [budget_baseline(base, base_correct, b) for b in budgets]
    for beta in betas:
        if beta == 0.0:
            continue
        out, correct = run(lenvm, beta)
        mean_length = sum(c.length for c in out) / len(out)
        points.append(TradeoffPoint("tilt", float(beta), sum(correct) / len(out), mean_length))
        if progress:
            progress(f"beta {beta}: accuracy {points[-1].accuracy:.3f}, mean length {points[-1].mean_length:.1f}")
    return points


def plot_tradeoff(points: Sequence[TradeoffPoint], path: str | Path, title: str = "accuracy vs length") -> Path:
    """Accuracy against mean length, one line per method, each point labelled with its setting; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker, label in (("tilt", "o", "LenVM tilt (beta)"), ("budget", "s", "token budget B")):
        pts = sorted((p for p in points if p.method == method), key=lambda p: p.mean_length)
        if not pts:
            continue
        ax.plot([p.mean_length for p in pts], [p.accuracy for p in pts], marker=marker, label=label)
        for p in pts:
            ax.annotate(f"{p.setting:g}", (p.mean_length, p.accuracy), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    ax.set_xlabel("mean completion length (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
