"""The top level exports every public class of the subpackages users import from, as TRL does, and loads them lazily."""

import subprocess
import sys

import pytest

import lenvm_rl
from lenvm_rl import critics, decoding, trainers


def test_public_classes_are_exported_at_the_top_level():
    classes = {name for module in (critics, trainers) for name in module.__all__
               if isinstance(getattr(module, name), type)}
    classes |= {"LenVM", "LenVMOutput", "TaskValueModel", "ValueHead"}  # modeling's helpers stay there
    classes |= {"GuidanceConfig", "GuidedCompletion", "LenVMLogitsProcessor"}
    assert classes <= set(lenvm_rl.__all__)
    for name in lenvm_rl.__all__:
        assert getattr(lenvm_rl, name) is not None
    assert lenvm_rl.LenVMTrainer is trainers.LenVMTrainer and lenvm_rl.LenVMConfig is trainers.LenVMConfig
    assert lenvm_rl.guided_generate is decoding.guided_generate
    assert set(lenvm_rl.__all__) <= set(dir(lenvm_rl)) and lenvm_rl.core.gae is not None
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        lenvm_rl.NoSuchThing  # noqa: B018


def imported_modules(statement: str) -> set[str]:
    """Every module ``python -X importtime -c statement`` imports: its import-time report and ``sys.modules``.

    Both, because the report misses modules loaded through ``importlib.import_module``.
    """
    code = f"{statement}\nimport sys\nprint(*sys.modules, sep='\\n')"
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    timed = {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return (timed - {"imported package"}) | set(run.stdout.split())


@pytest.mark.parametrize("module", ["lenvm_rl.core", "lenvm_rl.serving", "lenvm_rl.serving.client"])
def test_light_modules_do_not_import_trl_or_transformers(module):
    modules = imported_modules(f"import {module}")
    assert module in modules
    assert "trl" not in modules, f"import {module} loads TRL"
    assert "transformers" not in modules, f"import {module} loads transformers"
    if module != "lenvm_rl.core":  # the client speaks JSON over HTTP: no torch
        assert "torch" not in modules


def test_exports_and_submodules_load_on_first_use():
    modules = imported_modules("import lenvm_rl; lenvm_rl.LenVMTrainer; lenvm_rl.data.encode_prompt")
    assert {"trl", "lenvm_rl.trainers", "lenvm_rl.data"} <= modules
