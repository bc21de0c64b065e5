"""Models: the LenVM (backbone + value head), PPO's task critic, the short names of embedded backbones, and
the CPU inference speed-up of pre-packed linear weights."""

from lenvm_rl.modeling.devices import resolve_device
from lenvm_rl.modeling.embedded import EMBEDDED_MODELS, resolve_model_path
from lenvm_rl.modeling.lenvm import VALUE_HEAD_FILE, LenVM, LenVMOutput, ValueHead, load_backbone
from lenvm_rl.modeling.prepack import PrepackedLinears
from lenvm_rl.modeling.value_model import TaskValueModel

__all__ = [
    "EMBEDDED_MODELS",
    "VALUE_HEAD_FILE",
    "LenVM",
    "LenVMOutput",
    "PrepackedLinears",
    "TaskValueModel",
    "ValueHead",
    "load_backbone",
    "resolve_device",
    "resolve_model_path",
]
