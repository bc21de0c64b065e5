"""lenvm_rl: length-aware RL for language models with a token-level Length Value Model critic."""

from lenvm_rl.modeling import LenVM, LenVMOutput, ValueHead

__version__ = "0.1.0"
__all__ = ["LenVM", "LenVMOutput", "ValueHead", "__version__"]
