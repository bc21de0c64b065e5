"""Markdown tables and the plot of the variant grid and the learning curve (:mod:`lenvm_rl.analysis.variants`,
:mod:`lenvm_rl.analysis.curve`): percentages with one decimal, ``MRE ± SE`` over prompts, ``—`` where a metric is
not measured, ``∞`` where a saturated head predicts ``V = -1``.
"""

from __future__ import annotations

import math
from pathlib import Path

from lenvm_rl.analysis.curve import (
    CURVE_PREDICTORS,
    MSE_PREDICTORS,
    PAIRED_PREDICTORS,
    PAIRED_REFERENCE,
    RECIPE_SEED_MEAN,
    RECIPE_TABLE,
    SEED_MEAN,
)
from lenvm_rl.analysis.heldout import HeldOut

__all__ = ["format_curve_table", "format_paired_table", "format_recipe_table", "format_variants_table", "plot_curve"]


def format_variants_table(rows: list[dict], sets: list[HeldOut]) -> str:
    """Markdown: one row per variant or reference, prompt MRE ± SE per held-out set, value MSE on the last set."""
    def mre(cell):
        if math.isinf(cell["prompt_mre"]):
            return f"∞ ({cell.get('num_infinite', '?')} prompts at V = -1)"
        return f"{cell['prompt_mre']:.1%} ± {cell['prompt_mre_se']:.1%}".replace("%", " %")

    def mse(cell):
        return "—" if math.isnan(cell["value_mse"]) else f"{cell['value_mse']:.4f}"

    titles = [f"prompt MRE ± SE, {s.name} ({len(s.groups)} prompts)" for s in sets]
    lines = ["| variant | " + " | ".join(titles) + f" | value MSE, {sets[-1].name} | train loss |",
             "|---|" + "---:|" * (len(sets) + 2)]
    for row in rows:
        loss = "" if row.get("train_loss") is None else f"{row['train_loss']:.4f}"
        cells = [mre(row["eval"][s.name]) for s in sets] + [mse(row["eval"][sets[-1].name]), loss]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_paired_table(rows: list[dict], sets: list[str]) -> str:
    """Markdown: per training row, the paired difference of each predictor of ``PAIRED_PREDICTORS`` found in the
    rows to ``PAIRED_REFERENCE``, in percentage points ± SE over prompts, on each of ``sets`` separated by ``/``."""
    names = [name for name in PAIRED_PREDICTORS if name in rows[0]["paired"]]
    head = ["prompts × samples"] + [f"{name} − {PAIRED_REFERENCE}" for name in names]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(names)]
    for row in rows:
        cells = [f"{row['prompts']} × {row['samples']}"]
        for name in names:
            pairs = [row["paired"][name][s] for s in sets]
            cells.append(" / ".join(f"{100 * pair['difference']:+.1f} ± {100 * pair['se']:.1f}" for pair in pairs))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _curve_mre(cell: dict) -> str:
    """A curve cell's prompt MRE in percent: ``MRE ± SE`` over prompts, ``MRE (sd)`` over seeds for a seed mean."""
    if math.isinf(cell["prompt_mre"]):
        return f"∞ ({cell['num_infinite']} at V = -1)"
    if "seed_sd" in cell:
        return f"{100 * cell['prompt_mre']:.1f} ({100 * cell['seed_sd']:.1f})"
    return f"{100 * cell['prompt_mre']:.1f} ± {100 * cell['prompt_mre_se']:.1f}"


