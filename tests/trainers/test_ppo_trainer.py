"""PPOTrainer: real TRL-machinery PPO runs on a tiny 16-token policy, with a trained task critic and a frozen LenVM."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import accelerate_launch  # noqa: E402
from grpo_fixtures import constant_reward, prompt_dataset, tiny_lenvm, tiny_policy, tiny_tokenizer  # noqa: E402

from lenvm_rl import LenVMCritic, PPOConfig, PPOTrainer, TaskValueModel  # noqa: E402
from lenvm_rl.critics import LenVMCriticOutput  # noqa: E402
from lenvm_rl.trainers.estimators import RolloutBatch  # noqa: E402

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
    trainer = make_trainer(tmp_path, task_critic=mode, max_steps=4, save_value_model=True)
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
    command = accelerate_launch("--multi_gpu", "--num_processes", "2", str(script), str(tmp_path))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, (result.stdout[-1500:], result.stderr[-3000:])
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
    (dict(loss_type="grpo"), r"PPOConfig does not implement loss_type='grpo'.*Leave loss_type at its default \('dapo'\)"),
    (dict(epsilon_high=0.28), r"does not implement epsilon_high=0.28: PPO clips the ratio symmetrically"),
    (dict(top_entropy_quantile=0.2), r"does not implement top_entropy_quantile=0.2.*default \(1.0\)"),
    (dict(delta=1.5), "does not implement delta=1.5"),
    (dict(importance_sampling_level="sequence"), "does not implement importance_sampling_level='sequence'"),
    (dict(entropy_coef=0.01), "does not implement entropy_coef=0.01: PPO's loss has no entropy bonus"),
    (dict(use_adaptive_entropy=True), "does not implement use_adaptive_entropy=True"),
    (dict(off_policy_mask_threshold=0.5), "does not implement off_policy_mask_threshold=0.5"),
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


def test_grpo_defaults_and_the_vllm_correction_switch_are_accepted(tmp_path):
    assert make_args(tmp_path).vllm_importance_sampling_correction  # GRPOConfig's default, implemented
    assert not make_args(tmp_path, vllm_importance_sampling_correction=False).vllm_importance_sampling_correction


# ----------------------------------------------------------------------------- the task GAE (issue 18, item 3)


def head_critic_output(hidden_states, final_hidden_states, terminated) -> LenVMCriticOutput:
    """What the LenVM hands the 'head' task critic: its trunk states (the length fields are not read here)."""
    zeros = torch.zeros(hidden_states.shape[:2])
    return LenVMCriticOutput(values=zeros, final_values=zeros[:, 0], advantages=zeros, returns=zeros, shaping=zeros,
                             lengths=zeros, terminated=terminated, hidden_states=hidden_states,
                             final_hidden_states=final_hidden_states)


def task_returns(trainer, hidden, final_hidden, action_mask, terminated, scores):
    """The trainer's task advantages and returns for a rollout whose head-mode trunk states are given."""
    rows = len(scores)
    batch = RolloutBatch(mode="train", prompt_ids=None, prompt_mask=None, completion_ids=None,
                         completion_mask=action_mask.long(), action_mask=action_mask, terminated=terminated,
                         lengths=action_mask.sum(1), all_lengths=action_mask.sum(1), task_rewards=scores,
                         num_generations=1, local=slice(0, rows),
                         critic_out=head_critic_output(hidden, final_hidden, terminated),
                         old_per_token_logps=torch.zeros(action_mask.shape))
    advantages, loss_inputs = trainer._task_advantages(batch)
    return advantages, loss_inputs["returns"]


@pytest.fixture(scope="module")
def gae_trainer(tmp_path_factory):
    """A 'head' PPO trainer with no KL, no whitening and gamma = 1 (the probe's setting)."""
    trainer = make_trainer(tmp_path_factory.mktemp("gae"), length_estimator="none", kl_coef=0.0,
                           whiten_advantages=False, gamma=1.0)
    assert trainer.task_critic.mode == "head" and trainer.task_critic.score.in_features == 32
    return trainer


