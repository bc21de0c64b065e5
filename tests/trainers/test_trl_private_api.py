"""The TRL internals that LengthAwareGRPOTrainer and PPOTrainer rely on still exist (checked against TRL 1.16.0).

A TRL upgrade that renames or drops one fails here, naming it, rather than deep inside a training step.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
from trl import GRPOConfig, GRPOTrainer

from lenvm_rl.trainers import grpo_trainer, ppo_trainer

METHODS = {  # name -> the parameters the trainers pass (by name or position)
    "_generate_and_score_completions": ("inputs",),
    "_generate": ("prompts",),
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "_get_train_sampler": ("dataset",),
    "_save": ("output_dir", "state_dict"),
    "_save_checkpoint": ("model", "trial"),
    "_load_optimizer_and_scheduler": ("checkpoint",),
    "_get_output_dir": ("trial",),
    "_compute_loss": ("model", "inputs"),
    "_get_per_token_logps_and_entropies": ("model", "input_ids", "attention_mask", "logits_to_keep",
                                           "compute_entropy"),
    "create_scheduler": ("num_training_steps", "optimizer"),
    "training_step": ("model", "inputs", "num_items_in_batch"),
}
INSTANCE_ATTRIBUTES = ("_metrics", "_step", "eos_token_ids", "reward_weights", "num_generations",
                       "num_generations_eval", "chat_template", "chat_template_kwargs", "ref_model", "beta",
                       "temperature", "use_vllm", "vllm_importance_sampling_correction")
CLASS_ATTRIBUTES = ("_tag_names", "_name", "_paper")
CONFIG_FIELDS = (*ppo_trainer.GRPO_ONLY_SETTINGS, *ppo_trainer.GRPO_FIELDS_FROM_PPO, *ppo_trainer.GRPO_CHECKS_VIEW,
                 "vllm_importance_sampling_correction", "mask_truncated_completions")
DOCUMENTED = grpo_trainer.LengthAwareGRPOTrainer.__doc__ + ppo_trainer.PPOTrainer.__doc__


@pytest.mark.parametrize("name, parameters", METHODS.items())
def test_trl_methods_exist_with_the_parameters_used(name, parameters):
    method = getattr(GRPOTrainer, name, None)
    assert method is not None, f"trl.GRPOTrainer has no method {name!r}, which lenvm_rl's trainers override or call"
    signature = inspect.signature(method).parameters
    missing = [p for p in parameters if p not in signature]
    assert not missing, f"trl.GRPOTrainer.{name} has no parameter(s) {missing}: its signature is now {signature}"
    assert name in DOCUMENTED, f"{name} is used but not listed in the trainers' docstrings"


@pytest.mark.parametrize("name", INSTANCE_ATTRIBUTES)
def test_trl_instance_attributes_are_still_set(name):
    source = inspect.getsource(GRPOTrainer)
    assert hasattr(GRPOTrainer, name) or re.search(rf"self\.{name}\s*(:[^=\n]*)?=[^=]", source), (
        f"trl.GRPOTrainer no longer sets self.{name}, which lenvm_rl's trainers read")
    assert name in DOCUMENTED, f"{name} is used but not listed in the trainers' docstrings"


@pytest.mark.parametrize("name", CLASS_ATTRIBUTES)
def test_trl_model_card_class_attributes_exist(name):
    assert hasattr(GRPOTrainer, name), f"trl.GRPOTrainer has no class attribute {name!r} (its model card's)"


@pytest.mark.parametrize("name", CONFIG_FIELDS)
def test_grpo_config_fields_exist(name):
    assert name in {f.name for f in dataclasses.fields(GRPOConfig)}, (
        f"trl.GRPOConfig has no field {name!r}, which PPOConfig maps or refuses")


def test_grpo_config_still_refuses_one_generation():
    """GRPO_CHECKS_VIEW exists for this check only: drop it when TRL accepts num_generations=1."""
    with pytest.raises(ValueError, match="at least 2 generations"):
        GRPOConfig("unused", num_generations=1, per_device_train_batch_size=2, use_cpu=True, bf16=False)
