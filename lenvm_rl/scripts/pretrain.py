"""Value pretraining from rollout files: build the LenVM, train it, save it, evaluate it.

Arguments come from three dataclasses, TRL style: :class:`PretrainScriptArguments` (data and
gamma), :class:`~lenvm_rl.trainers.LenVMConfig` (every ``TrainingArguments`` option plus the value
loss) and ``trl.ModelConfig`` (backbone, dtype, LoRA). ``recipes/pretrain_lenvm.py`` and
``lenvm-rl pretrain`` both run :func:`main`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PretrainScriptArguments", "main", "make_parser"]

logger = logging.getLogger(__name__)


@dataclass
class PretrainScriptArguments:
    """Data arguments of value pretraining."""

    train_rollouts: list[str] = field(metadata={
        "help": "Rollout JSONL from `lenvm-rl rollout` to train on; several files (shards sampled with different "
                "--offset) are merged."})
    eval_rollouts: list[str] | None = field(default=None, metadata={
        "help": "Held-out rollout JSONL (one or several shards): eval loss during training, and the final report "
                "(value MSE, prompt MRE, positionwise RE) beside the constant baseline."})
    gamma: float | None = field(default=None, metadata={
        "help": "Discount of the value head. Default: 0.01 ** (1 / L99) from the training completions' "
                "99th-percentile length."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code (off by default)."})

    def __post_init__(self):
        if isinstance(self.train_rollouts, str):
            self.train_rollouts = [self.train_rollouts]
        if isinstance(self.eval_rollouts, str):
            self.eval_rollouts = [self.eval_rollouts]
        if not self.train_rollouts:
            raise ValueError("train_rollouts is empty: give at least one rollout file to train on")
        if self.gamma is not None and not 0.0 < self.gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")


def make_parser():
    from trl import ModelConfig, TrlParser

    from lenvm_rl.trainers import LenVMConfig

    return TrlParser((PretrainScriptArguments, LenVMConfig, ModelConfig))


def main(script_args: PretrainScriptArguments, training_args, model_args) -> dict:
    """Train and save a LenVM; returns the evaluation report (empty without ``eval_rollouts``)."""
    from transformers import AutoTokenizer, set_seed
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config
    from trl import get_peft_config

    from lenvm_rl.data import build_value_dataset, gamma_from_records, read_rollouts
    from lenvm_rl.evaluation import constant_baseline_value, evaluate_constant, evaluate_lenvm, format_report
    from lenvm_rl.modeling import LenVM, resolve_model_path
    from lenvm_rl.trainers import LenVMTrainer

    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: the backbone (directory, Hub id or short name)")
    train_records = read_rollouts(script_args.train_rollouts)
    eval_records = read_rollouts(script_args.eval_rollouts) if script_args.eval_rollouts else None
    gamma = script_args.gamma or gamma_from_records(train_records)
    logger.info("gamma = %.6f (%s)", gamma, "given" if script_args.gamma else "from the 99th-percentile length")

    set_seed(training_args.seed)  # the value head's initialisation follows --seed, on every process
    model = LenVM.from_backbone(model_args.model_name_or_path, gamma=gamma, dtype=model_args.dtype,
                                trust_remote_code=script_args.trust_remote_code)
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        from peft import get_peft_model

        model.backbone = get_peft_model(model.backbone, peft_config)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_args.model_name_or_path),
                                              trust_remote_code=script_args.trust_remote_code)
    trainer = LenVMTrainer(
        model, training_args, processing_class=tokenizer,
        train_dataset=build_value_dataset(train_records, censored=training_args.censored),
        eval_dataset=build_value_dataset(eval_records, censored=training_args.censored) if eval_records else None,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    is_main_process = trainer.is_world_process_zero()
    del trainer, model  # free the optimiser state before the evaluation copy is loaded

    report = {}
    if eval_records and is_main_process:
        # The saved checkpoint is evaluated, so the report describes exactly the files written. (The
        # training model may be sharded across processes under ZeRO-3, and the others have finished:
        # this process loads a whole copy, not a ZeRO-3 partition.)
        unset_hf_deepspeed_config()
        saved = LenVM.from_pretrained(training_args.output_dir, dtype=model_args.dtype, device=training_args.device,
                                      trust_remote_code=script_args.trust_remote_code)
        rows = {
            "LenVM": evaluate_lenvm(saved, eval_records, batch_size=training_args.per_device_eval_batch_size),
            "constant baseline": evaluate_constant(
                constant_baseline_value(train_records, gamma, censored=training_args.censored), eval_records, gamma
            ),
        }
        print(format_report(rows))
        report = {name: vars(row) for name, row in rows.items()}
        Path(training_args.output_dir, "eval_report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
