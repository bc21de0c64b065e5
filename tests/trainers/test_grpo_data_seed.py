"""``data_seed`` fixes the prompt order of GRPO while ``seed`` changes: the seeds of the RL comparison see the same data."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from grpo_fixtures import prompt_dataset, tiny_policy, tiny_tokenizer  # noqa: E402

from lenvm_rl import LengthAwareGRPOConfig, LengthAwareGRPOTrainer  # noqa: E402


def prompt_order(tmp_path, **seeds) -> list[int]:
    args = LengthAwareGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                                 max_completion_length=4, max_steps=1, report_to="none", use_cpu=True, bf16=False,
                                 length_estimator="none", length_gamma=0.9, **seeds)
    trainer = LengthAwareGRPOTrainer(tiny_policy(), reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                                     args=args, train_dataset=prompt_dataset(), processing_class=tiny_tokenizer())
    return list(trainer._get_train_sampler())[:32]


def test_data_seed_keeps_the_prompt_order_across_seeds(tmp_path):
    assert prompt_order(tmp_path, seed=0, data_seed=0) == prompt_order(tmp_path, seed=1, data_seed=0)
    assert prompt_order(tmp_path, seed=0) == prompt_order(tmp_path, seed=0, data_seed=0)
    assert prompt_order(tmp_path, seed=0) != prompt_order(tmp_path, seed=1)  # TRL's default: seed shuffles the data
