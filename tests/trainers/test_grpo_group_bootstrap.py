"""The "group" twin scores a cut completion with the critic's V(s_T), the bootstrap of "lenvm" (one objective)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_fixtures import constant_reward, prompt_dataset, tiny_lenvm, tiny_policy, tiny_tokenizer  # noqa: E402

from lenvm_rl import LengthAwareGRPOConfig, LengthAwareGRPOTrainer  # noqa: E402


def make_trainer(tmp_path, critic, **overrides):
    args = LengthAwareGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                                 max_completion_length=12, max_steps=1, report_to="none", use_cpu=True, bf16=False,
                                 seed=0, temperature=1.0, length_estimator="group", length_coef=0.5,
                                 length_normalize="none", **overrides)
    return LengthAwareGRPOTrainer(tiny_policy(), reward_funcs=constant_reward, args=args,
                                  train_dataset=prompt_dataset(), processing_class=tiny_tokenizer(),
                                  length_critic=critic)


def test_cut_completions_are_bootstrapped_with_the_critic_value(tmp_path):
    trainer = make_trainer(tmp_path, tiny_lenvm(gamma=0.9))
    torch.manual_seed(3)
    batch = [dict(trainer.train_dataset[i]) for i in range(2) for _ in range(4)]
    out = trainer._generate_and_score_completions(batch)
    mask = out["completion_mask"].bool()
    terminated, lengths = trainer._rollout.terminated, trainer._rollout.lengths
    assert (~terminated).any() and terminated.any(), "the batch must hold both EOS and cut rows"
    critic = trainer.length_critic(out["prompt_ids"], out["prompt_mask"], out["completion_ids"],
                                   out["completion_mask"], terminated=terminated, action_mask=mask)
    gamma = 0.9
    G = [-(1 - gamma ** int(n) * (1 + (0.0 if t else float(v))))
         for n, t, v in zip(lengths, terminated, critic.final_values)]
    expected = []
    for g in range(2):
        mean = sum(G[4 * g:4 * g + 4]) / 4
        expected += [0.5 * (G[i] - mean) for i in range(4 * g, 4 * g + 4)]
    expected = torch.tensor(expected)[:, None].expand_as(mask)
    torch.testing.assert_close(out["advantages"], torch.where(mask, expected, 0.0), atol=1e-5, rtol=1e-5)


def test_without_a_critic_the_twin_says_it_scores_the_cut_length(tmp_path):
    with pytest.warns(UserWarning, match="scored at its cut length"):
        make_trainer(tmp_path, None, length_gamma=0.9)


def test_a_critic_of_another_gamma_is_not_used_for_the_bootstrap(tmp_path):
    with pytest.warns(UserWarning, match="models gamma=0.9, not length_gamma=0.8"):
        trainer = make_trainer(tmp_path, tiny_lenvm(gamma=0.9), length_gamma=0.8)
    assert not trainer._twin_bootstraps
