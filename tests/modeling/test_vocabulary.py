"""Issue 18 item 6: one vocabulary check, used by the critic, guided decoding and value pretraining.

Two word-level tokenizers of different "families" are built here with ``tokenizers``: family A (40 tokens, the
LenVM's) and family B (24 tokens): B fits in A's embedding table, so a size check lets it pass.
"""

import json
import logging

import pytest
from conftest import tiny_backbone
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lenvm_rl import LenVM, LenVMCritic
from lenvm_rl.data import RolloutConfig, build_value_dataset, sample_rollouts
from lenvm_rl.decoding import LenVMLogitsProcessor, guided_generate
from lenvm_rl.trainers import LenVMConfig, LenVMTrainer

# Names this issue added are imported inside the tests, so that on the old code each test fails on its own
# assertion rather than the whole module on an import.


def word_tokenizer(prefix: str, size: int, name: str) -> PreTrainedTokenizerFast:
    words = ["<unk>", "<eos>"] + [f"{prefix}{i}" for i in range(size - 2)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>",
                                   name_or_path=name)


@pytest.fixture(scope="module")
def family_a():
    return word_tokenizer("a", 40, "family-a")


@pytest.fixture(scope="module")
def family_b():
    return word_tokenizer("b", 24, "family-b")


@pytest.fixture
def loaded_lenvm(tmp_path, family_a) -> LenVM:
    """An already-loaded LenVM (the path ``scripts/grpo.py`` takes), saved with its family-A tokenizer."""
    LenVM(tiny_backbone("llama", vocab_size=40), gamma=0.9).save_pretrained(tmp_path / "lenvm")
    family_a.save_pretrained(tmp_path / "lenvm")
    return LenVM.from_pretrained(tmp_path / "lenvm")


def test_an_already_loaded_lenvm_refuses_a_tokenizer_of_another_family(loaded_lenvm, family_a, family_b):
    with pytest.raises(ValueError, match=r"the policy tokenizer 'family-b' \(24 tokens\) and the LenVM tokenizer "
                                         r"'.*lenvm' \(40 tokens\) differ"):
        LenVMCritic(loaded_lenvm, processing_class=family_b)
    LenVMCritic(loaded_lenvm, processing_class=family_a)  # the same vocabulary passes


def test_a_checkpoint_without_tokenizer_files_is_checked_by_its_recorded_hash(tmp_path, family_a, family_b):
    from lenvm_rl.modeling.vocabulary import vocabulary_hash

    lenvm = LenVM(tiny_backbone("llama", vocab_size=40), gamma=0.9)
    lenvm.vocabulary_hash = vocabulary_hash(family_a)  # as LenVMTrainer records it
    lenvm.save_pretrained(tmp_path / "bare")  # no tokenizer files
    assert json.loads((tmp_path / "bare" / "config.json").read_text())["lenvm_vocabulary_hash"] == \
        vocabulary_hash(family_a)
    loaded = LenVM.from_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match=rf"'family-b' \(24 tokens\) and the LenVM tokenizer '.*bare' \(vocabulary "
                                         rf"hash {vocabulary_hash(family_a)}\) differ"):
        LenVMCritic(loaded, processing_class=family_b)
    LenVMCritic(loaded, processing_class=family_a)


def test_guided_decoding_refuses_a_policy_of_another_family(loaded_lenvm, family_a, family_b):
    with pytest.raises(ValueError, match="'family-b' .* differ"):
        LenVMLogitsProcessor(loaded_lenvm, top_k=4, policy_tokenizer=family_b)
    LenVMLogitsProcessor(loaded_lenvm, top_k=4, policy_tokenizer=family_a)
    policy = tiny_backbone("llama", vocab_size=24)
    with pytest.raises(ValueError, match="'family-b' .* differ"):  # no lenvm_tokenizer: the LenVM's own vocabulary
        guided_generate(policy, family_b, ["b3 b4"], lenvm=loaded_lenvm, max_new_tokens=2)


def records_of(tokenizer, sampler: dict) -> list[dict]:
    return [{"prompt_index": i, "sample_index": 0, "prompt": f"{tokenizer.convert_ids_to_tokens(2)} "
             f"{tokenizer.convert_ids_to_tokens(3 + i)}", "prompt_ids": [2, 3 + i], "completion_ids": [4, 5, 1],
             "completion_length": 3, "finish_reason": "eos", "sampler": sampler} for i in range(4)]


