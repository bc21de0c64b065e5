"""LengthAwareGRPOTrainer: real TRL GRPO runs on a tiny 16-token policy, with hand-checked advantages."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import accelerate_launch  # noqa: E402
from grpo_fixtures import (  # noqa: E402
    EOS_ID,
    constant_reward,
    prompt_dataset,
    tiny_lenvm,
    tiny_policy,
    tiny_tokenizer,
)

from lenvm_rl import LengthAwareGRPOConfig, LengthAwareGRPOTrainer, LenVMCritic  # noqa: E402
from lenvm_rl.core import group_length_advantages, length_to_value  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def make_args(tmp_path, **overrides) -> LengthAwareGRPOConfig:
    kwargs = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                  max_completion_length=16, learning_rate=1e-3, max_steps=2, logging_steps=1, report_to="none",
                  save_strategy="no", use_cpu=True, bf16=False, seed=0, temperature=1.0, disable_tqdm=True,
                  length_estimator="lenvm", length_coef=0.5)
    kwargs.update(overrides)
    return LengthAwareGRPOConfig(**kwargs)


def make_trainer(tmp_path, critic="lenvm", reward=constant_reward, policy=None, peft_config=None, **overrides):
    args = make_args(tmp_path, **overrides)
    if critic == "lenvm":
        critic = tiny_lenvm()
    return LengthAwareGRPOTrainer(policy or tiny_policy(), reward_funcs=reward, args=args,
                                  train_dataset=prompt_dataset(), processing_class=tiny_tokenizer(),
                                  peft_config=peft_config, length_critic=critic)


def generation_batch(trainer, num_prompts=2):
    rows = [trainer.train_dataset[i] for i in range(num_prompts)]
    return [dict(row) for row in rows for _ in range(trainer.num_generations)]


def rewards_by_length(completions, completion_ids, **kwargs):
    """A task reward that varies within groups, so A_task is not zero."""
    return [float(len(ids) % 3) for ids in completion_ids]


# ----------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize("overrides, message", [
    (dict(length_estimator="tokens"), "length_estimator must be one of"),
    (dict(length_mode="shaping", length_critic_refit_steps=2), "refit in shaping mode"),
    (dict(length_gamma=1.0), r"length_gamma must be in \(0, 1\)"),
    (dict(length_gamma=0.0), r"length_gamma must be in \(0, 1\)"),
    (dict(length_normalize="group"), "length_normalize must be one of"),
    (dict(length_gate="always"), "length_gate must be one of"),
    (dict(length_mode="shaping", length_estimator="group"), "shaping mode|shapes with a LenVM potential"),
    (dict(length_estimator="group", length_critic_refit_steps=1), "has none to refit"),
    (dict(importance_sampling_level="sequence"), "GSPO.*smear or reinterpret"),
    (dict(loss_type="luspo"), "loss_type='luspo'"),
    (dict(off_policy_mask_threshold=0.5), "off_policy_mask_threshold"),
    (dict(length_lam=1.5), r"length_lam must be in \[0, 1\]"),
])
def test_bad_configs_are_refused_with_a_fix(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_sequence_level_losses_stay_allowed_for_the_twin(tmp_path):
    make_args(tmp_path, length_estimator="group", importance_sampling_level="sequence", length_gamma=0.9)


def test_bad_trainer_arguments(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match="needs a length critic"):
        make_trainer(tmp_path, critic=None)
    with pytest.raises(ValueError, match="'group' needs a discount"):
        make_trainer(tmp_path, critic=None, length_estimator="group")
    with pytest.raises(ValueError, match="length_gamma=0.5 differs from the LenVM's gamma=0.9"):
        make_trainer(tmp_path, length_gamma=0.5)
    with pytest.raises(ValueError, match=r"16 tokens|differs from the policy's"):  # SmolLM2-vocabulary LenVM
        make_trainer(tmp_path, critic=str(tiny_checkpoint))
    with pytest.raises(TypeError, match="LengthAwareGRPOConfig"):
        from trl import GRPOConfig

        LengthAwareGRPOTrainer(tiny_policy(), constant_reward, GRPOConfig(str(tmp_path), use_cpu=True, bf16=False),
                               train_dataset=prompt_dataset(), processing_class=tiny_tokenizer())


# ----------------------------------------------------------------------------- advantages, by hand


def test_lenvm_advantages_are_task_plus_scaled_critic_gae(tmp_path):
    trainer = make_trainer(tmp_path, reward=rewards_by_length, length_coef=0.3)
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(generation_batch(trainer))
    mask = out["completion_mask"].bool()
    critic = LenVMCritic(tiny_lenvm())
    crit = critic(out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"])
    # task advantages by hand: TRL's group-normalised reward
    lengths = mask.sum(1)
    rewards = (lengths % 3).float().view(-1, 4)
    task = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).flatten()
    a_len = crit.advantages
    std = a_len[mask].std(unbiased=False)
    expected = torch.where(mask, task[:, None] + 0.3 * a_len / (std + 1e-4), 0.0)
    torch.testing.assert_close(out["advantages"], expected, atol=1e-5, rtol=1e-5)
    assert out["advantages"].shape == out["completion_ids"].shape
    # terminated read from the generated ids, never from ids != pad (pad is the EOS id here)
    last = out["completion_ids"].gather(1, (lengths - 1)[:, None]).squeeze(1)
    assert trainer._rollout.terminated.tolist() == (last == EOS_ID).tolist()
    metrics = trainer._metrics["train"]
    for name in ("length/predicted_s0", "length/realised", "length/predicted_realised_corr", "length/abs_advantage",
                 "length/abs_advantage_share", "length/truncated_frac", "length/critic_explained_variance"):
        assert len(metrics[name]) == 1 and math.isfinite(metrics[name][0]), name
    assert metrics["length/realised"][0] == pytest.approx(lengths.float().mean().item())


def test_group_twin_advantages_equal_a_hand_computation(tmp_path):
    trainer = make_trainer(tmp_path, critic=None, length_estimator="group", length_gamma=0.8, length_coef=0.4,
                           length_normalize="none", length_gate="correct", length_correct_threshold=1.0,
                           reward=rewards_by_length)
    torch.manual_seed(1)
    out = trainer._generate_and_score_completions(generation_batch(trainer))
    mask = out["completion_mask"].bool()
    lengths = mask.sum(1).tolist()
    rewards = [float(n % 3) for n in lengths]
    expected = []
    for g in range(2):
        group = range(4 * g, 4 * g + 4)
        r_mean = sum(rewards[i] for i in group) / 4
        r_std = math.sqrt(sum((rewards[i] - r_mean) ** 2 for i in group) / 3)
        G = {i: -(1 - 0.8 ** lengths[i]) for i in group}
        G_mean = sum(G.values()) / 4
        for i in group:
            gate = 1.0 if rewards[i] >= 1.0 else 0.0
            expected.append((rewards[i] - r_mean) / (r_std + 1e-4) + 0.4 * gate * (G[i] - G_mean))
    expected = torch.tensor(expected)[:, None].expand_as(mask)
    torch.testing.assert_close(out["advantages"], torch.where(mask, expected, 0.0), atol=1e-5, rtol=1e-5)
    assert "length/predicted_s0" not in trainer._metrics["train"]  # no critic, no critic metrics
    # the core function on the same lengths agrees
    twin = group_length_advantages(torch.tensor(lengths), 0.8, 4)
    assert twin[0].item() == pytest.approx(length_to_value(torch.tensor(float(lengths[0])), 0.8).item()
                                           - length_to_value(torch.tensor(lengths[:4]).float(), 0.8).mean().item())


def test_shaping_mode_adds_the_discounted_shaping_return(tmp_path):
    trainer = make_trainer(tmp_path, length_mode="shaping", length_coef=2.0, length_normalize="none")
    torch.manual_seed(2)
    out = trainer._generate_and_score_completions(generation_batch(trainer))
    mask = out["completion_mask"].bool()
    crit = LenVMCritic(tiny_lenvm())(out["prompt_ids"], out["prompt_mask"], out["completion_ids"],
                                     out["completion_mask"])
    # telescoping: sum_{k>=t} gamma^(k-t) F_k = -V(s_t) + gamma^(T-t) V(s_T) (0 after EOS)
    T = mask.sum(1)
    steps_left = (T[:, None] - torch.arange(mask.shape[1])[None]).clamp(min=0)
    expected = -crit.values + 0.9 ** steps_left * crit.final_values[:, None]
    torch.testing.assert_close(out["advantages"], torch.where(mask, 2.0 * expected, 0.0), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- learning


def mean_lengths(trainer):
    return [entry["completions/mean_length"] for entry in trainer.state.log_history
            if "completions/mean_length" in entry]


@pytest.mark.parametrize("coef", [2.0, -2.0])
def test_length_coef_moves_the_mean_length(tmp_path, coef):
    critic = LenVMCritic(tiny_lenvm())
    critic_before = {k: v.clone() for k, v in critic.model.state_dict().items()}
    trainer = make_trainer(tmp_path, critic=critic, length_coef=coef, max_steps=40, learning_rate=3e-3,
                           max_completion_length=24, per_device_train_batch_size=16, num_generations=8)
    policy_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    lengths = mean_lengths(trainer)
    start, end = sum(lengths[:8]) / 8, sum(lengths[-8:]) / 8
    if coef > 0:
        assert end < 0.7 * start, (start, end)
    else:
        assert end > 1.2 * start, (start, end)
    assert any(not torch.equal(v, policy_before[k]) for k, v in trainer.model.state_dict().items())
    for k, v in critic.model.state_dict().items():  # the frozen critic is bit-identical
        assert torch.equal(v, critic_before[k]), k


def test_refit_changes_the_critic_head_only(tmp_path):
    critic = LenVMCritic(tiny_lenvm())
    before = {k: v.clone() for k, v in critic.model.state_dict().items()}
    trainer = make_trainer(tmp_path, critic=critic, length_critic_refit_steps=3, max_steps=3)
    trainer.train()
    changed = {k for k, v in critic.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("v_head.") for k in changed)
    losses = [e["length/critic_refit_loss"] for e in trainer.state.log_history if "length/critic_refit_loss" in e]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_resume_with_refit_gives_the_same_next_step_loss(tmp_path):
    def run(output_dir, resume=None):
        trainer = make_trainer(output_dir, length_critic_refit_steps=2, max_steps=3, save_strategy="steps",
                               save_steps=2)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, [e["loss"] for e in trainer.state.log_history if "loss" in e]

    full, full_losses = run(tmp_path / "full")
    assert (tmp_path / "full" / "checkpoint-2" / "length_critic" / "value_head.safetensors").is_file()
    resumed, resumed_losses = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed_losses[-1] == pytest.approx(full_losses[-1], rel=1e-5, abs=1e-7)
    for (k, v), (_, w) in zip(full.length_critic.model.v_head.state_dict().items(),
                              resumed.length_critic.model.v_head.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)


# ----------------------------------------------------------------------------- TRL features keep working


@pytest.mark.parametrize("overrides", [
    dict(loss_type="grpo"), dict(loss_type="bnpo"), dict(loss_type="dr_grpo"), dict(loss_type="dapo"),
    dict(loss_type="cispo"), dict(loss_type="sapo"),
    dict(num_iterations=2, gradient_accumulation_steps=2, per_device_train_batch_size=4),
    dict(length_gate="pass_rate"), dict(length_estimator="kimi"), dict(length_estimator="none"),
])
def test_trl_options_train(tmp_path, overrides):
    trainer = make_trainer(tmp_path, reward=rewards_by_length, **overrides)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(math.isfinite(x) for x in losses)


def test_kl_to_a_reference_model_trains(tmp_path):
    policy_dir = tmp_path / "policy"
    tiny_policy().save_pretrained(policy_dir)  # TRL loads the reference model from the policy's path
    tiny_tokenizer().save_pretrained(policy_dir)
    trainer = make_trainer(tmp_path / "run", policy=str(policy_dir), beta=0.1)
    trainer.train()
    assert all(math.isfinite(e["kl"]) for e in trainer.state.log_history if "kl" in e)


def test_peft_policy_trains(tmp_path):
    from peft import LoraConfig

    trainer = make_trainer(tmp_path, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    assert any("lora" in name for name, p in trainer.model.named_parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- two processes


def launch(out: Path, procs: int, mode: str, *extra: str, launcher: tuple[str, ...] = ()) -> list[dict]:
    """Run grpo_multiprocess.py on ``procs`` real processes (gloo on CPU); returns every rank's rows by index."""
    script = REPO / "tests" / "trainers" / "grpo_multiprocess.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = accelerate_launch(*launcher, "--num_processes", str(procs))
    if not launcher:
        command += ["--multi_gpu"] if procs > 1 else ["--cpu"]
    result = subprocess.run([*command, str(script), str(out), mode, *extra], capture_output=True, text=True,
                            env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, (result.stdout[-1500:], result.stderr[-3000:])
    rows = [row for path in sorted(out.glob("rank*.json")) for row in json.loads(path.read_text())]
    assert len({r["rank"] for r in rows}) == procs
    return sorted(rows, key=lambda r: r["index"])


@pytest.mark.parametrize("normalize", ["none", "batch"])
def test_one_and_two_processes_give_the_same_group_advantages(tmp_path, normalize):
    results = {procs: launch(tmp_path / f"p{procs}", procs, normalize) for procs in (1, 2)}
    one, two = results[1], results[2]
    assert {r["rank"] for r in two[8:16]} == {0, 1}  # the middle group of 8 is split across the two processes
    assert [r["completion"] for r in one] == [r["completion"] for r in two]
    for a, b in zip(one, two):  # each process pads to its own width: compare the real tokens, then the padding
        n = len(a["completion"])
        assert a["advantages"][:n] == pytest.approx(b["advantages"][:n], abs=1e-5)
        assert not any(a["advantages"][n:]) and not any(b["advantages"][n:])
    if normalize == "none":  # hand computation: constant task reward, so A = s * (G - mean_group G)
        for g in range(len(one) // 8):
            group = one[8 * g: 8 * g + 8]
            G = [-(1 - 0.8 ** len(r["completion"])) for r in group]
            for r, Gi in zip(group, G):
                expected = 0.5 * (Gi - sum(G) / 8)
                assert r["advantages"][: len(r["completion"])] == pytest.approx([expected] * len(r["completion"]),
                                                                                abs=1e-6)


def test_refit_keeps_the_critic_head_identical_across_processes(tmp_path):
    launch(tmp_path, 2, "refit")
    heads = [json.loads((tmp_path / f"head{rank}.json").read_text()) for rank in (0, 1)]
    initial = tiny_lenvm().v_head.state_dict()
    assert heads[0] == heads[1]  # each rank saw other completions: only the all-reduce keeps them equal
    assert any(torch.tensor(heads[0][k]).ne(v).any() for k, v in initial.items())


def test_a_critic_path_loads_whole_under_zero3(tmp_path):
    pytest.importorskip("deepspeed")
    critic_dir = tmp_path / "critic"
    tiny_lenvm().save_pretrained(critic_dir)
    tiny_tokenizer().save_pretrained(critic_dir)
    zero3 = ("--config_file", str(REPO / "recipes" / "accelerate" / "zero3.yaml"), "--mixed_precision", "no")
    rows = launch(tmp_path / "run", 2, "critic-path", str(critic_dir), launcher=zero3)
    assert all(math.isfinite(a) for r in rows for a in r["advantages"])


# ----------------------------------------------------------------------------- unscorable rows, masked batches, devices


def scores_even_lengths(completion_ids, **kwargs):
    """Scores completions of even length 1; odd ones are unscorable (None), as TRL lets reward functions say."""
    return [1.0 if len(ids) % 2 == 0 else None for ids in completion_ids]


def test_unscorable_completions_carry_no_signal(tmp_path):
    """As TRL: a completion no reward function scores keeps a NaN reward, not nansum's 0. The pass-rate gate averages
    over the scored completions only, and the unscorable one gets no advantage at all, length term included."""
    trainer = make_trainer(tmp_path, critic=None, length_estimator="group", length_gamma=0.8, length_coef=0.4,
                           length_normalize="none", length_gate="pass_rate", reward=scores_even_lengths)
    torch.manual_seed(1)
    out = trainer._generate_and_score_completions(generation_batch(trainer))
    mask = out["completion_mask"].bool()
    lengths = mask.sum(1).tolist()
    scored = [n % 2 == 0 for n in lengths]
    assert any(any(scored[4 * g: 4 * g + 4]) and not all(scored[4 * g: 4 * g + 4]) for g in range(2)), lengths
    expected = []
    for g in range(2):
        group = range(4 * g, 4 * g + 4)
        gate = 1.0 if any(scored[i] for i in group) else 0.0  # the mean reward of the scored ones (all 1)
        G = [-(1 - 0.8 ** lengths[i]) for i in group]  # every completion's length is known: the baseline keeps all
        for i, Gi in zip(group, G):  # the task advantage is 0: the scored rewards of a group are all 1
            expected.append(0.4 * gate * (Gi - sum(G) / 4) if scored[i] else 0.0)
    expected = torch.tensor(expected)[:, None].expand_as(mask)
    torch.testing.assert_close(out["advantages"], torch.where(mask, expected, 0.0), atol=1e-5, rtol=1e-5)


def never_ends(**overrides):
    """Settings under which every completion is cut and masked out (TRL's mask_truncated_completions)."""
    return dict(mask_truncated_completions=True, generation_kwargs={"suppress_tokens": [EOS_ID]},
                max_completion_length=4, **overrides)


@pytest.mark.parametrize("trainer_type", ["lenvm", "group", "ppo"])
def test_a_batch_of_masked_completions_trains_and_is_logged(tmp_path, caplog, trainer_type):
    """All rows cut under mask_truncated_completions=True: the length scaling (GRPO) and the whitening (PPO) have
    no std to divide by; they are skipped (no error), the trainer says so, and the step gives no gradient."""
    if trainer_type == "ppo":
        from lenvm_rl import PPOConfig, PPOTrainer

        args = PPOConfig(**never_ends(output_dir=str(tmp_path), per_device_train_batch_size=8, num_mini_batches=1,
                                      num_ppo_epochs=1, max_steps=1, logging_steps=1, report_to="none",
                                      save_strategy="no",
                                      use_cpu=True, bf16=False, seed=0, disable_tqdm=True))
        trainer = PPOTrainer(tiny_policy(), reward_funcs=rewards_by_length, args=args, train_dataset=prompt_dataset(),
                             processing_class=tiny_tokenizer(), value_model=LenVMCritic(tiny_lenvm()))
    else:
        trainer = make_trainer(tmp_path, reward=rewards_by_length, **never_ends(length_estimator=trainer_type,
                                                                               max_steps=1))
    policy_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with caplog.at_level("WARNING", logger="lenvm_rl.trainers.grpo_trainer"):
        trainer.train()
    assert "every completion of this batch is masked" in caplog.text
    assert [e["loss"] for e in trainer.state.log_history if "loss" in e] == [0.0]
    assert all(torch.equal(v, policy_before[k]) for k, v in trainer.model.state_dict().items())


def test_an_unpinned_critic_moves_to_the_trainer_and_a_pinned_one_stays(tmp_path):
    unpinned, pinned = LenVMCritic(tiny_lenvm()), LenVMCritic(tiny_lenvm(), device="cpu")
    for critic in (unpinned, pinned):
        trainer = make_trainer(tmp_path, critic=critic)
        assert trainer.length_critic is critic and critic.device == trainer.accelerator.device
    assert not unpinned.pinned and pinned.pinned
    trainer = make_trainer(tmp_path, critic=tiny_lenvm())  # a LenVM given: the trainer builds an unpinned critic
    assert not trainer.length_critic.pinned and trainer.length_critic.device == trainer.accelerator.device


def test_bf16_on_a_cpu_without_bf16_units_warns(tmp_path, monkeypatch):
    from lenvm_rl.trainers import hardware

    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "cpuinfo")
    with pytest.warns(UserWarning, match="bf16 is on for a run on a CPU without bf16 units"):
        make_trainer(tmp_path, bf16=True)


# ----------------------------------------------------------------------------- issue 18 item 8: saving the refit
# head with the model, the model card and the recorded arguments


def test_save_model_writes_the_refit_head_in_the_lenvm_layout(tmp_path):
    import shutil

    from lenvm_rl import LenVM

    lenvm_dir = tmp_path / "lenvm"
    tiny_lenvm().save_pretrained(lenvm_dir)
    trainer = make_trainer(tmp_path / "run", critic=LenVMCritic(str(lenvm_dir)), length_critic_refit_steps=2,
                           max_steps=2)
    trainer.train()
    trainer.save_model()
    head_file = tmp_path / "run" / "length_critic" / "value_head.safetensors"
    assert head_file.is_file()
    refit_dir = tmp_path / "refit-lenvm"  # the documented way back: the LenVM's checkpoint with this head in it
    shutil.copytree(lenvm_dir, refit_dir)
    shutil.copy(head_file, refit_dir / "value_head.safetensors")
    refit, original = LenVM.from_pretrained(refit_dir), LenVM.from_pretrained(lenvm_dir)
    for (name, saved), (_, trained), (_, before) in zip(refit.v_head.state_dict().items(),
                                                        trainer.length_critic.model.v_head.state_dict().items(),
                                                        original.v_head.state_dict().items()):
        torch.testing.assert_close(saved, trained.cpu(), rtol=0, atol=0, msg=name)
        assert not torch.equal(saved, before), name
    plain = make_trainer(tmp_path / "frozen", critic=LenVMCritic(str(lenvm_dir)), max_steps=1)
    plain.save_model()
    assert not (tmp_path / "frozen" / "length_critic").exists()  # a frozen critic is the LenVM itself


def test_model_card_and_saved_arguments_record_the_lenvm_and_its_gamma(tmp_path):
    lenvm_dir = tmp_path / "lenvm"
    tiny_lenvm(gamma=0.95).save_pretrained(lenvm_dir)
    run = tmp_path / "run"
    trainer = make_trainer(run, critic=str(lenvm_dir), length_coef=0.25, max_steps=2, save_strategy="steps",
                           save_steps=2)
    assert trainer.args.length_gamma == 0.95 and trainer.args.length_critic_name_or_path == str(lenvm_dir)
    trainer.train()
    card = (run / "README.md").read_text()
    assert "This model was trained with Length-aware GRPO, a method introduced in [Length Value Model" in card
    assert "huggingface.co/papers/2604.27039" in card and "- grpo" in card and "- lenvm-rl" in card
    assert f"Length critic (LenVM): `{lenvm_dir}`; gamma = 0.95." in card
    assert "`length_coef`: `0.25`" in card and "`length_estimator`: `'lenvm'`" in card
    saved = torch.load(run / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert (saved.length_gamma, saved.length_critic_name_or_path) == (0.95, str(lenvm_dir))


def test_a_lenvm_built_in_memory_is_recorded_as_such(tmp_path):
    trainer = make_trainer(tmp_path, length_estimator="group", length_gamma=0.9, critic=None)
    assert trainer.args.length_critic_name_or_path is None and trainer.args.length_gamma == 0.9
    trainer.create_model_card(model_name="m")
    assert "Length critic (LenVM): none, or one built in memory; gamma = 0.9." in (tmp_path / "README.md").read_text()
    with pytest.warns(UserWarning, match="length_critic_name_or_path='elsewhere' is replaced by the length critic's"):
        in_memory = make_trainer(tmp_path / "in-memory", length_critic_name_or_path="elsewhere")
    assert in_memory.args.length_critic_name_or_path is None and in_memory.args.length_gamma == 0.9


@pytest.mark.parametrize("trainer_type", ["grpo", "ppo"])
def test_a_short_model_name_loads_the_embedded_copy(tmp_path, monkeypatch, trainer_type):
    # every model argument takes the short name smollm2-135m: here a tiny stand-in under LENVM_RL_HOME, where
    # resolve_model_path finds a converted copy (before, TRL looked the name up on the Hub and failed offline)
    from lenvm_rl import PPOConfig, PPOTrainer

    home = tmp_path / "home"
    tiny_policy(seed=3).save_pretrained(home / "smollm2-135m")
    tiny_tokenizer().save_pretrained(home / "smollm2-135m")
    monkeypatch.setenv("LENVM_RL_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if trainer_type == "grpo":
        trainer = LengthAwareGRPOTrainer("smollm2-135m", reward_funcs=constant_reward,
                                         args=make_args(tmp_path / "out"), train_dataset=prompt_dataset(),
                                         length_critic=tiny_lenvm())
    else:
        args = PPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4,
                         max_completion_length=16, max_steps=1, report_to="none", use_cpu=True, bf16=False)
        trainer = PPOTrainer("smollm2-135m", reward_funcs=constant_reward, args=args, train_dataset=prompt_dataset(),
                             value_model=LenVMCritic(tiny_lenvm()))
    expected = tiny_policy(seed=3).state_dict()["model.embed_tokens.weight"]
    assert torch.equal(trainer.model.state_dict()["model.embed_tokens.weight"].cpu(), expected)


def test_an_estimator_registered_after_import_is_accepted_and_used(tmp_path):
    # the config checked length_estimator against the names registered at import, so a user's registered
    # strategy was refused by LengthAwareGRPOConfig
    from lenvm_rl.trainers import register_length_estimator
    from lenvm_rl.trainers.estimators import LENGTH_ESTIMATORS, LengthEstimator

    @register_length_estimator("test_minus_length")
    class MinusLength(LengthEstimator):
        """(B,): minus the completion's length, a sequence-level term."""

        def __call__(self, batch):
            return -batch.lengths[batch.local].float()

    try:
        trainer = make_trainer(tmp_path, critic=None, length_estimator="test_minus_length", length_coef=0.5,
                               length_normalize="none", reward=constant_reward)
        torch.manual_seed(3)
        out = trainer._generate_and_score_completions(generation_batch(trainer))
        mask = out["completion_mask"].bool()
        expected = -0.5 * mask.sum(1).float()  # constant reward: A_task = 0
        torch.testing.assert_close(out["advantages"], torch.where(mask, expected[:, None], 0.0))
    finally:
        del LENGTH_ESTIMATORS["test_minus_length"]
