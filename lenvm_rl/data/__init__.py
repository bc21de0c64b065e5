"""Data: prompt sources, policy rollouts, and value-pretraining datasets."""

from lenvm_rl.data.prompts import encode_prompt, load_prompts, to_messages

__all__ = ["encode_prompt", "load_prompts", "to_messages"]
