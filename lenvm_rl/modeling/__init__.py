"""Models: the LenVM (backbone + value head), PPO's task critic and the short names of embedded backbones."""

from lenvm_rl.modeling.embedded import EMBEDDED_MODELS, resolve_model_path
from lenvm_rl.modeling.lenvm import VALUE_HEAD_FILE, LenVM, LenVMOutput, ValueHead, load_backbone
from lenvm_rl.modeling.value_model import TaskValueModel

__all__ = [
    "EMBEDDED_MODELS",
    "VALUE_HEAD_FILE",
    "LenVM",
    "LenVMOutput",
    "TaskValueModel",
    "ValueHead",
    "load_backbone",
    "resolve_model_path",
]