def test_task_gae_ends_at_the_last_token_of_eos_and_cut_rows_by_hand(gae_trainer):
    """Row 0 ended with EOS after 2 tokens, row 1 was cut at T = 3; the critic values s_T at 0.8 in both rows,
    which the task GAE must not read (gamma 0.9, lam 0.5, score 1)."""
    trainer = gae_trainer
    trainer.args.gamma, trainer.args.lam = 0.9, 0.5
    try:
        with torch.no_grad():  # the task head reads feature 0 of the trunk state
            trainer.task_critic.score.weight.zero_()
            trainer.task_critic.score.weight[0, 0] = 1.0
            trainer.task_critic.score.bias.zero_()
        hidden = torch.zeros(2, 3, 32)
        hidden[..., 0] = torch.tensor([[0.2, 0.4, 0.0], [0.5, 0.6, 0.7]])
        final_hidden = torch.zeros(2, 32)
        final_hidden[:, 0] = 0.8
        mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
        advantages, returns = task_returns(trainer, hidden, final_hidden, mask, torch.tensor([True, False]),
                                           torch.tensor([1.0, 1.0]))
    finally:
        trainer.args.gamma, trainer.args.lam = 1.0, 0.95
    # by hand (see tests/core/test_ppo_task_gae.py): the cut row's last delta is 1 - 0.7, not 1 + 0.9 * 0.8 - 0.7
    torch.testing.assert_close(advantages, torch.tensor([[0.43, 0.6, 0.0], [0.11425, 0.165, 0.3]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(returns, torch.tensor([[0.63, 1.0, 0.0], [0.61425, 0.765, 1.0]]), rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=6), eos=st.lists(st.booleans(), min_size=6,
       max_size=6), lam=st.floats(0.0, 1.0))
def test_refitting_a_generalising_critic_keeps_the_targets_of_cut_rows_bounded(gae_trainer, lengths, eos, lam):
    """Issue 18's probe: gamma = 1, score 1, a critic that generalises from s_{T-1} to s_T (every state of a row,
    s_T included, has the row's one-hot trunk state) and is refit exactly to each row's mean return. With the old
    bootstrap the targets of cut rows grew by about one score per refit; they must stay in [0, 1]."""
    trainer = gae_trainer
    trainer.args.lam = lam
    rows, steps = len(lengths), max(lengths)
    terminated = torch.tensor(eos[:rows])
    terminated[0] = False  # at least one cut row
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    hidden = torch.eye(32)[:rows, None, :].expand(-1, steps, -1).contiguous()
    try:
        with torch.no_grad():
            trainer.task_critic.score.weight.zero_()
            trainer.task_critic.score.bias.zero_()
        for _ in range(4):
            _, returns = task_returns(trainer, hidden, hidden[:, 0], mask, terminated, torch.ones(rows))
            assert returns[mask].max().item() <= 1.0 + 1e-5
            assert returns[mask].min().item() >= -1e-5
            with torch.no_grad():  # the least-squares refit: each row's value is the mean of its targets
                trainer.task_critic.score.weight[0, :rows] = (returns * mask).sum(1) / mask.sum(1)
    finally:
        trainer.args.lam = 0.95


# ----------------------------------------------------------------------------- vLLM importance sampling (item 7)


def test_vllm_importance_sampling_ratio_weighs_the_policy_loss_as_in_trl(tmp_path):
    """A synthetic mini-batch whose policy ratios exp(logp - old) are 1.5, 1.5, 1 | 0.5, 0.5 (cliprange 0.2), so the
    per-token losses are -1.2, 1.5, -2 | -0.5, 0.8 whatever the policy; TRL's ratio multiplies them."""
    trainer = make_trainer(tmp_path, length_estimator="none")
    batch = {"prompt_ids": torch.tensor([[3, 4, 5], [6, 7, 8]]), "prompt_mask": torch.ones(2, 3, dtype=torch.long),
             "completion_ids": torch.tensor([[9, 10, 11], [12, 1, 1]]),
             "completion_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    with torch.no_grad():
        logps = trainer._policy_logps(trainer.model, batch)[0]
    log_ratio = torch.tensor([[math.log(1.5), math.log(1.5), 0.0], [math.log(0.5), math.log(0.5), 0.0]])
    batch.update(old_per_token_logps=logps - log_ratio, advantages=torch.tensor([[1.0, -1.0, 2.0], [1.0, -1.0, 0.0]]),
                 values=torch.zeros(2, 3), returns=torch.zeros(2, 3), critic_hidden_states=torch.zeros(2, 3, 32),
                 importance_sampling_ratio=torch.tensor([[0.5, 2.0, 1.0], [3.0, 0.25, 1.0]]))  # token_truncate
    loss = trainer._compute_loss(trainer.model, batch)  # the task values and returns are 0: the loss is the policy's
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 2.0 - 0.5 + 0.8) / 5, abs=1e-5)  # no vLLM: no correction
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = True
    loss = trainer._compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx((-0.6 + 3.0 - 2.0 - 1.5 + 0.2) / 5, abs=1e-5)
    batch["importance_sampling_ratio"] = torch.tensor([[2.0], [0.5]])  # sequence_* modes
    loss = trainer._compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx((2.0 * (-1.2 + 1.5 - 2.0) + 0.5 * (-0.5 + 0.8)) / 5, abs=1e-5)
    trainer.vllm_importance_sampling_correction = False
    assert trainer._compute_loss(trainer.model, batch).item() == pytest.approx(-0.28, abs=1e-5)


# ----------------------------------------------------------------------------- fp16 loss scaling (item 8)


def run_with_loss_scale(tmp_path, scale, reward=starts_with_c):
    """Two optimizer steps with the policy's loss scaled as accelerate's fp16 GradScaler does on CUDA (here on the
    CPU, which accelerate gives no scaler); ``scale=None``: unscaled."""
    trainer = make_trainer(tmp_path, reward=reward, length_estimator="none", max_steps=2, num_ppo_epochs=1,
                           logging_steps=1)
    if scale is not None:
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    before = {k: v.clone() for k, v in trainer.task_critic.named_parameters()}
    trainer.train()
    return trainer, before


def test_loss_scaled_critic_steps_equal_unscaled_ones(tmp_path):
    plain, _ = run_with_loss_scale(tmp_path / "plain", None)
    scaled, before = run_with_loss_scale(tmp_path / "scaled", 2.0 ** 12)
    assert logged(scaled, "ppo/value_step_skipped") == [0.0, 0.0]
    for name, param in scaled.task_critic.named_parameters():
        assert not torch.equal(param, before[name])
        torch.testing.assert_close(param, dict(plain.task_critic.named_parameters())[name], rtol=0, atol=1e-6)


def test_an_overflowing_loss_scale_skips_the_critic_step(tmp_path):
    def large_score(completions, **kwargs):  # a value loss of order 1e8, whose scaled gradients overflow float32
        return [1e4] * len(completions)

    trainer, before = run_with_loss_scale(tmp_path, 2.0 ** 127, large_score)
    assert logged(trainer, "ppo/value_step_skipped") == [1.0, 1.0]
    for name, param in trainer.task_critic.named_parameters():
        assert torch.equal(param, before[name])  # finite and untouched, as the policy's skipped steps leave it
    assert trainer.value_scheduler.last_epoch == 0


@pytest.mark.gpu
def test_fp16_on_cuda_keeps_the_critic_finite(tmp_path):
    trainer = make_trainer(tmp_path, length_estimator="none", use_cpu=False, fp16=True, max_steps=4)
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.task_critic.parameters())
    assert logged(trainer, "ppo/value_step_skipped")


