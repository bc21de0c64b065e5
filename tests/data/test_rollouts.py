import importlib.util
import json

import pytest
import torch
from conftest import tiny_backbone

from lenvm_rl.data import chat_template_hash, load_prompts
from lenvm_rl.data.rollouts import (
    RolloutConfig,
    finish_reasons,
    pad_token_ids,
    read_rollouts,
    resolve_backend,
    sample_rollouts,
)
from lenvm_rl.modeling.vocabulary import vocabulary_hash

EOS = 2


def test_finish_reasons_read_eos_from_the_tokens_even_when_pad_is_eos():
    generated = torch.tensor([
        [5, 6, EOS, EOS, EOS],  # ended at step 3, then padded with the pad token, which is EOS
        [5, 6, 7, 8, 9],        # cut at the limit: L = T, censored
        [5, 6, 7, 8, EOS],      # EOS exactly at the limit: ended
        [EOS, EOS, EOS, EOS, EOS],  # empty answer: L = 1 (just EOS)
    ])
    lengths, ended = finish_reasons(generated, [EOS])
    assert lengths.tolist() == [3, 5, 5, 1]
    assert ended.tolist() == [True, False, True, True]
    lengths, ended = finish_reasons(torch.tensor([[5, 9, 6]]), [EOS, 9])  # several EOS ids
    assert lengths.tolist() == [2] and ended.tolist() == [True]


def test_pad_token_ids_by_hand_left_and_right():
    ids, mask = pad_token_ids([[5, 6, 7], [8], []], 9)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9], [9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = pad_token_ids([[5, 6, 7], [8]], 0, padding_side="left", pad_to_multiple_of=4)
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]]
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
    with pytest.raises(ValueError, match="sequences is empty"):
        pad_token_ids([], 0)
    with pytest.raises(ValueError, match="padding_side"):
        pad_token_ids([[1]], 0, padding_side="middle")
    with pytest.raises(ValueError, match=r"sequences\[1\] must be a flat list"):
        pad_token_ids([[1], [[2, 3]]], 0)


@pytest.fixture
def policy(smollm2_tokenizer):
    model = tiny_backbone("llama", vocab_size=len(smollm2_tokenizer))
    # Make EOS likely so both finish reasons occur within a few tokens.
    with torch.no_grad():
        model.get_input_embeddings().weight[EOS] *= 40
    return model


PROMPTS = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(4)]


def test_records_hold_everything_and_lengths_are_exact(policy, smollm2_tokenizer, tmp_path):
    config = RolloutConfig(num_completions=3, temperature=1.0, max_new_tokens=6, batch_size=6, backend="hf")
    records = sample_rollouts(policy, smollm2_tokenizer, PROMPTS[:2], tmp_path / "r.jsonl", config,
                              model_name="tiny", progress=False)
    assert [(r["prompt_index"], r["sample_index"]) for r in records] == [(i, k) for i in range(2) for k in range(3)]
    for r in records:
        assert r["prompt"] == PROMPTS[r["prompt_index"]]
        assert smollm2_tokenizer.decode(r["prompt_ids"]).endswith("<|im_start|>assistant\n")
        assert r["completion_length"] == len(r["completion_ids"]) <= 6
        eos_at = [i for i, t in enumerate(r["completion_ids"]) if t == EOS]
        if r["finish_reason"] == "eos":
            assert eos_at == [r["completion_length"] - 1]
        else:
            assert r["finish_reason"] == "length" and not eos_at and r["completion_length"] == 6
        assert r["sampler"] == {"model": "tiny", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6,
                                "seed": 0, "backend": "hf", "vocabulary_hash": vocabulary_hash(smollm2_tokenizer),
                                "chat_template_hash": chat_template_hash(smollm2_tokenizer)}
    assert {r["finish_reason"] for r in records} == {"eos", "length"}


def test_resume_skips_finished_prompts_and_writes_no_duplicates(policy, smollm2_tokenizer, tmp_path):
    out = tmp_path / "r.jsonl"
    config = RolloutConfig(num_completions=2, max_new_tokens=4, batch_size=2, backend="hf")
    first = sample_rollouts(policy, smollm2_tokenizer, PROMPTS[:2], out, config, model_name="tiny", progress=False)
    # An interrupted run: a partial prompt group and a torn last line.
    with out.open("a") as f:
        f.write(json.dumps({**first[0], "prompt_index": 2}) + "\n" + '{"prompt_index": 3, "samp')
    records = sample_rollouts(policy, smollm2_tokenizer, PROMPTS, out, config, model_name="tiny", progress=False)
    keys = [(r["prompt_index"], r["sample_index"]) for r in records]
    assert keys == [(i, k) for i in range(4) for k in range(2)]
    assert len(read_rollouts(out)) == 8
    assert records[:4] == first  # finished prompts were not re-sampled
    with pytest.raises(ValueError, match="holds another prompt at prompt_index 0"):
        sample_rollouts(policy, smollm2_tokenizer, PROMPTS[1:], out, config, model_name="tiny", progress=False)
    with pytest.raises(ValueError, match="was written with sampler settings"):
        sample_rollouts(policy, smollm2_tokenizer, PROMPTS, out, RolloutConfig(num_completions=2, max_new_tokens=4,
                        temperature=0.7, backend="hf"), model_name="tiny", progress=False)


