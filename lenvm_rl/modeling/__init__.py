"""Models: the LenVM (backbone + value head) and the short names of embedded backbones."""

from lenvm_rl.modeling.embedded import EMBEDDED_MODELS, resolve_model_path
from lenvm_rl.modeling.lenvm import VALUE_HEAD_FILE, LenVM, LenVMOutput, ValueHead, load_backbone

__all__ = [
    "EMBEDDED_MODELS",
    "VALUE_HEAD_FILE",
    "LenVM",
    "LenVMOutput",
    "ValueHead",
    "load_backbone",
    "resolve_model_path",
]
