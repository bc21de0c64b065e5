"""PPOConfig's explicit mapping to GRPO's fields, its refusal of the GRPO fields it sets itself, and the registry of
length estimators (issue 20, items 3 and 6)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_fixtures import constant_reward, prompt_dataset, tiny_policy, tiny_tokenizer  # noqa: E402

from lenvm_rl import PPOConfig, PPOTrainer  # noqa: E402
from lenvm_rl.trainers.estimators import (  # noqa: E402
    LENGTH_ESTIMATORS,
    LengthEstimator,
    get_length_estimator,
    register_length_estimator,
)


def make_args(tmp_path, **overrides) -> PPOConfig:
    kwargs = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_mini_batches=2, num_ppo_epochs=3,
                  max_completion_length=4, max_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
                  length_estimator="none", cliprange=0.3, kl_coef=0.07)
    kwargs.update(overrides)
    return PPOConfig(**kwargs)


def test_grpo_fields_are_set_from_ppo_fields(tmp_path):
    args = make_args(tmp_path)
    assert (args.num_iterations, args.epsilon, args.beta) == (3, 0.3, 0.07)
    assert args.steps_per_generation == 2 and args.generation_batch_size == 8
    assert args.num_generations == 1 and args.scale_rewards == "none"  # GRPO's checks saw 2, PPO keeps 1


@pytest.mark.parametrize("overrides, message", [
    (dict(beta=0.1), r"does not implement beta=0.1: .*set kl_coef"),
    (dict(epsilon=0.1), r"does not implement epsilon=0.1: PPO sets it from cliprange"),
    (dict(steps_per_generation=2), r"does not implement steps_per_generation=2: PPO sets it from num_mini_batches"),
])
def test_grpo_fields_that_ppo_sets_are_refused_not_overwritten(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_the_trainer_leaves_its_args_as_configured(tmp_path):
    """PPO's own reference replaces TRL's: TRL builds none, and args.beta keeps the KL coefficient."""
    args = make_args(tmp_path)
    trainer = PPOTrainer(tiny_policy(), reward_funcs=constant_reward, args=args, train_dataset=prompt_dataset(),
                         processing_class=tiny_tokenizer())
    assert args.beta == trainer.beta == 0.07 and args.num_generations == trainer.num_generations == 1
    assert trainer.ref_model is not None


def test_every_estimator_is_registered_once_by_name():
    assert set(LENGTH_ESTIMATORS) == {"lenvm", "lenvm_shaping", "group", "kimi", "none"}
    assert get_length_estimator("lenvm", "shaping") is LENGTH_ESTIMATORS["lenvm_shaping"]
    with pytest.raises(ValueError, match="no length estimator 'kimi_shaping'"):
        get_length_estimator("kimi", "shaping")
    with pytest.raises(ValueError, match="length estimator 'group' is already registered"):
        register_length_estimator("group")(type("Other", (LengthEstimator,), {}))
