"""The baselines and references of ``lenvm_rl.evaluation`` as cells of a :class:`~lenvm_rl.analysis.HeldOut`
set: the constant baseline and the prompt-length regression fitted on training records, and the split-half MRE
and the noise floor of the held-out records themselves.

Cells are dicts with at least ``prompt_mre``, ``prompt_mre_se`` and ``value_mse`` (NaN where not measured).
"""

from __future__ import annotations

import math

import torch

from lenvm_rl.analysis.heldout import HeldOut
from lenvm_rl.core import length_to_value

__all__ = ["baseline_cells", "baseline_s0_values", "reference_cells"]


def baseline_cells(train_records: list[dict], held_out: HeldOut, gamma: float) -> dict[str, dict]:
    """``{name: cell}``: the constant baseline (``evaluate_constant``) and the prompt-length regression
    (``evaluate_prompt_length_baseline``) fitted on ``train_records`` and evaluated on ``held_out``'s records in
    ``gamma``, then :func:`reference_cells`."""
    from lenvm_rl.evaluation import (
        constant_baseline_value,
        evaluate_constant,
        evaluate_prompt_length_baseline,
        prompt_length_baseline,
    )

    constant = evaluate_constant(constant_baseline_value(train_records, gamma), held_out.records, gamma)
    regression = evaluate_prompt_length_baseline(prompt_length_baseline(train_records, gamma), held_out.records)
    rows = {name: {"prompt_mre": row.prompt_mre, "prompt_mre_se": row.prompt_mre_se, "value_mse": row.value_mse}
            for name, row in (("constant baseline", constant), ("prompt-length regression", regression))}
    return rows | reference_cells(held_out, gamma)


def reference_cells(held_out: HeldOut, gamma: float) -> dict[str, dict]:
    """The split-half MRE and the noise floor of a held-out set (``lenvm_rl.evaluation``), as cells (value MSE
    NaN), under ``evaluation.SPLIT_HALF_ROW`` and ``evaluation.NOISE_FLOOR_ROW``."""
    from lenvm_rl.evaluation import NOISE_FLOOR_ROW, SPLIT_HALF_ROW, noise_floor, split_half_mre

    return {name: {"prompt_mre": mre, "prompt_mre_se": se, "value_mse": math.nan}
            for name, (mre, se) in ((SPLIT_HALF_ROW, split_half_mre(held_out.records, gamma)),
                                    (NOISE_FLOOR_ROW, noise_floor(held_out.records, gamma)))}


def baseline_s0_values(train_records: list[dict], held_out: HeldOut, gamma: float) -> dict[str, torch.Tensor]:
    """``V(s_0)`` ``(prompts,)`` per held-out prompt of the constant baseline and the prompt-length regression
    fitted on ``train_records`` (``lenvm_rl.evaluation``), for :meth:`HeldOut.evaluate_values`."""
    from lenvm_rl.evaluation import constant_baseline_value, prompt_length_baseline

    regression = prompt_length_baseline(train_records, gamma)
    return {"constant baseline": torch.full((len(held_out.groups),), constant_baseline_value(train_records, gamma)),
            "prompt-length regression": length_to_value(regression.predict_lengths(held_out.records), gamma)}
