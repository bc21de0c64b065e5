"""One GRPO step with the "group" twin, launched with 1 or 2 accelerate processes by test_grpo_trainer.py.

    accelerate launch --multi_gpu --num_processes 2 tests/trainers/grpo_multiprocess.py OUT_DIR {none,batch,refit}
    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 2 --mixed_precision no \
        tests/trainers/grpo_multiprocess.py OUT_DIR critic-path CRITIC_DIR

The completions come from a deterministic ``rollout_func`` keyed by each completion's global index, so
1 and 2 processes see the same global batch: 24 completions in groups of 8, so with 2 processes of 12
rows the middle group is split across them. Each rank writes its rows and advantages to OUT_DIR.
``refit`` runs the "lenvm" estimator with a critic refit and each rank also writes its value head, which
must be the same on every rank; ``critic-path`` loads the "lenvm" critic from a checkpoint directory
(under ZeRO-3 it must be loaded whole, not partitioned).
"""

import json
import os
import sys
from pathlib import Path

from grpo_fixtures import EOS_ID, constant_reward, prompt_dataset, tiny_lenvm, tiny_policy, tiny_tokenizer

from lenvm_rl import LengthAwareGRPOConfig, LengthAwareGRPOTrainer
from lenvm_rl.scripts import end_processes

NUM_GENERATIONS = 8
GLOBAL_BATCH = 24


def rollout_func(prompts, trainer):
    tokenizer = trainer.processing_class
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    offset = trainer.accelerator.process_index * len(prompts)
    completion_ids = []
    for i, ids in enumerate(prompt_ids):
        k = (offset + i) % NUM_GENERATIONS
        length = 1 + (sum(ids) + 3 * k) % 10
        body = [2 + (sum(ids) + j) % 14 for j in range(length)]
        completion_ids.append(body[:-1] + [EOS_ID] if k % 2 == 0 else body)  # odd k: truncated, no EOS
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids,
            "logprobs": [[0.0] * len(c) for c in completion_ids]}


class DumpingTrainer(LengthAwareGRPOTrainer):
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rank, rows = self.accelerator.process_index, []
        for i in range(len(output["advantages"])):
            mask = output["completion_mask"][i].bool()
            rows.append({"rank": rank, "index": rank * len(output["advantages"]) + i,
                         "completion": output["completion_ids"][i][mask].tolist(),
                         "advantages": output["advantages"][i].tolist()})
        out_dir = Path(self.args.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"rank{rank}.json").write_text(json.dumps(rows))
        if self.length_critic is not None:
            head = {k: v.tolist() for k, v in self.length_critic.model.v_head.state_dict().items()}
            (out_dir / f"head{rank}.json").write_text(json.dumps(head))
        return output


def main(out_dir: str, mode: str, critic_path: str | None = None) -> None:
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # use_cpu=True below starts gloo for 2 processes
    critic = tiny_lenvm() if mode == "refit" else critic_path
    if mode == "refit":
        length = dict(length_estimator="lenvm", length_critic_refit_steps=2, length_critic_learning_rate=1e-2)
    elif mode == "critic-path":
        length = dict(length_estimator="lenvm")
    else:
        length = dict(length_estimator="group", length_gamma=0.8, length_normalize=mode)
    args = LengthAwareGRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=GLOBAL_BATCH // processes, num_generations=NUM_GENERATIONS,
        max_completion_length=16, max_steps=1, report_to="none", save_strategy="no", use_cpu=True,
        bf16=False, seed=0, disable_tqdm=True, length_coef=0.5, **length)
    trainer = DumpingTrainer(tiny_policy(), reward_funcs=constant_reward, args=args,
                             train_dataset=prompt_dataset(48), processing_class=tiny_tokenizer(),
                             rollout_func=rollout_func, length_critic=critic)
    trainer.train()
    end_processes()


if __name__ == "__main__":
    main(*sys.argv[1:])
