"""Issue 21: :func:`lenvm_rl.benchmarking.save_random_models` builds the random-weight models that ``bench/gpu_check.sh``
times on a GPU machine with no Hub: a policy of a real model's shape and a LenVM on its very trunk (the shared-trunk
case), each with the SmolLM2 tokenizer and chat template. Tiny sizes here; the shapes are checked against the real
SmolLM2 config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lenvm_rl import LenVM
from lenvm_rl.benchmarking import RANDOM_SHAPES, save_random_models
from lenvm_rl.decoding.shared_trunk import shared_trunk_mismatch
from lenvm_rl.modeling import load_backbone

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)


def test_the_smollm2_shape_is_the_real_config(smollm2_dir):
    real = json.loads((Path(smollm2_dir) / "config.json").read_text())
    model_type, shape = RANDOM_SHAPES["SmolLM2-135M"]
    assert model_type == real["model_type"] == "llama"
    for key, value in shape.items():
        expected = real["rope_parameters"]["rope_theta"] if key == "rope_theta" else real[key]
        assert value == pytest.approx(expected), key


@pytest.mark.parametrize("shape, arch", [("SmolLM2-135M", "LlamaForCausalLM"), ("Qwen2.5-1.5B", "Qwen2ForCausalLM")])
def test_a_policy_and_a_lenvm_on_its_trunk(tmp_path, smollm2_dir, smollm2_tokenizer, shape, arch):
    policy_dir, lenvm_dir = save_random_models(shape, tmp_path, smollm2_dir, dtype="float32", gamma=0.9, **TINY)
    policy, lenvm = load_backbone(policy_dir).eval(), LenVM.from_pretrained(lenvm_dir).eval()
    config = policy.config
    assert type(policy).__name__ == arch
    assert config.vocab_size == len(smollm2_tokenizer) == 49152  # the tokenizer's, for every shape
    assert (config.hidden_size, config.num_hidden_layers) == (64, 2)  # overridden
    _, kwargs = RANDOM_SHAPES[shape]
    assert config.rms_norm_eps == kwargs["rms_norm_eps"] and config.tie_word_embeddings  # not overridden
    assert config.rope_parameters["rope_theta"] == kwargs["rope_theta"]
    assert (config.eos_token_id, config.pad_token_id) == (smollm2_tokenizer.eos_token_id, smollm2_tokenizer.pad_token_id)
    assert lenvm.gamma == 0.9 and shared_trunk_mismatch(policy, lenvm) is None
    for folder in (policy_dir, lenvm_dir):
        assert AutoTokenizer.from_pretrained(folder).chat_template == smollm2_tokenizer.chat_template


def test_a_built_directory_is_kept_and_other_arguments_rebuild(tmp_path, smollm2_dir):
    policy_dir, _ = save_random_models("SmolLM2-135M", tmp_path, smollm2_dir, dtype="float32", **TINY)
    weights = policy_dir / "model.safetensors"
    built = weights.stat().st_mtime_ns
    save_random_models("SmolLM2-135M", tmp_path, smollm2_dir, dtype="float32", **TINY)
    assert weights.stat().st_mtime_ns == built
    save_random_models("SmolLM2-135M", tmp_path, smollm2_dir, dtype="bfloat16", **TINY)
    assert weights.stat().st_mtime_ns != built
    assert {p.dtype for p in load_backbone(policy_dir).parameters()} == {torch.bfloat16}


def test_unknown_names_are_refused(tmp_path, smollm2_dir):
    with pytest.raises(ValueError, match="shape must be one of"):
        save_random_models("Qwen2.5-7B", tmp_path, smollm2_dir)
    with pytest.raises(ValueError, match="dtype must be one of"):
        save_random_models("SmolLM2-135M", tmp_path, smollm2_dir, dtype="float64")
