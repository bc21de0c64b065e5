"""A short PPO run with the LenVMCritic drop-in ('lora' task critic), launched on 2 processes by test_ppo_trainer.py.

    accelerate launch --multi_gpu --num_processes 2 tests/trainers/ppo_multiprocess.py OUT_DIR

Each rank writes its policy and task-critic weights (as sums per tensor), whether they changed, and its
own first completions to OUT_DIR/rank<k>.json.
"""

import json
import sys
from pathlib import Path

from grpo_fixtures import prompt_dataset, tiny_lenvm, tiny_policy, tiny_tokenizer

from lenvm_rl import LenVMCritic, PPOConfig, PPOTrainer
from lenvm_rl.scripts import end_processes


def starts_with_c(completions, **kwargs):
    return [float(c.strip().startswith("c")) for c in completions]


class RecordingTrainer(PPOTrainer):
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not hasattr(self, "first_completions"):
            self.first_completions = output["completion_ids"].tolist()
        return output


def fingerprint(module) -> dict[str, float]:
    return {name: round(float(p.detach().double().sum()), 10) for name, p in module.named_parameters()
            if p.requires_grad}


def main(out_dir: str) -> None:
    args = PPOConfig(output_dir=out_dir, per_device_train_batch_size=4, num_mini_batches=2, num_ppo_epochs=2,
                     max_completion_length=8, learning_rate=1e-3, max_steps=4, report_to="none", save_strategy="no",
                     use_cpu=True, bf16=False, seed=0, disable_tqdm=True, task_critic="lora", length_coef=0.5)
    trainer = RecordingTrainer(tiny_policy(), reward_funcs=starts_with_c, args=args, train_dataset=prompt_dataset(),
                               processing_class=tiny_tokenizer(), value_model=LenVMCritic(tiny_lenvm()))
    policy_before = fingerprint(trainer.model)
    critic_before = fingerprint(trainer.task_critic)
    trainer.train()
    trainer.accelerator.wait_for_everyone()
    policy, critic = fingerprint(trainer.accelerator.unwrap_model(trainer.model)), fingerprint(trainer.task_critic)
    rank = trainer.accelerator.process_index
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
        "policy": policy, "critic": critic, "completions": trainer.first_completions,
        "policy_changed": policy != policy_before, "critic_changed": critic != critic_before}))
    end_processes()


if __name__ == "__main__":
    main(sys.argv[1])
