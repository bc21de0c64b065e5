"""A tiny word-level tokenizer and policy for real GRPO runs in seconds (shared by tests and the 2-process script).

The vocabulary has 16 tokens, so a random policy ends a completion (EOS) about once in 16 tokens and
length can move quickly in either direction. Like SmolLM2, the pad token is the EOS token.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lenvm_rl import LenVM

WORDS = ["<unk>", "<eos>"] + [chr(ord("a") + i) for i in range(14)]
EOS_ID = 1


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>",
                                   unk_token="<unk>")


def tiny_policy(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, eos_token_id=EOS_ID, pad_token_id=EOS_ID, bos_token_id=None)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = EOS_ID
    return model


def tiny_lenvm(seed: int = 1, gamma: float = 0.9) -> LenVM:
    return LenVM(tiny_policy(seed), gamma=gamma)


def prompt_dataset(n: int = 64, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    letters = WORDS[2:]
    prompts = [" ".join(letters[int(i)] for i in torch.randint(0, len(letters), (3,), generator=g)) for _ in range(n)]
    return Dataset.from_dict({"prompt": prompts})


def constant_reward(completions, **kwargs):
    """A task reward that is the same for every completion: only the length term can move the policy."""
    return [0.0] * len(completions)
