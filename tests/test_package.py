"""The top level exports every public class of the subpackages users import from, as TRL does."""

import lenvm_rl
from lenvm_rl import critics, decoding, trainers


def test_public_classes_are_exported_at_the_top_level():
    classes = {name for module in (critics, trainers) for name in module.__all__ if name[0].isupper()}
    classes |= {"LenVM", "LenVMOutput", "TaskValueModel", "ValueHead"}  # modeling's helpers stay there
    classes |= {"GuidanceConfig", "GuidedCompletion", "LenVMLogitsProcessor"}
    assert classes <= set(lenvm_rl.__all__)
    for name in lenvm_rl.__all__:
        assert getattr(lenvm_rl, name) is not None
    assert lenvm_rl.LenVMTrainer is trainers.LenVMTrainer and lenvm_rl.LenVMConfig is trainers.LenVMConfig
    assert lenvm_rl.guided_generate is decoding.guided_generate
