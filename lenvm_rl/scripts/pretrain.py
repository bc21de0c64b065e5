"""Value pretraining from rollout files: build the LenVM, train it, save it, evaluate it.

Arguments come from three dataclasses, TRL style: :class:`PretrainScriptArguments` (data and
gamma), :class:`~lenvm_rl.trainers.LenVMConfig` (every ``TrainingArguments`` option plus the value
loss) and ``trl.ModelConfig`` (backbone, dtype, LoRA). ``recipes/pretrain_lenvm.py`` and
``lenvm-rl pretrain`` both run :func:`main`, which calls the library's
:func:`~lenvm_rl.pretraining.pretrain_lenvm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PretrainScriptArguments", "main", "make_parser"]


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
    """Train and save a LenVM; returns the evaluation report (empty without ``eval_rollouts``):
    :func:`lenvm_rl.pretraining.pretrain_lenvm` with the script arguments."""
    from lenvm_rl.pretraining import pretrain_lenvm

    return pretrain_lenvm(script_args.train_rollouts, training_args, model_args,
                          eval_rollouts=script_args.eval_rollouts, gamma=script_args.gamma,
                          trust_remote_code=script_args.trust_remote_code)