def format_curve_table(rows: list[dict], sets: list[str], mse_set: str) -> str:
    """Markdown: one line per training row; per predictor ``MRE ± SE`` (percent, SE over prompts) on each of
    ``sets`` separated by ``/`` (the seed mean: ``MRE (sd over seeds)``); then the value MSE at ``s_0`` on
    ``mse_set`` of the predictors of ``MSE_PREDICTORS``."""
    head = ["prompts × samples", "completions"] + list(CURVE_PREDICTORS)
    head += [f"value MSE at s_0, {mse_set}: " + " / ".join(MSE_PREDICTORS)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        cells = [f"{row['prompts']} × {row['samples']}", str(row["completions"])]
        cells += [" / ".join(_curve_mre(row["eval"][name][s]) for s in sets) for name in CURVE_PREDICTORS]
        cells.append(" / ".join(f"{row['eval'][name][mse_set]['s0_value_mse']:.4f}" for name in MSE_PREDICTORS))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_recipe_table(rows: list[dict], sets: list[str], re_set: str) -> str:
    """Markdown of ``--recipe-positions all``: per training row and predictor of ``RECIPE_TABLE``, the prompt MRE
    ± SE (percent) on each of ``sets`` separated by ``/``; the RE at 0/25/50/75 % of the trajectory and the value
    MSE over all states, both on ``re_set``'s EOS-terminated completions. The prompt-length regression predicts
    at ``s_0`` only: its RE at 0 % is ``re_at_0`` and the rest ``—``."""
    def number(x, spec):
        return "—" if math.isnan(x) else format(x, spec)

    def errors(cell):
        found = list(cell["positionwise_re"].values())
        found[0] = cell["re_at_0"] if math.isnan(found[0]) else found[0]
        return " / ".join(number(100 * e, ".1f") for e in found)

    head = ["prompts × samples", "completions"]
    for name in RECIPE_TABLE:
        head += [f"{name}: prompt MRE", f"{name}: RE at 0/25/50/75 %", f"{name}: value MSE"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        cells = [f"{row['prompts']} × {row['samples']}", str(row["completions"])]
        for name in RECIPE_TABLE:
            by_set = row["eval"][name]
            cells += [" / ".join(_curve_mre(by_set[s]) for s in sets), errors(by_set[re_set]),
                      number(by_set[re_set]["value_mse"], ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_PLOT_STYLES = {SEED_MEAN: ("C0", "o"), "s_0 head": ("C9", "."), "ridge probe": ("C1", "s"),
                "constant baseline": ("C7", "^"), "prompt-length regression": ("C2", "v"),
                RECIPE_SEED_MEAN: ("C4", "D")}
"""Colour and marker of each plotted predictor (those with a slope in the result), in drawing order."""


def _plot_predictor(ax, result: dict, predictor: str, name: str, growing: list[dict], fixed: list[dict]) -> None:
    """One predictor on the panel of held-out set ``name``: the ``P x 1`` rows with error bars, hollow markers for
    the ``P x K`` rows with ``K > 1``, and the fitted line (dotted)."""
    color, marker = _PLOT_STYLES[predictor]
    x = [r["prompts"] for r in growing]
    y = [100 * r["eval"][predictor][name]["prompt_mre"] for r in growing]
    e = [100 * r["eval"][predictor][name]["prompt_mre_se"] for r in growing]
    label = predictor if predictor != "s_0 head" else f"s_0 head, seed {result['recipes']['s_0 head']['seed']}"
    ax.errorbar(x, y, yerr=e, color=color, marker=marker, capsize=3, label=f"{label} (P × 1)",
                alpha=0.5 if predictor == "s_0 head" else 1.0)
    for r in fixed:
        if r["samples"] > 1:
            ax.plot(r["prompts"], 100 * r["eval"][predictor][name]["prompt_mre"], color=color,
                    marker=marker, markerfacecolor="none", markersize=9, linestyle="none")
            if predictor in (SEED_MEAN, RECIPE_SEED_MEAN):
                ax.annotate(f"{r['prompts']}×{r['samples']}", (r["prompts"],
                            100 * r["eval"][predictor][name]["prompt_mre"]), textcoords="offset points",
                            xytext=(6, 4), fontsize=8, color=color)
    fit = result["slopes"][predictor][name]
    xs = [min(x), max(x)]
    ax.plot(xs, [100 * (fit["slope"] * math.log2(v) + fit["intercept"]) for v in xs], color=color,
            linestyle=":", linewidth=1)


def plot_curve(result: dict, path) -> None:
    """MRE against the number of training prompts (log x), one panel per held-out set in ``result["table_sets"]``.

    ``result`` is the curve's JSON (``bench/bench_pretrain.py curve``): ``rows``, ``slopes``, ``references``,
    ``held_out``, ``recipes``, ``fixed_completions`` and ``target_mre``. Writes a PNG to ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = result["table_sets"]
    growing = sorted((r for r in result["rows"] if r["samples"] == 1), key=lambda r: r["prompts"])
    fixed = [r for r in result["rows"] if r["samples"] > 1 or r["completions"] == result["fixed_completions"]]
    figure, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], sets):
        for predictor in (p for p in _PLOT_STYLES if p in result["slopes"]):
            _plot_predictor(ax, result, predictor, name, growing, fixed)
        for label, (mre, _) in result["references"][name].items():
            ax.axhline(100 * mre, color="k", linestyle="--" if "noise" in label else "-.", linewidth=1, label=label)
        if name == sets[0] and result.get("target_mre"):
            ax.axhline(100 * result["target_mre"], color="C3", linewidth=1,
                       label=f"target {100 * result['target_mre']:.1f} %")
        ax.set_xscale("log", base=2)
        ax.set_xticks([r["prompts"] for r in growing], [str(r["prompts"]) for r in growing], rotation=45)
        ax.set_xlabel("training prompts (log scale); hollow markers: P × K with K > 1")
        ax.set_title(f"{name} ({result['held_out'][name]['prompts']} prompts)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out prompt MRE (%), ± SE over prompts")
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    figure.suptitle("Prompt-boundary length prediction vs training prompts (SmolLM2-135M-Instruct trunk, GSM8K, "
                    "T 0.7); dotted: least-squares lines over the P × 1 rows", fontsize=10)
    figure.tight_layout(rect=(0, 0.13, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
