"""Value pretraining on real rollouts: batching throughput, then MRE against the constant baseline.

    # rollouts first (hours on 2 CPU cores; resumable):
    lenvm-rl rollout --model smollm2-135m --prompts ../shared/data/gsm8k/train.jsonl --prompt-column question \
        --limit 200 -n 8 --temperature 0.7 --max-new-tokens 512 --output rollouts/train.jsonl
    lenvm-rl rollout --model smollm2-135m --prompts ../shared/data/gsm8k/test.jsonl --prompt-column question \
        --limit 50 -n 16 --temperature 0.7 --max-new-tokens 512 --output rollouts/eval.jsonl
    python bench/bench_pretrain.py throughput --train-rollouts rollouts/train.jsonl
    python bench/bench_pretrain.py pretrain --train-rollouts rollouts/train.jsonl --eval-rollouts rollouts/eval.jsonl

``throughput`` trains the same LenVM (SmolLM2-135M-Instruct, full fine-tune, fp32; the trainer's
loss, a plain AdamW step) for a few steps on the trainer's length-grouped batches and on plain
random padded batches, alternating rounds in one process, and prints real (non-padding) training
tokens/s, the ratio, and each sampler's padding fraction over a whole epoch. ``pretrain`` trains
on all training rollouts and prints the held-out report (value MSE, prompt MRE, positionwise RE) of
the LenVM beside the constant baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def padding_fraction(trainer) -> float:
    real = total = 0
    for batch in trainer.get_train_dataloader():
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    return 1 - real / total


def throughput(args) -> None:
    from transformers import AutoTokenizer

    from lenvm_rl.data import build_value_dataset, gamma_from_records, read_rollouts
    from lenvm_rl.modeling import LenVM, resolve_model_path
    from lenvm_rl.trainers import LenVMConfig, LenVMTrainer

    records = read_rollouts(args.train_rollouts)
    dataset = build_value_dataset(records)
    gamma = gamma_from_records(records)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    model = LenVM.from_backbone(args.model, gamma=gamma)
    trainers = {}
    for strategy in ("group_by_length", "random"):
        config = LenVMConfig(output_dir=f"/tmp/bench-{strategy}", use_cpu=True, max_steps=args.steps,
                             per_device_train_batch_size=args.batch_size, train_sampling_strategy=strategy,
                             save_strategy="no", report_to="none", disable_tqdm=True, seed=0, logging_steps=10**6)
        trainers[strategy] = LenVMTrainer(model, config, train_dataset=dataset, processing_class=tokenizer)
    pads = {name: padding_fraction(t) for name, t in trainers.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    rates = {name: [] for name in trainers}
    model.train()
    for round_index in range(args.repeats):
        for name, trainer in trainers.items():
            loader = iter(trainer.get_train_dataloader())
            for _ in range(round_index * args.steps):  # each round trains on the next batches
                next(loader)
            batches = [next(loader) for _ in range(args.steps)]
            start = time.perf_counter()
            for batch in batches:  # the trainer's own loss; a plain AdamW step
                trainer.compute_loss(model, batch).backward()
                optimizer.step()
                optimizer.zero_grad()
            rates[name].append(sum(int(b["attention_mask"].sum()) for b in batches) / (time.perf_counter() - start))
    print(f"model={args.model} records={len(records)} batch_size={args.batch_size} steps/round={args.steps} "
          f"rounds={args.repeats} threads={torch.get_num_threads()}")
    print(f"{'batching':<18} {'real tokens/s':>14} {'ratio':>7} {'padding':>8}")
    base = statistics.median(rates["random"])
    for name in trainers:
        rate = statistics.median(rates[name])
        print(f"{name:<18} {rate:>14.1f} {rate / base:>6.2f}x {pads[name]:>8.1%}")


def pretrain(args) -> None:
    from transformers.trainer_utils import get_last_checkpoint
    from trl import ModelConfig

    from lenvm_rl.scripts.pretrain import PretrainScriptArguments, main
    from lenvm_rl.trainers import LenVMConfig

    # Resumable: a checkpoint every --save-steps; re-running the same command continues from the last.
    resume = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    config = LenVMConfig(output_dir=args.output_dir, use_cpu=True, num_train_epochs=args.epochs,
                         learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size,
                         per_device_eval_batch_size=args.batch_size, save_strategy="steps", save_steps=args.save_steps,
                         save_total_limit=1, resume_from_checkpoint=resume, logging_steps=10, report_to="none",
                         seed=0, freeze_backbone=args.freeze_backbone, bf16=args.bf16)
    script = PretrainScriptArguments(train_rollouts=args.train_rollouts, eval_rollouts=args.eval_rollouts)
    start = time.perf_counter()
    main(script, config, ModelConfig(model_name_or_path=args.model))
    run = f"resumed from {resume}" if resume else "fresh"
    print(f"train + evaluation: {time.perf_counter() - start:.0f} s ({run}; {torch.get_num_threads()} threads, "
          f"bf16={args.bf16}, freeze_backbone={args.freeze_backbone})")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["throughput", "pretrain"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-rollouts", required=True, nargs="+", help="rollout file(s); shards are merged")
    parser.add_argument("--eval-rollouts", nargs="+", help="held-out rollout file(s) (pretrain)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="training steps per round (throughput)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds (throughput)")
    parser.add_argument("--epochs", type=float, default=2, help="epochs (pretrain; reference: 2)")
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="(pretrain; reference: 2e-5)")
    parser.add_argument("--output-dir", default="bench/results/lenvm-gsm8k", help="(pretrain)")
    parser.add_argument("--bf16", action="store_true", help="(pretrain) bf16 autocast; the head stays fp32")
    parser.add_argument("--save-steps", type=int, default=50, help="(pretrain) checkpoint interval, for resuming")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="(pretrain) train the value head only: hours faster on a CPU than a full fine-tune")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    {"throughput": throughput, "pretrain": pretrain}[arguments.part](arguments)
