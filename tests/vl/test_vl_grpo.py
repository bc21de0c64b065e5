"""Issue 23, item 4: one LengthAwareGRPOTrainer step with a tiny VL policy, image prompts (TRL's ``image`` column) and
a tiny VL LenVM critic that reads the image inputs TRL passes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_vl import synthetic_image, tiny_processor, tiny_vl_backbone  # noqa: E402

from lenvm_rl import LengthAwareGRPOConfig, LengthAwareGRPOTrainer, LenVM, LenVMCritic  # noqa: E402


def rewards_by_length(completions, completion_ids, **kwargs):
    return [float(len(ids) % 3) for ids in completion_ids]


def test_one_grpo_step_with_a_vl_policy_and_a_vl_lenvm(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": f"What colour is picture {i}?"}] for i in range(4)],
        "image": [synthetic_image(i, (56, 56) if i % 2 else (84, 56)) for i in range(4)],
    })
    args = LengthAwareGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                                 max_completion_length=8, learning_rate=1e-2, max_steps=1, logging_steps=1,
                                 report_to="none", save_strategy="no", use_cpu=True, bf16=False, seed=0,
                                 disable_tqdm=True, length_estimator="lenvm", length_coef=0.5)
    policy = tiny_vl_backbone(seed=6)
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    critic = LenVMCritic(LenVM(tiny_vl_backbone(seed=7), gamma=0.9))
    trainer = LengthAwareGRPOTrainer(policy, reward_funcs=rewards_by_length, args=args, train_dataset=dataset,
                                     processing_class=tiny_processor("left"), length_critic=critic)
    trainer.train()

    batch = trainer._rollout
    assert set(batch.images) == {"pixel_values", "image_grid_thw", "num_images"}
    assert batch.images["num_images"] == [1] * 4
    # the critic scored the rollout with its images: the same values as a call on TRL's layout and image inputs
    again = critic(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                   terminated=batch.terminated, action_mask=batch.action_mask, **batch.images)
    torch.testing.assert_close(batch.critic_out.values, again.values, atol=0, rtol=0)
    assert bool(batch.critic_out.values[batch.action_mask].lt(0).all())
    # and the images matter to it: without the pixels it refuses rather than read placeholders as text
    with pytest.raises(ValueError, match="image placeholder tokens"):
        critic(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    logged = trainer.state.log_history[0]
    assert "length/predicted_s0" in logged and "length/abs_advantage" in logged
    changed = [name for name, p in policy.named_parameters() if not torch.equal(p, before[name])]
    assert any(".language_model." in name for name in changed)
