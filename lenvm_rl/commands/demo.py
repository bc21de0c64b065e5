"""``lenvm-rl demo``: the offline pipeline on the embedded backbone: rollouts -> value pretraining -> predictions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lenvm_rl.commands.base import command, prompt_text

NAME = "demo"
HELP = "offline pipeline demo: rollouts, value pretraining, predictions"
DESCRIPTION = ("Offline demo on the embedded backbone: sample rollouts on generated grade-school word problems, "
               "pretrain a LenVM on them, and compare its predictions (MRE) with the constant baseline.")


@dataclass
class DemoArguments:
    model: str = field(default="smollm2-135m", metadata={
        "help": "policy and LenVM backbone (default: smollm2-135m)"})
    output_dir: str = field(default="lenvm-demo", metadata={"help": "rollouts and the trained LenVM go here"})
    train_prompts: int = field(default=20, metadata={"help": "training prompts (default: 20)"})
    eval_prompts: int = field(default=8, metadata={"help": "held-out prompts (default: 8)"})
    num_completions: int = field(default=4, metadata={"aliases": ["-n"], "help": "completions per training prompt"})
    eval_completions: int = field(default=8, metadata={"help": "completions per held-out prompt"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (default: 0.7)"})
    max_new_tokens: int = field(default=256, metadata={"help": "length limit (default: 256)"})
    batch_size: int = field(default=16, metadata={"help": "sequences per generate call (default: 16)"})
    epochs: float = field(default=3, metadata={"help": "training epochs (default: 3)"})
    learning_rate: float = field(default=1e-3, metadata={
        "help": "learning rate of the value head; the backbone stays frozen (default: 1e-3)"})
    seed: int = field(default=0, metadata={"help": "seed of problems, sampling and training (default: 0)"})


ARGUMENTS = DemoArguments


def run(args: DemoArguments) -> None:
    import torch
    from transformers import AutoTokenizer
    from trl import ModelConfig

    from lenvm_rl.core import return_consistent_length
    from lenvm_rl.data import RolloutConfig, generate_word_problems, group_by_prompt, sample_rollouts, to_messages
    from lenvm_rl.modeling import load_backbone, resolve_model_path
    from lenvm_rl.predict import LengthPredictor
    from lenvm_rl.pretraining import pretrain_lenvm
    from lenvm_rl.trainers import LenVMConfig

    out = Path(args.output_dir)
    problems = generate_word_problems(args.train_prompts + args.eval_prompts, seed=args.seed)
    prompts = [to_messages(p.question) for p in problems]
    train_prompts, eval_prompts = prompts[: args.train_prompts], prompts[args.train_prompts :]
    print(f"== lenvm-rl demo: {args.model}, {len(train_prompts)} + {len(eval_prompts)} generated word problems, "
          f"n={args.num_completions}, temperature {args.temperature}, max {args.max_new_tokens} tokens ==")

    print("\n[1/3] rollouts of the policy (resumable; written to", out, ")")
    path = resolve_model_path(args.model)
    policy = load_backbone(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    sampler = RolloutConfig(num_completions=args.num_completions, temperature=args.temperature,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                            backend="hf")
    sample_rollouts(policy, tokenizer, train_prompts, out / "train_rollouts.jsonl", sampler, model_name=args.model)
    eval_sampler = RolloutConfig(**{**vars(sampler), "num_completions": args.eval_completions})
    eval_records = sample_rollouts(policy, tokenizer, eval_prompts, out / "eval_rollouts.jsonl", eval_sampler,
                                   model_name=args.model)
    del policy

    print("\n[2/3] value pretraining of a LenVM initialised from the same model")
    training_args = LenVMConfig(
        output_dir=str(out / "lenvm"), use_cpu=True, num_train_epochs=args.epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, freeze_backbone=True,
        lr_scheduler_type="constant", logging_steps=5, save_strategy="no", report_to="none", seed=args.seed,
    )
    pretrain_lenvm([str(out / "train_rollouts.jsonl")], training_args, ModelConfig(model_name_or_path=args.model),
                   eval_rollouts=[str(out / "eval_rollouts.jsonl")])

    print("\n[3/3] predicted length at the prompt boundary vs the sampled completions")
    predictor = LengthPredictor.from_pretrained(out / "lenvm")
    predictions = predictor.predict(eval_prompts)
    groups = group_by_prompt(eval_records)
    print(f"{'#':>3}  {'predicted':>9}  {'sampled (return-consistent)':>27}  question")
    for i, (prompt, pred) in enumerate(zip(eval_prompts, predictions)):
        lengths = [rec["completion_length"] for rec in groups[i]]
        truth = return_consistent_length(torch.tensor([lengths]), predictor.gamma).item()
        print(f"{i:>3}  {pred.length:>9.1f}  {truth:>27.1f}  {prompt_text(prompt)}")


make_parser, main = command(NAME, ARGUMENTS, DESCRIPTION, run)
