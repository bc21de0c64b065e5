import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lenvm_rl.modeling import EMBEDDED_MODELS, resolve_model_path


def test_paths_and_hub_ids_pass_through():
    assert resolve_model_path("/some/dir") == "/some/dir"
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_smollm2_converts_once_to_safetensors_that_match_the_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("LENVM_RL_HOME", str(tmp_path))
    path = Path(resolve_model_path("smollm2-135m"))
    assert path == tmp_path / "smollm2-135m"
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("smollm2-135m") == str(path)  # cached: no second conversion
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp

    spec = EMBEDDED_MODELS["smollm2-135m"]
    gguf_dir = list(importlib.util.find_spec(spec.package).submodule_search_locations)[0]
    reference = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=spec.gguf_file).eval()
    converted = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.eos_token_id == 2 and tokenizer.chat_template
    ids = tokenizer("Natalia sold clips to 48 of her friends.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, reference(ids).logits)
