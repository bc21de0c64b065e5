"""Shared fixtures: tiny random backbones (hidden size <= 64) and the real embedded SmolLM2."""

from __future__ import annotations

import os
import sys

# No test may reach a model hub: everything it needs is built here or ships in a package. Set before
# transformers imports huggingface_hub, which reads the variable once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from lenvm_rl.serving.client import free_port  # noqa: E402

SMOLLM2 = "smollm2-135m"
TINY_KW = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)


def accelerate_launch(*args: str) -> list[str]:
    """The command ``accelerate launch ARGS`` with a free ``--main_process_port``: two launches at once on one
    machine (another test run, a job) would otherwise both take the default port 29500 (EADDRINUSE)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()), *args]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped where torch.cuda.is_available() is False")


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests run only where CUDA is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def tiny_backbone(arch: str = "llama", vocab_size: int = 128, seed: int = 0, **overrides):
    """A random causal LM with hidden size 32 (``overrides`` replace ``TINY_KW`` entries), in eval mode."""
    torch.manual_seed(seed)
    kwargs = TINY_KW | overrides
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **kwargs)).eval()
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, **kwargs)).eval()
    raise ValueError(arch)


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The embedded SmolLM2-135M-Instruct, converted once to a safetensors directory."""
    from lenvm_rl.modeling import resolve_model_path

    return resolve_model_path(SMOLLM2)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, smollm2_tokenizer):
    """A saved LenVM (tiny random Llama with the SmolLM2 tokenizer and vocabulary), gamma 0.99."""
    from lenvm_rl import LenVM

    path = tmp_path_factory.mktemp("tiny-lenvm")
    model = LenVM(tiny_backbone("llama", vocab_size=len(smollm2_tokenizer), seed=1), gamma=0.99)
    model.save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path