def test_a_length_cut_short_of_max_new_tokens_is_refused_naming_the_line(policy, smollm2_tokenizer, tmp_path):
    # A record "cut at the limit" with fewer tokens than the limit is not censored at the limit (a vLLM request
    # that was aborted, or stopped by the engine's model length): reading it is an error, never a wrong target.
    out = tmp_path / "r.jsonl"
    config = RolloutConfig(num_completions=3, temperature=1.0, max_new_tokens=6, batch_size=6, backend="hf")
    records = sample_rollouts(policy, smollm2_tokenizer, PROMPTS[:2], out, config, model_name="tiny", progress=False)
    line = next(i for i, r in enumerate(records, 1) if r["finish_reason"] == "length")
    cut = dict(records[line - 1], completion_ids=records[line - 1]["completion_ids"][:3], completion_length=3)
    out.write_text("".join(json.dumps(cut if i == line else r) + "\n" for i, r in enumerate(records, 1)))
    where = f"r.jsonl line {line}: record prompt_index={cut['prompt_index']} sample_index={cut['sample_index']}"
    with pytest.raises(ValueError, match=f"{where}: finish_reason 'length' after 3 tokens, but its sampler's "
                                         "max_new_tokens is 6"):
        read_rollouts(out)
    with pytest.raises(ValueError, match="delete the record and resample its prompt"):  # resuming reads it too
        sample_rollouts(policy, smollm2_tokenizer, PROMPTS, out, config, model_name="tiny", progress=False)


def test_shards_sampled_with_offsets_equal_one_unsharded_run(policy, smollm2_tokenizer, tmp_path):
    config = RolloutConfig(num_completions=2, max_new_tokens=5, batch_size=4, backend="hf")
    whole = sample_rollouts(policy, smollm2_tokenizer, PROMPTS, tmp_path / "all.jsonl", config, progress=False)
    for offset in (0, 2):
        sample_rollouts(policy, smollm2_tokenizer, PROMPTS[offset : offset + 2], tmp_path / f"shard{offset}.jsonl",
                        config, offset=offset, progress=False)
    merged = read_rollouts([tmp_path / "shard0.jsonl", tmp_path / "shard2.jsonl"])
    assert [r["prompt_index"] for r in merged] == [0, 0, 1, 1, 2, 2, 3, 3]  # source rows, not shard rows
    assert merged == whole  # same seeds per prompt group: the same completions
    # resuming a shard needs its offset; overlapping shards are refused, naming both places
    with pytest.raises(ValueError, match="another prompt at prompt_index 2"):
        sample_rollouts(policy, smollm2_tokenizer, PROMPTS[:2], tmp_path / "shard2.jsonl", config, progress=False)
    with pytest.raises(ValueError, match=r"shard2.jsonl line 1: prompt_index=2 sample_index=0 is already in "
                                         r".*all.jsonl line 5; shards must not overlap"):
        read_rollouts([tmp_path / "all.jsonl", tmp_path / "shard2.jsonl"])


def test_backend_choice(policy, smollm2_tokenizer, tmp_path):
    assert resolve_backend("auto", policy) == "hf"  # a loaded model is sampled with generate, vLLM or not
    assert resolve_backend("vllm", policy) == "vllm"
    with pytest.raises(ValueError, match="the hf backend takes a loaded transformers model, got str"):
        sample_rollouts("some/model", smollm2_tokenizer, PROMPTS, tmp_path / "r.jsonl", RolloutConfig(backend="hf"))
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match=r"the vllm backend needs vLLM: pip install 'lenvm-rl\[vllm\]'"):
            sample_rollouts("some/model", smollm2_tokenizer, PROMPTS, tmp_path / "r.jsonl",
                            RolloutConfig(backend="vllm"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_completions": 0}, r"num_completions \(n\) must be >= 1"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"backend": "tgi"}, "backend must be"),
    ],
)
def test_bad_sampler_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RolloutConfig(**kwargs)


def test_prompt_sources_and_their_errors(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_dict({"question": ["a?", "b?", "c?"]})
    assert load_prompts(ds, prompt_column="question", offset=1, limit=1) == ["b?"]  # a string stays raw text
    path = tmp_path / "p.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert load_prompts(path) == [[{"role": "user", "content": "hi"}]]
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl row 1 \(0-based\) has no column 'messages'"):
        load_prompts(path)  # rows must agree on the column
    with pytest.raises(ValueError, match=r"has no column 'prompt' \(columns: \['question'\]\); pass prompt_column="):
        load_prompts(ds)
    with pytest.raises(ValueError, match="is empty: no prompts"):
        load_prompts(Dataset.from_dict({"prompt": []}))
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        load_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: not valid JSON"):
        load_prompts(tmp_path / "bad.jsonl")
