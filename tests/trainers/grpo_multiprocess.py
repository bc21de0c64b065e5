"""One GRPO step with the "group" twin, launched with 1 or 2 accelerate processes by test_grpo_trainer.py.

    accelerate launch --multi_gpu --num_processes 2 tests/trainers/grpo_multiprocess.py OUT_DIR {none,batch}

The completions come from a deterministic ``rollout_func`` keyed by each completion's global index, so
1 and 2 processes see the same global batch: 24 completions in groups of 8, so with 2 processes of 12
rows the middle group is split across them. Each rank writes its rows and advantages to OUT_DIR.
"""

import json
import os
import sys
from pathlib import Path

from grpo_fixtures import EOS_ID, constant_reward, prompt_dataset, tiny_policy, tiny_tokenizer

from lenvm_rl import LengthAwareGRPOConfig, LengthAwareGRPOTrainer

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
        return output


def main(out_dir: str, normalize: str) -> None:
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # use_cpu=True below starts gloo for 2 processes
    args = LengthAwareGRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=GLOBAL_BATCH // processes, num_generations=NUM_GENERATIONS,
        max_completion_length=16, max_steps=1, report_to="none", save_strategy="no", use_cpu=True,
        bf16=False, seed=0, disable_tqdm=True, length_estimator="group", length_gamma=0.8, length_coef=0.5,
        length_normalize=normalize)
    trainer = DumpingTrainer(tiny_policy(), reward_funcs=constant_reward, args=args,
                             train_dataset=prompt_dataset(48), processing_class=tiny_tokenizer(),
                             rollout_func=rollout_func)
    trainer.train()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
