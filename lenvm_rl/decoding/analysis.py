"""Length analysis of completions with a LenVM: TD residuals, "length tokens", and an HTML view of a trace.

Traces come from :meth:`lenvm_rl.predict.LengthPredictor.trace` (:class:`~lenvm_rl.predict.LengthTrace`:
entry 0 is ``s_0``, the last prompt token; entry ``t`` follows completion token ``t``).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lenvm_rl.core import length_rewards, td_residuals
from lenvm_rl.predict import LengthTrace

__all__ = ["LengthToken", "horizon_shifts", "length_tokens", "trace_html", "trace_td_residuals"]


def trace_td_residuals(trace: LengthTrace, gamma: float, *, ended: bool = True) -> torch.Tensor:
    """TD residuals along a trace (paper Eq. 16): ``delta_t = -(1 - gamma) + gamma V(s_{t+1}) - V(s_t)``.

    ``t = 0 .. L-1``; ``V(s_L)`` is 0 when the completion ``ended`` with EOS (terminal), else the
    trace's last value (a cut completion bootstraps). A consistent LenVM has residuals near 0;
    ``delta_t < 0`` means token ``t+1`` made the completion look longer than expected.

    Returns:
        float32 (L,), by :func:`lenvm_rl.core.td_residuals`.
    """
    values = trace.values[:-1].float()[None]
    if values.shape[1] == 0:
        return values.new_zeros(0)
    mask = torch.ones_like(values, dtype=torch.bool)
    final = values.new_zeros(1) if ended else trace.values[-1:].float()
    return td_residuals(length_rewards(mask, gamma), values, mask, final, gamma)[0]


def horizon_shifts(trace: LengthTrace) -> torch.Tensor:
    """How much each completion token moves the predicted end, in tokens: ``l(s_t) - (l(s_{t-1}) - 1)``.

    A token that tells the LenVM nothing new leaves the predicted end where it was (the remaining length
    just drops by the one token spent): shift 0. Positive shifts push the end later, negative earlier.

    Returns:
        float32 (L,), entry ``t - 1`` for token ``t``.
    """
    lengths = trace.lengths.float()
    return lengths[1:] - (lengths[:-1] - 1.0)


@dataclass(frozen=True)
class LengthToken:
    """A token's effect over a set of traces: occurrences, mean horizon shift, share of occurrences that raise it."""

    token: str
    count: int
    mean_shift: float
    raise_fraction: float


def length_tokens(traces: Sequence[LengthTrace], *, top: int = 10, min_count: int = 3,
                  include_last: bool = False) -> dict[str, list[LengthToken]]:
    """The tokens that most raise (``"raise"``) and most lower (``"lower"``) the predicted horizon.

    Tokens (decoded alone) are grouped over all traces; those seen at least ``min_count`` times are
    ranked by their mean :func:`horizon_shifts`. The last token of each trace (usually EOS, whose
    state is terminal) is left out unless ``include_last``.
    """
    if top < 1 or min_count < 1:
        raise ValueError(f"top and min_count must be >= 1, got {top}, {min_count}")
    shifts: dict[str, list[float]] = defaultdict(list)
    for trace in traces:
        values = horizon_shifts(trace).tolist()
        n = len(values) if include_last else len(values) - 1
        for token, shift in zip(trace.tokens[:n], values[:n]):
            if math.isfinite(shift):
                shifts[token].append(shift)
    stats = [LengthToken(tok, len(s), sum(s) / len(s), sum(x > 0 for x in s) / len(s))
             for tok, s in shifts.items() if len(s) >= min_count]
    ranked = sorted(stats, key=lambda x: x.mean_shift)
    return {"raise": [x for x in reversed(ranked) if x.mean_shift > 0][:top],
            "lower": [x for x in ranked if x.mean_shift < 0][:top]}


def _colour(length: float, scale: float) -> str:
    """Blue (about to end) through yellow to red (far from the end), on a log scale up to ``scale``."""
    x = 0.0 if not math.isfinite(length) else min(max(math.log1p(max(length, 0.0)) / math.log1p(scale), 0.0), 1.0)
    hue = 220 - 220 * x
    return f"hsl({hue:.0f}, 85%, 80%)"


def trace_html(trace: LengthTrace, *, gamma: float, title: str = "LenVM trace", prompt: str | None = None,
               ended: bool = True) -> str:
    """A self-contained HTML page: the completion coloured by predicted remaining length, numbers on hover.

    Each token's tooltip gives its index, id, ``V(s_t)``, predicted remaining tokens, horizon shift and
    TD residual.
    """
    lengths = trace.lengths.tolist()
    finite = [x for x in lengths if math.isfinite(x)]
    scale = max(max(finite, default=1.0), 1.0)
    deltas = trace_td_residuals(trace, gamma, ended=ended).tolist()
    shifts = horizon_shifts(trace).tolist()
    spans = []
    for t, (token, token_id) in enumerate(zip(trace.tokens, trace.token_ids), start=1):
        tip = (f"t={t} id={token_id} token={token!r}\nV={trace.values[t].item():.4f} remaining={lengths[t]:.1f}\n"
               f"shift={shifts[t - 1]:+.1f} TD={deltas[t - 1]:+.4f}")
        text = html.escape(token).replace("\n", "↵<br>")
        spans.append(f'<span style="background:{_colour(lengths[t], scale)}" title="{html.escape(tip)}">{text}</span>')
    head = (f"<p><b>prompt</b>: {html.escape(prompt)}</p>" if prompt else "") + (
        f"<p>predicted at the prompt boundary: {lengths[0]:.1f} tokens (V = {trace.values[0].item():.4f}); "
        f"{len(trace.tokens)} tokens generated; gamma = {gamma}. Colour: predicted remaining tokens, "
        f"<span style='background:{_colour(0, scale)}'>ending</span> to "
        f"<span style='background:{_colour(scale, scale)}'>{scale:.0f}+</span>; hover for the numbers.</p>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".c{font-family:monospace;white-space:pre-wrap;line-height:1.8}.c span{border-radius:2px}</style>"
        f"</head><body><h2>{html.escape(title)}</h2>{head}<div class='c'>{''.join(spans)}</div></body></html>\n"
    )
