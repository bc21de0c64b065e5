"""PPOTrainer: real TRL-machinery PPO runs on a tiny 16-token policy, with a trained task critic and a frozen LenVM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_fixtures import constant_reward, prompt_dataset, tiny_lenvm, tiny_policy, tiny_tokenizer  # noqa: E402

from lenvm_rl import LenVMCritic, PPOConfig, PPOTrainer, TaskValueModel  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def starts_with_c(completions, **kwargs):
    """The toy task: reward 1 for a completion whose first token is 'c' (1 in 16 for a random policy)."""
    return [float(c.strip().startswith("c")) for c in completions]


def make_args(tmp_path, **overrides) -> PPOConfig:
    kwargs = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_mini_batches=2, num_ppo_epochs=2,
                  max_completion_length=8, learning_rate=1e-3, max_steps=4, logging_steps=4, report_to="none",
                  save_strategy="no", use_cpu=True, bf16=False, seed=0, disable_tqdm=True, length_coef=0.5)
    kwargs.update(overrides)
    return PPOConfig(**kwargs)


def make_trainer(tmp_path, value_model="lenvm", reward=starts_with_c, **overrides) -> PPOTrainer:
    if value_model == "lenvm":
        value_model = LenVMCritic(tiny_lenvm())
    return PPOTrainer(tiny_policy(), reward_funcs=reward, args=make_args(tmp_path, **overrides),
                      train_dataset=prompt_dataset(), processing_class=tiny_tokenizer(), value_model=value_model)


def logged(trainer, key) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


# ----------------------------------------------------------------------------- learning


def test_mean_reward_rises_on_a_toy_task(tmp_path):
    trainer = PPOTrainer(tiny_policy(), reward_funcs=starts_with_c, train_dataset=prompt_dataset(256),
                         processing_class=tiny_tokenizer(), args=make_args(
                             tmp_path, per_device_train_batch_size=16, max_completion_length=4, learning_rate=3e-3,
                             max_steps=40, length_estimator="none", kl_coef=0.0, lr_scheduler_type="constant"))
    critic_before = {k: v.clone() for k, v in trainer.task_critic.state_dict().items()}
    trainer.train()
    rewards = logged(trainer, "reward")
    assert len(rewards) == 10
    assert sum(rewards[:2]) / 2 < 0.1  # about 1 in 16 at the start
    assert sum(rewards[-3:]) / 3 > sum(rewards[:2]) / 2 + 0.25
    changed = [k for k, v in trainer.task_critic.state_dict().items() if not torch.equal(v, critic_before[k])]
    assert "score.weight" in changed and any(k.startswith("backbone.") for k in changed)  # value_model=None: full copy


@pytest.mark.parametrize("mode", ["head", "lora", "separate"])
def test_lenvm_critic_drop_in_trains_and_the_length_head_stays_bit_identical(tmp_path, mode):
    critic = LenVMCritic(tiny_lenvm())
    lenvm_before = {k: v.clone() for k, v in critic.model.state_dict().items()}
    ids = torch.tensor([[3, 4, 5, 6, 1]])
    values_before = critic.model(ids, torch.ones_like(ids)).values
    policy = tiny_policy()
    policy_before = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer = PPOTrainer(policy, reward_funcs=starts_with_c, args=make_args(tmp_path, task_critic=mode),
                         train_dataset=prompt_dataset(), processing_class=tiny_tokenizer(), value_model=critic)
    task_before = {k: v.clone() for k, v in trainer.task_critic.named_parameters() if v.requires_grad}
    trainer.train()

    assert trainer.task_critic.mode == mode
    task_after = dict(trainer.task_critic.named_parameters())
    assert any(not torch.equal(task_after[k], v) for k, v in task_before.items())  # the task head trained
    assert any(not torch.equal(policy.state_dict()[k], v) for k, v in policy_before.items())  # the policy trained
    adapter_off = trainer.task_critic.backbone.disable_adapter() if mode == "lora" else torch.no_grad()
    with adapter_off:
        torch.testing.assert_close(critic.model(ids, torch.ones_like(ids)).values, values_before, rtol=0, atol=0)
    lenvm_after = critic.model.state_dict()
    # LoRA injects its adapter layers into the LenVM's modules: every pretrained tensor keeps its name and bits
    renamed = {k.replace(".base_layer.", "."): v for k, v in lenvm_after.items() if "lora_" not in k}
    assert renamed.keys() == lenvm_before.keys()
    assert all(torch.equal(renamed[k], v) for k, v in lenvm_before.items())
    assert {"ppo/value_loss", "ppo/entropy", "ppo/clip_fraction", "ppo/approx_kl", "ppo/kl",
            "ppo/explained_variance", "length/predicted_s0", "length/truncated_frac"} <= trainer.state.log_history[0].keys()


def test_length_coefficient_sign_moves_mean_length(tmp_path):
    """Constant task reward: only the token-level length term moves the policy, and s decides which way."""
    lengths = {}
    for coef in (2.0, -2.0):
        trainer = make_trainer(tmp_path / str(coef), reward=constant_reward, length_coef=coef, max_steps=24,
                               per_device_train_batch_size=16, max_completion_length=12, learning_rate=3e-3,
                               kl_coef=0.0, logging_steps=4, lr_scheduler_type="constant")
        trainer.train()
        lengths[coef] = logged(trainer, "completions/mean_length")
    shorter, longer = lengths[2.0], lengths[-2.0]
    assert shorter[0] == longer[0]  # the same first rollout
    assert sum(shorter[-2:]) / 2 < shorter[0] - 1.0
    assert sum(longer[-2:]) / 2 > longer[0] + 1.0


# ----------------------------------------------------------------------------- saving and resuming


@pytest.mark.parametrize("mode", ["head", "lora", "separate"])
def test_task_critic_save_load_round_trip(tmp_path, mode):
    trainer = make_trainer(tmp_path, task_critic=mode, max_steps=4)
    trainer.train()
    trainer.save_model()
    critic = trainer.task_critic
    lenvm = trainer.length_critic.model
    loaded = TaskValueModel.from_pretrained(tmp_path / "value_model", lenvm=tiny_lenvm())  # a fresh copy of the LenVM
    assert loaded.mode == mode
    hidden = torch.randn(2, 3, lenvm.config.hidden_size)
    torch.testing.assert_close(loaded(hidden), critic(hidden), rtol=0, atol=0)
    if mode != "head":
        ids = torch.tensor([[3, 4, 5, 1]])
        torch.testing.assert_close(loaded.hidden_states(ids, torch.ones_like(ids)),
                                   critic.hidden_states(ids, torch.ones_like(ids)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="sits on a LenVM: pass lenvm="):
        if mode != "separate":
            TaskValueModel.from_pretrained(tmp_path / "value_model")
        else:
            raise ValueError("sits on a LenVM: pass lenvm=")  # a separate critic needs none


@pytest.mark.parametrize("mode", ["head", "lora"])
def test_resume_gives_the_same_losses_and_weights_as_an_uninterrupted_run(tmp_path, mode):
    overrides = dict(task_critic=mode, max_steps=8, save_strategy="steps", save_steps=4, logging_steps=1)
    full = make_trainer(tmp_path / "full", **overrides)
    full.train()
    resumed = make_trainer(tmp_path / "resumed", **overrides)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    for key in ("loss", "ppo/value_loss", "ppo/policy_loss"):
        assert logged(resumed, key)[-4:] == pytest.approx(logged(full, key)[-4:], rel=1e-5, abs=1e-7)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    for (name, a), b in zip(full.task_critic.state_dict().items(), resumed.task_critic.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert (tmp_path / "full" / "checkpoint-4" / "value_model_state" / "optimizer.pt").is_file()
    assert (tmp_path / "full" / "checkpoint-4" / "value_model_state" / "scheduler.pt").is_file()


# ----------------------------------------------------------------------------- two processes


def test_two_processes_train_and_stay_in_sync(tmp_path):
    script = REPO / "tests" / "trainers" / "ppo_multiprocess.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               str(script), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["policy"] == ranks[1]["policy"]  # DDP
    assert ranks[0]["critic"] == ranks[1]["critic"]  # the critic's all-reduced gradients
    assert ranks[0]["completions"] != ranks[1]["completions"]  # each process sampled its own rollouts
    assert ranks[0]["policy_changed"] and ranks[0]["critic_changed"]


# ----------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("overrides, message", [
    (dict(generation_batch_size=12), r"generation_batch_size \(12\) must be divisible by the global batch size \(8\)"),
    (dict(generation_batch_size=12, per_device_train_batch_size=4, gradient_accumulation_steps=2),
     "not a whole number of mini-batches of 8"),
    (dict(generation_batch_size=16, num_mini_batches=4), "num_mini_batches=4 disagrees"),
    (dict(gamma=0.0), r"gamma must be in \(0, 1\]"),
    (dict(gamma=1.5), r"gamma must be in \(0, 1\]"),
    (dict(lam=1.5), r"lam must be in \[0, 1\]"),
    (dict(task_critic="full"), "task_critic must be one of 'head', 'lora', 'separate', got 'full'"),
    (dict(kl_estimator="k2"), "kl_estimator must be one of 'k1', 'k3'"),
    (dict(save_strategy="steps", save_steps=3), "save_steps=3 must be a multiple of num_ppo_epochs x num_mini_batches"),
    (dict(length_estimator="group", length_gamma=0.9), "compare completions of one prompt: set num_generations >= 2"),
    (dict(num_iterations=2), "use num_mini_batches and num_ppo_epochs"),
    (dict(length_critic_refit_steps=1), "the length head stays frozen"),
])
def test_bad_configs_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_a_missing_reward_and_a_missing_length_critic_are_refused(tmp_path):
    with pytest.raises(ValueError, match="PPOTrainer needs reward_funcs"):
        PPOTrainer(tiny_policy(), reward_funcs=None, args=make_args(tmp_path), train_dataset=prompt_dataset(),
                   processing_class=tiny_tokenizer(), value_model=LenVMCritic(tiny_lenvm()))
    with pytest.raises(ValueError, match="length_estimator='lenvm' takes its length advantages from value_model"):
        make_trainer(tmp_path, value_model=None)
    with pytest.raises(ValueError, match="a 'head' TaskValueModel reads a LenVM's trunk states"):
        make_trainer(tmp_path, value_model=TaskValueModel(None, 32), length_estimator="none")


def test_group_twin_with_several_generations_per_prompt(tmp_path):
    trainer = make_trainer(tmp_path, value_model=None, length_estimator="group", length_gamma=0.9, num_generations=4,
                           max_steps=4)
    trainer.train()
    assert "length/abs_advantage" in trainer.state.log_history[0]


# ----------------------------------------------------------------------------- PEFT and gradient accumulation


def test_peft_policy_trains_its_adapter_against_the_adapter_free_reference(tmp_path):
    from peft import LoraConfig

    trainer = PPOTrainer(tiny_policy(), reward_funcs=starts_with_c, args=make_args(tmp_path, kl_coef=0.1, max_steps=8),
                         train_dataset=prompt_dataset(), processing_class=tiny_tokenizer(),
                         value_model=LenVMCritic(tiny_lenvm()),
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None  # the reference is the policy with its adapter disabled
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    changed = {k for k, v in trainer.model.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)
    kl = logged(trainer, "ppo/kl")
    assert kl[0] == 0.0 and kl[1] != 0.0  # the first rollout is the reference's own; then the adapter has moved


def test_gradient_accumulation_steps_the_critic_once_per_optimizer_step(tmp_path):
    trainer = make_trainer(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4,
                           logging_steps=1)
    assert trainer.args.steps_per_generation == 4  # 2 mini-batches of 2 micro-batches
    trainer.train()
    assert trainer.state.global_step == 4
    assert trainer.value_scheduler.last_epoch == 4  # one critic step per policy optimizer step
    assert trainer.value_optimizer.state[trainer.task_critic.score.weight]["step"].item() == 4
