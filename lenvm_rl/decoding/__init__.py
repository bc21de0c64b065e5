"""LenVM-guided decoding for ``transformers`` ``generate`` (docs/method.md#guided-decoding), its evaluation, and
length analysis.

- :class:`LenVMLogitsProcessor`: tilting and length constraints as a ``LogitsProcessor``, scoring every
  candidate in one LenVM forward on the LenVM's own KV cache; :func:`guided_generate` wraps ``generate``;
- :class:`SharedTrunkDecoder` (:mod:`~lenvm_rl.decoding.shared_trunk`): when the LenVM is a head on the policy's
  own trunk, one policy forward per token scores the candidates and gives the next logits
  (``guided_generate`` picks it by itself); ``compile=True``: static KV caches and compiled decode steps;
- :mod:`~lenvm_rl.decoding.evaluation`: LIFEBench length score, accuracy vs length against a token budget;
- :mod:`~lenvm_rl.decoding.analysis`: TD residuals, length tokens, an HTML view of a trace.

The mode math is in :mod:`lenvm_rl.core.decoding`.
"""

from lenvm_rl.decoding.analysis import LengthToken, horizon_shifts, length_tokens, trace_html, trace_td_residuals
from lenvm_rl.decoding.evaluation import (
    LengthReport,
    TradeoffPoint,
    answer_length,
    average_over_targets,
    budget_baseline,
    length_instruction,
    length_report,
    length_score_benchmark,
    lenvm_token_target,
    plot_tradeoff,
    tilt_point,
    tradeoff_arm,
    tradeoff_point,
    tradeoff_sweep,
)
from lenvm_rl.decoding.generate import GuidedCompletion, guided_generate
from lenvm_rl.decoding.guidance import GuidanceConfig, GuidanceStep, LenVMLogitsProcessor, check_vocabulary
from lenvm_rl.decoding.shared_trunk import SharedTrunkDecoder, shared_trunk_mismatch

__all__ = [
    "GuidanceConfig",
    "GuidanceStep",
    "GuidedCompletion",
    "LenVMLogitsProcessor",
    "LengthReport",
    "LengthToken",
    "SharedTrunkDecoder",
    "TradeoffPoint",
    "answer_length",
    "average_over_targets",
    "budget_baseline",
    "check_vocabulary",
    "guided_generate",
    "horizon_shifts",
    "length_instruction",
    "length_report",
    "length_score_benchmark",
    "length_tokens",
    "lenvm_token_target",
    "plot_tradeoff",
    "shared_trunk_mismatch",
    "tilt_point",
    "trace_html",
    "trace_td_residuals",
    "tradeoff_arm",
    "tradeoff_point",
    "tradeoff_sweep",
]
