"""lenvm_rl.analysis stays light and in its layer: importing it loads torch and lenvm_rl.core, not TRL,
transformers, safetensors, matplotlib or the modules above it."""

from test_package import imported_modules


def test_import_loads_no_heavy_dependency():
    modules = imported_modules("import lenvm_rl.analysis")
    assert "lenvm_rl.analysis" in modules and "lenvm_rl.core" in modules
    for heavy in ("trl", "transformers", "safetensors", "matplotlib", "lenvm_rl.evaluation", "lenvm_rl.commands",
                  "lenvm_rl.scripts", "lenvm_rl.trainers"):
        assert heavy not in modules, f"import lenvm_rl.analysis loads {heavy}"
