"""LenVM-guided decoding for ``transformers`` ``generate``, its evaluation, and length analysis tools."""

from lenvm_rl.decoding.generate import GuidedCompletion, guided_generate
from lenvm_rl.decoding.guidance import GuidanceConfig, GuidanceStep, LenVMLogitsProcessor, check_vocabulary

__all__ = [
    "GuidanceConfig",
    "GuidanceStep",
    "GuidedCompletion",
    "LenVMLogitsProcessor",
    "check_vocabulary",
    "guided_generate",
]