# ----------------------------------------------------------------------------- saving and the model card (item 8)


def test_save_model_leaves_the_critic_out_unless_asked_while_checkpoints_keep_it(tmp_path):
    run = tmp_path / "run"
    trainer = make_trainer(run, max_steps=4, save_strategy="steps", save_steps=4)
    trainer.train()
    trainer.save_model()  # what push_to_hub uploads
    assert (run / "model.safetensors").is_file() and not (run / "value_model").exists()
    assert (run / "checkpoint-4" / "value_model" / "task_critic.json").is_file()
    assert (run / "checkpoint-4" / "value_model_state" / "trainable.safetensors").is_file()
    resumed = make_trainer(tmp_path / "resumed", max_steps=8, save_strategy="steps", save_steps=4)
    resumed.train(resume_from_checkpoint=str(run / "checkpoint-4"))
    assert resumed.state.global_step == 8
    trainer.args.save_value_model = True
    trainer.save_model(str(tmp_path / "asked"))
    loaded = TaskValueModel.from_pretrained(tmp_path / "asked" / "value_model", lenvm=tiny_lenvm())
    torch.testing.assert_close(loaded.score.weight, trainer.task_critic.score.weight, rtol=0, atol=0)


def test_model_card_and_saved_arguments_name_ppo_and_record_the_lenvm(tmp_path):
    lenvm_dir = tmp_path / "lenvm"
    tiny_lenvm(gamma=0.9).save_pretrained(lenvm_dir)
    run = tmp_path / "run"
    trainer = make_trainer(run, value_model=LenVMCritic(str(lenvm_dir)), max_steps=4, save_strategy="steps",
                           save_steps=4)
    assert trainer.args.length_gamma == 0.9 and trainer.args.length_critic_name_or_path == str(lenvm_dir)
    trainer.train()
    card = (run / "README.md").read_text()
    assert "This model was trained with PPO, a method introduced in [Fine-Tuning Language Models" in card
    assert "1909.08593" in card and "- ppo" in card and "- lenvm-rl" in card
    assert "grpo" not in card.lower() and "DeepSeekMath" not in card
    assert f"Length critic (LenVM): `{lenvm_dir}`; gamma = 0.9." in card
    for setting in ("`length_coef`: `0.5`", "`length_estimator`: `'lenvm'`", "`length_lam`: `1.0`", "2604.27039"):
        assert setting in card
    saved = torch.load(run / "checkpoint-4" / "training_args.bin", weights_only=False)
    assert (saved.length_gamma, saved.length_critic_name_or_path, saved.length_coef) == (0.9, str(lenvm_dir), 0.5)
