"""Issue 18 item 5: one prompt encoder with TRL's convention, and the prompt format a LenVM records.

TRL tokenizes a plain-string prompt as raw text and puts only conversational prompts through the chat template
(``trl.data_utils.is_conversational``); rollouts, the predictor, guided decoding and the critic must agree.
"""

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone

from lenvm_rl import LenVM, LenVMCritic
from lenvm_rl.data import (
    RolloutConfig,
    build_value_dataset,
    encode_prompt,
    load_prompts,
    read_rollouts,
    sample_rollouts,
)
from lenvm_rl.decoding import guided_generate
from lenvm_rl.predict import LengthPredictor
from lenvm_rl.trainers import LenVMConfig, LenVMTrainer

# Names this issue added are imported inside the tests, so that on the old code each test fails on its own
# assertion rather than the whole module on an import.

BENCH = Path(__file__).parents[2] / "bench" / "rollouts"
TEXT = "How many legs do 3 spiders have?"
MESSAGES = [{"role": "user", "content": TEXT}]


def trl_prompt_ids(tokenizer, prompt) -> list[int]:
    """What ``trl.GRPOTrainer._tokenize_prompts`` (TRL 1.16) builds for one prompt, without tools."""
    from trl.data_utils import is_conversational

    if is_conversational({"prompt": prompt}):
        return tokenizer.apply_chat_template(conversation=[prompt], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"][0]
    return tokenizer(text=[prompt])["input_ids"][0]


def test_a_string_is_raw_text_and_messages_use_the_chat_template_as_in_trl(smollm2_tokenizer):
    raw, chat = encode_prompt(smollm2_tokenizer, TEXT), encode_prompt(smollm2_tokenizer, MESSAGES)
    assert raw == smollm2_tokenizer(TEXT)["input_ids"] == trl_prompt_ids(smollm2_tokenizer, TEXT)
    assert chat == trl_prompt_ids(smollm2_tokenizer, MESSAGES)
    assert (len(raw), len(chat)) == (9, 39)  # SmolLM2's chat template adds its system prompt
    assert smollm2_tokenizer.decode(chat).endswith("<|im_start|>assistant\n")
    from lenvm_rl.data import to_messages

    assert to_messages(TEXT) == MESSAGES and encode_prompt(smollm2_tokenizer, to_messages(TEXT)) == chat


def test_chat_template_kwargs_and_tools_pass_through(smollm2_tokenizer):
    tokenizer = type(smollm2_tokenizer).from_pretrained(smollm2_tokenizer.name_or_path)
    tokenizer.chat_template = ("{% if shout %}LOUD {% endif %}{% if tools %}TOOLS {% endif %}"
                               "{{ messages[-1]['content'] }}{% if add_generation_prompt %} ->{% endif %}")
    plain = tokenizer.decode(encode_prompt(tokenizer, MESSAGES))
    assert plain == f"{TEXT} ->"
    assert tokenizer.decode(encode_prompt(tokenizer, MESSAGES, chat_template_kwargs={"shout": True})) == f"LOUD {plain}"
    tool = {"type": "function", "function": {"name": "count", "description": "Count.", "parameters": {}}}
    assert tokenizer.decode(encode_prompt(tokenizer, MESSAGES, tools=[tool])) == f"TOOLS {plain}"
    from lenvm_rl.data import chat_template_hash

    assert chat_template_hash(tokenizer) != chat_template_hash(tokenizer, chat_template_kwargs={"shout": True})


def test_load_prompts_keeps_strings_raw_and_loads_messages(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": TEXT}) + "\n" + json.dumps({"prompt": MESSAGES}) + "\n")
    assert load_prompts(path) == [TEXT, MESSAGES]
    with pytest.raises(ValueError, match=r"row 0 \(0-based\): a prompt must be a string or a list of chat messages"):
        load_prompts(_jsonl(tmp_path / "bad.jsonl", [{"prompt": 3}]))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("name", ["gsm8k_train200_n8_t0.7.rows140-199.jsonl", "gsm8k_test50_n16_t0.7.vllm.jsonl"])
def test_committed_chat_rollouts_keep_their_token_ids(smollm2_tokenizer, name):
    # The committed rollouts were sampled with string questions that the old encoder put through the chat
    # template; their records hold those prompts as messages and the token ids themselves.
    records = read_rollouts(BENCH / name)
    firsts = {rec["prompt_index"]: rec for rec in records if rec["sample_index"] == 0}
    for rec in list(firsts.values())[:20]:
        assert encode_prompt(smollm2_tokenizer, rec["prompt"]) == rec["prompt_ids"]
    dataset = build_value_dataset(records)
    assert dataset["input_ids"] == [rec["prompt_ids"] + rec["completion_ids"] for rec in records]  # stored ids
    from lenvm_rl.data import chat_template_hash, rollout_encoding
    from lenvm_rl.modeling.vocabulary import vocabulary_hash

    encoding = rollout_encoding(records)  # recovered from the sampler's own tokenizer (smollm2-135m)
    assert (encoding.prompt_format, encoding.chat_template_hash, encoding.vocabulary_hash) == (
        "chat", chat_template_hash(smollm2_tokenizer), vocabulary_hash(smollm2_tokenizer))


@pytest.fixture
def policy(smollm2_tokenizer):
    return tiny_backbone("llama", vocab_size=len(smollm2_tokenizer))


def test_rollouts_record_the_format_and_refuse_mixed_prompts(policy, smollm2_tokenizer, tmp_path):
    from lenvm_rl.data import chat_template_hash, rollout_encoding

    config = RolloutConfig(num_completions=1, max_new_tokens=3, batch_size=2, backend="hf")
    raw = sample_rollouts(policy, smollm2_tokenizer, [TEXT, "Hi"], tmp_path / "raw.jsonl", config, progress=False)
    assert raw[0]["prompt"] == TEXT and raw[0]["prompt_ids"] == smollm2_tokenizer(TEXT)["input_ids"]
    assert raw[0]["sampler"]["chat_template_hash"] is None
    assert rollout_encoding(raw).prompt_format == "raw"
    chat = sample_rollouts(policy, smollm2_tokenizer, [MESSAGES], tmp_path / "chat.jsonl", config, progress=False)
    assert chat[0]["sampler"]["chat_template_hash"] == chat_template_hash(smollm2_tokenizer)
    assert rollout_encoding(chat).prompt_format == "chat"
    with pytest.raises(ValueError, match="prompts mix raw strings and chat messages"):
        sample_rollouts(policy, smollm2_tokenizer, [TEXT, MESSAGES], tmp_path / "mixed.jsonl", config,
                        progress=False)
    with pytest.raises(ValueError, match="the rollout records mix prompt formats"):
        rollout_encoding(raw + chat)


def test_an_old_rollout_file_resumes(policy, smollm2_tokenizer, tmp_path):
    config = RolloutConfig(num_completions=1, max_new_tokens=3, batch_size=1, backend="hf")
    out = tmp_path / "r.jsonl"
    first = sample_rollouts(policy, smollm2_tokenizer, [MESSAGES], out, config, progress=False)
    old = [{**rec, "sampler": {k: v for k, v in rec["sampler"].items() if not k.endswith("_hash")}} for rec in first]
    out.write_text("".join(json.dumps(rec) + "\n" for rec in old))  # written before the hashes were recorded
    records = sample_rollouts(policy, smollm2_tokenizer, [MESSAGES, MESSAGES], out, config, progress=False)
    assert len(records) == 2 and records[0] == old[0]


def pretrained_lenvm(tmp_path, smollm2_tokenizer, policy, prompts) -> Path:
    """A LenVM pretrained (a few steps) on rollouts of ``prompts``, saved with its tokenizer."""
    config = RolloutConfig(num_completions=2, max_new_tokens=3, batch_size=4, backend="hf")
    records = sample_rollouts(policy, smollm2_tokenizer, prompts, tmp_path / "r.jsonl", config, progress=False)
    model = LenVM(tiny_backbone("llama", vocab_size=len(smollm2_tokenizer), seed=3), gamma=0.9)
    args = LenVMConfig(output_dir=str(tmp_path / "lenvm"), per_device_train_batch_size=2, max_steps=1,
                       report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = LenVMTrainer(model, args, train_dataset=build_value_dataset(records), processing_class=smollm2_tokenizer)
    trainer.train()
    trainer.save_model(args.output_dir)
    return Path(args.output_dir)


def test_a_checkpoint_records_its_prompt_format(tmp_path, smollm2_tokenizer, policy):
    from lenvm_rl.data import chat_template_hash
    from lenvm_rl.modeling.vocabulary import vocabulary_hash

    path = pretrained_lenvm(tmp_path, smollm2_tokenizer, policy, [TEXT, "Name a prime."])
    config = json.loads((path / "config.json").read_text())
    assert config["lenvm_prompt_format"] == "raw" and config["lenvm_chat_template_hash"] is None
    assert config["lenvm_vocabulary_hash"] == vocabulary_hash(smollm2_tokenizer)
    assert config["lenvm_gamma"] == pytest.approx(0.9)
    lenvm = LenVM.from_pretrained(path)
    assert (lenvm.prompt_format, lenvm.vocabulary_hash) == ("raw", vocabulary_hash(smollm2_tokenizer))
    predictor = LengthPredictor.from_pretrained(path)  # a string follows the LenVM's format: raw, as in TRL
    assert predictor.prompt_format == "raw" and predictor.encode_prompt(TEXT) == smollm2_tokenizer(TEXT)["input_ids"]

    chat = pretrained_lenvm(tmp_path / "chat", smollm2_tokenizer, policy, [MESSAGES])
    config = json.loads((chat / "config.json").read_text())
    assert config["lenvm_prompt_format"] == "chat"
    assert config["lenvm_chat_template_hash"] == chat_template_hash(smollm2_tokenizer)


def test_the_critic_and_the_predictor_warn_once_when_the_format_differs(smollm2_tokenizer, caplog):
    from lenvm_rl.data import chat_template_hash

    lenvm = LenVM(tiny_backbone("llama", vocab_size=len(smollm2_tokenizer)), gamma=0.9)
    lenvm.prompt_format, lenvm.chat_template_hash = "chat", chat_template_hash(smollm2_tokenizer)
    critic = LenVMCritic(lenvm)
    with caplog.at_level(logging.WARNING):
        critic.check_prompt_format({"prompt": MESSAGES}, smollm2_tokenizer)  # as trained: silent
        assert not caplog.records
        for _ in range(3):
            critic.check_prompt_format({"prompt": TEXT}, smollm2_tokenizer)
    assert len(caplog.records) == 1 and "pretrained on chat prompts" in caplog.text and "raw-text" in caplog.text
    caplog.clear()
    other_kwargs = LenVMCritic(lenvm)
    with caplog.at_level(logging.WARNING):
        other_kwargs.check_prompt_format({"prompt": MESSAGES}, smollm2_tokenizer,
                                         chat_template_kwargs={"enable_thinking": False})
    assert "another chat template or other chat_template_kwargs" in caplog.text
    caplog.clear()
    predictor = LengthPredictor(lenvm, smollm2_tokenizer, prompt_format="raw")
    with caplog.at_level(logging.WARNING):
        predictor.predict([TEXT, TEXT])
    assert len(caplog.records) == 1 and "pretrained on chat prompts" in caplog.text


def test_an_old_checkpoint_loads_as_unknown_without_a_false_warning(tiny_checkpoint, smollm2_tokenizer, tmp_path,
                                                                       caplog):
    old = tmp_path / "old"
    old.mkdir()
    for f in tiny_checkpoint.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    config = json.loads((old / "config.json").read_text())
    for key in ("lenvm_prompt_format", "lenvm_chat_template_hash", "lenvm_vocabulary_hash"):
        config.pop(key, None)  # as written before formats were recorded
    (old / "config.json").write_text(json.dumps(config))
    lenvm = LenVM.from_pretrained(old)
    assert (lenvm.prompt_format, lenvm.chat_template_hash, lenvm.vocabulary_hash) == ("unknown", None, None)
    with caplog.at_level(logging.WARNING):
        critic = LenVMCritic(lenvm, processing_class=smollm2_tokenizer)  # checked against its saved tokenizer
        critic.check_prompt_format({"prompt": TEXT}, smollm2_tokenizer)
        critic.check_prompt_format({"prompt": MESSAGES}, smollm2_tokenizer)
        predictor = LengthPredictor.from_pretrained(old)
        predictor.predict([TEXT])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # strings are formatted as every LenVM of that time was trained: a user message under the chat template
    assert predictor.prompt_format == "chat" and predictor.encode_prompt(TEXT) == encode_prompt(smollm2_tokenizer,
                                                                                                MESSAGES)


def test_the_predictor_takes_the_string_format_as_an_option(tiny_checkpoint, smollm2_tokenizer):
    raw = LengthPredictor.from_pretrained(tiny_checkpoint, prompt_format="raw")
    chat = LengthPredictor.from_pretrained(tiny_checkpoint, prompt_format="chat")
    assert raw.encode_prompt(TEXT) == smollm2_tokenizer(TEXT)["input_ids"]
    assert chat.encode_prompt(TEXT) == raw.encode_prompt(MESSAGES) == encode_prompt(smollm2_tokenizer, MESSAGES)
    with pytest.raises(ValueError, match=r"prompt_format must be one of \('raw', 'chat'\) or None, got 'text'"):
        LengthPredictor.from_pretrained(tiny_checkpoint, prompt_format="text")


def test_guided_decoding_encodes_like_the_lenvm(smollm2_tokenizer, policy):
    lenvm = LenVM(tiny_backbone("llama", vocab_size=len(smollm2_tokenizer), seed=2), gamma=0.9)
    lenvm.prompt_format = "raw"
    policy.generation_config.eos_token_id = smollm2_tokenizer.eos_token_id
    seen = []
    generate = policy.generate

    def spy(input_ids, **kwargs):
        seen.append(input_ids[0][kwargs["attention_mask"][0].bool()].tolist())
        return generate(input_ids=input_ids, **kwargs)

    policy.generate = spy
    guided_generate(policy, smollm2_tokenizer, [TEXT], lenvm=lenvm, lenvm_tokenizer=smollm2_tokenizer,
                    max_new_tokens=2)
    guided_generate(policy, smollm2_tokenizer, [TEXT], lenvm=lenvm, lenvm_tokenizer=smollm2_tokenizer,
                    max_new_tokens=2, prompt_format="chat", chat_template_kwargs={"unused": 1})
    assert seen == [smollm2_tokenizer(TEXT)["input_ids"], encode_prompt(smollm2_tokenizer, MESSAGES)]


def test_the_grpo_trainer_warns_once_when_its_dataset_is_formatted_unlike_the_lenvm(tmp_path, caplog):
    from trainers.grpo_fixtures import constant_reward, prompt_dataset, tiny_lenvm, tiny_policy, tiny_tokenizer

    from lenvm_rl.trainers import LengthAwareGRPOConfig, LengthAwareGRPOTrainer

    lenvm = tiny_lenvm()
    lenvm.prompt_format = "chat"  # pretrained on chat prompts; the dataset's prompts are strings (raw)
    args = LengthAwareGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                                 max_completion_length=4, report_to="none", use_cpu=True, bf16=False,
                                 disable_tqdm=True, length_estimator="lenvm", length_coef=0.5)
    trainer = LengthAwareGRPOTrainer(tiny_policy(), reward_funcs=constant_reward, args=args,
                                     train_dataset=prompt_dataset(), processing_class=tiny_tokenizer(),
                                     length_critic=lenvm)
    batch = [dict(trainer.train_dataset[0]) for _ in range(4)]
    with caplog.at_level(logging.WARNING):
        trainer._generate_and_score_completions(batch)
        trainer._generate_and_score_completions(batch)
    warnings = [r for r in caplog.records if "pretrained on chat prompts" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert torch.isfinite(trainer._generate_and_score_completions(batch)["advantages"]).all()