def pretraining(tmp_path, model, tokenizer, records):
    args = LenVMConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1, report_to="none",
                       use_cpu=True, save_strategy="no", disable_tqdm=True)
    return LenVMTrainer(model, args, train_dataset=build_value_dataset(records), processing_class=tokenizer)


def test_pretraining_on_rollouts_of_another_vocabulary_is_refused(tmp_path, family_a, family_b):
    sampler_dir = tmp_path / "sampler-b"
    family_b.save_pretrained(sampler_dir)
    old_style = records_of(family_b, {"model": str(sampler_dir), "temperature": 1.0, "max_new_tokens": 8})
    model = LenVM(tiny_backbone("llama", vocab_size=40), gamma=0.9)
    with pytest.raises(ValueError, match=r"the backbone's tokenizer 'family-a' \(40 tokens\) and the sampler of the "
                                         r"train_dataset's rollouts '.*sampler-b' \(vocabulary hash \w+\) differ"):
        pretraining(tmp_path, model, family_a, old_style)  # the hash comes from the sampler's saved tokenizer

    policy_b = tiny_backbone("llama", vocab_size=24)  # new records carry the sampler's vocabulary hash
    new_style = sample_rollouts(policy_b, family_b, ["b3 b4", "b5"], tmp_path / "b.jsonl",
                                RolloutConfig(num_completions=1, max_new_tokens=3, backend="hf"), progress=False)
    with pytest.raises(ValueError, match="the sampler of the train_dataset's rollouts .* differ"):
        pretraining(tmp_path, model, family_a, new_style)

    policy_a = tiny_backbone("llama", vocab_size=40)
    same = sample_rollouts(policy_a, family_a, ["a3 a4", "a5"], tmp_path / "a.jsonl",
                           RolloutConfig(num_completions=1, max_new_tokens=3, backend="hf"), progress=False)
    pretraining(tmp_path, model, family_a, same).train()  # the same vocabulary trains


def test_the_pretraining_script_refuses_rollouts_of_another_sampler(tmp_path, family_a, family_b):
    from trl import ModelConfig

    from lenvm_rl.scripts.pretrain import PretrainScriptArguments, main

    backbone = tmp_path / "backbone-a"
    tiny_backbone("llama", vocab_size=40).save_pretrained(backbone)
    family_a.save_pretrained(backbone)
    sampler_dir = tmp_path / "sampler-b"
    family_b.save_pretrained(sampler_dir)
    rollouts = tmp_path / "rollouts.jsonl"
    rollouts.write_text("".join(json.dumps(rec) + "\n" for rec in records_of(
        family_b, {"model": str(sampler_dir), "temperature": 1.0, "max_new_tokens": 8})))
    args = LenVMConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1,
                       report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    with pytest.raises(ValueError, match="the sampler of the train_dataset's rollouts .*sampler-b.* differ"):
        main(PretrainScriptArguments(train_rollouts=[str(rollouts)], gamma=0.9), args,
             ModelConfig(model_name_or_path=str(backbone)))


def test_check_vocabulary_rules(family_a, family_b, caplog):
    from lenvm_rl.modeling.vocabulary import check_vocabulary, vocabulary_hash

    check_vocabulary(family_a, word_tokenizer("a", 40, "a copy"))  # equal maps
    check_vocabulary(family_a, vocabulary_hash(family_a))  # a map against its hash
    check_vocabulary(family_b, None)  # unknown (written before vocabularies were recorded): nothing to check
    with pytest.raises(ValueError, match=r"\(e\.g\. \[\('a0', 2\)"):  # maps: examples of differing entries
        check_vocabulary(family_a, family_b)
    with pytest.raises(ValueError, match="the model 'family-a' .* and the sampler 'smol' .* differ: fix it"):
        check_vocabulary(family_a, ("smol", vocabulary_hash(family_b)), names=("the model", "the sampler"),
                         advice="fix it")
    in_memory = LenVM(tiny_backbone("llama", vocab_size=30), gamma=0.9)  # records nothing: its size only
    with pytest.raises(ValueError, match="'family-a' has 40 tokens but the LenVM .* has a vocabulary of 30"):
        check_vocabulary(family_a, in_memory)
    with caplog.at_level(logging.WARNING):
        check_vocabulary(family_b, in_memory)
    assert "only checked that the 24 tokens" in caplog.text
