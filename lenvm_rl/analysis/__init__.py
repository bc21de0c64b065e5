"""Analysis of value predictors on a frozen trunk: cached features, head-only fits, the learning curve.

The functionality behind ``bench/bench_pretrain.py variants`` and ``curve``, usable without the repository:

- :mod:`~lenvm_rl.analysis.features`: the trunk's hidden states and value targets of rollout records, cached
  resumably on disk (:func:`extract_features`, :func:`load_features`);
- :mod:`~lenvm_rl.analysis.heads`: a fresh ``ValueHead`` fitted on fixed states (:func:`fit_value_head`), the ridge
  probe (:func:`fit_ridge`);
- :mod:`~lenvm_rl.analysis.heldout`: held-out sets of cached states scored as ``evaluate_lenvm`` scores a LenVM
  (:class:`HeldOut`);
- :mod:`~lenvm_rl.analysis.baselines`: the constant baseline, the prompt-length regression and the references of
  :mod:`lenvm_rl.evaluation` on such a set;
- :mod:`~lenvm_rl.analysis.variants`, :mod:`~lenvm_rl.analysis.curve`: the variant grid, and the learning curve
  over growing training subsets (:func:`evaluate_curve_row`, :func:`fit_slope`);
- :mod:`~lenvm_rl.analysis.report`: their markdown tables and plot.

Importing this package loads torch and :mod:`lenvm_rl.core` only; transformers, safetensors, the data and
evaluation modules and matplotlib load inside the functions that use them.
"""

from lenvm_rl.analysis.baselines import baseline_cells, baseline_s0_values, reference_cells
from lenvm_rl.analysis.curve import (
    CURVE_PREDICTORS,
    MSE_PREDICTORS,
    PAIRED_PREDICTORS,
    PAIRED_REFERENCE,
    RECIPE_HEAD,
    RECIPE_SEED_MEAN,
    RECIPE_TABLE,
    SEED_MEAN,
    CurveData,
    CurveSettings,
    curve_mask,
    curve_slopes,
    curve_state_mask,
    evaluate_curve_row,
    fit_slope,
    mean_over_seeds,
    paired_difference,
    parse_curve_row,
    prompts_for_target,
    recipe_train_files,
)
from lenvm_rl.analysis.features import (
    FEATURE_DTYPES,
    FEATURE_KEYS,
    boundary_rows,
    concat_features,
    extract_chunk,
    extract_features,
    load_features,
    record_steps,
    state_weights,
    trunk_tokens,
)
from lenvm_rl.analysis.heads import fit_ridge, fit_value_head, head_values
from lenvm_rl.analysis.heldout import HeldOut, held_out_sets
from lenvm_rl.analysis.report import (
    format_curve_table,
    format_paired_table,
    format_recipe_table,
    format_variants_table,
    plot_curve,
)
from lenvm_rl.analysis.variants import fit_variants, variant_references

__all__ = [
    "CURVE_PREDICTORS",
    "FEATURE_DTYPES",
    "FEATURE_KEYS",
    "MSE_PREDICTORS",
    "PAIRED_PREDICTORS",
    "PAIRED_REFERENCE",
    "RECIPE_HEAD",
    "RECIPE_SEED_MEAN",
    "RECIPE_TABLE",
    "SEED_MEAN",
    "CurveData",
    "CurveSettings",
    "HeldOut",
    "baseline_cells",
    "baseline_s0_values",
    "boundary_rows",
    "concat_features",
    "curve_mask",
    "curve_slopes",
    "curve_state_mask",
    "evaluate_curve_row",
    "extract_chunk",
    "extract_features",
    "fit_ridge",
    "fit_slope",
    "fit_value_head",
    "fit_variants",
    "format_curve_table",
    "format_paired_table",
    "format_recipe_table",
    "format_variants_table",
    "head_values",
    "held_out_sets",
    "load_features",
    "mean_over_seeds",
    "paired_difference",
    "parse_curve_row",
    "plot_curve",
    "prompts_for_target",
    "record_steps",
    "recipe_train_files",
    "reference_cells",
    "state_weights",
    "trunk_tokens",
    "variant_references",
]
