"""Value pretraining as a library function: :func:`pretrain_lenvm` builds a LenVM on a backbone, trains it on
rollout files, saves it and evaluates the saved checkpoint on held-out rollouts.

>>> from trl import ModelConfig                                                       # doctest: +SKIP
>>> report = pretrain_lenvm(["train.jsonl"], LenVMConfig(output_dir="my-lenvm", freeze_backbone=True),
...                         ModelConfig(model_name_or_path="smollm2-135m"), eval_rollouts=["test.jsonl"])

``recipes/pretrain_lenvm.py`` and ``lenvm-rl pretrain`` (:func:`lenvm_rl.scripts.pretrain.main`) parse their
arguments and call it; so does :func:`~lenvm_rl.lenvm_cache.ensure_lenvm` for ``--lenvm auto``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

__all__ = ["pretrain_lenvm"]

logger = logging.getLogger(__name__)


def pretrain_lenvm(train_rollouts: Sequence[str], training_args, model_args, *,
                   eval_rollouts: Sequence[str] | None = None, gamma: float | None = None,
                   trust_remote_code: bool = False) -> dict:
    """Train a LenVM on ``train_rollouts`` and save it to ``training_args.output_dir``; returns the evaluation report.

    Args:
        train_rollouts: rollout JSONL files (:func:`~lenvm_rl.data.read_rollouts`; shards are merged).
        training_args: a :class:`~lenvm_rl.trainers.LenVMConfig` (the value loss, censoring, freezing and
            every ``TrainingArguments`` option). ``seed`` also seeds the value head's initialisation.
        model_args: ``trl.ModelConfig``: the backbone (directory, Hub id or short name), its dtype and LoRA.
        eval_rollouts: held-out rollout files: evaluation loss during training, and the final report of the
            saved checkpoint (value MSE, prompt MRE, positionwise RE) beside the constant baseline of the
            training rollouts, printed and written to ``output_dir/eval_report.json``.
        gamma: discount of the value head; default ``0.01 ** (1 / L99)`` of the training completions'
            99th-percentile length (:func:`~lenvm_rl.data.gamma_from_records`).
        trust_remote_code: allow custom modelling code.

    Returns:
        ``{row name: LenVMEvaluation fields}`` of the report; empty without ``eval_rollouts`` and off the main
        process.
    """
    from transformers import AutoTokenizer, set_seed
    from trl import get_peft_config

    from lenvm_rl.data import build_value_dataset, gamma_from_records, read_rollouts
    from lenvm_rl.modeling import LenVM, resolve_model_path
    from lenvm_rl.trainers import LenVMTrainer

    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: the backbone (directory, Hub id or short name)")
    train_records = read_rollouts(train_rollouts)
    eval_records = read_rollouts(eval_rollouts) if eval_rollouts else None
    given = gamma is not None
    gamma = gamma if given else gamma_from_records(train_records)
    logger.info("gamma = %.6f (%s)", gamma, "given" if given else "from the 99th-percentile length")

    set_seed(training_args.seed)  # the value head's initialisation follows --seed, on every process
    model = LenVM.from_backbone(model_args.model_name_or_path, gamma=gamma, dtype=model_args.dtype,
                                trust_remote_code=trust_remote_code)
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        from peft import get_peft_model

        model.backbone = get_peft_model(model.backbone, peft_config)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_args.model_name_or_path),
                                              trust_remote_code=trust_remote_code)
    trainer = LenVMTrainer(
        model, training_args, processing_class=tokenizer,
        train_dataset=build_value_dataset(train_records, censored=training_args.censored),
        eval_dataset=build_value_dataset(eval_records, censored=training_args.censored) if eval_records else None,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    is_main_process = trainer.is_world_process_zero()
    del trainer, model  # free the optimiser state before the evaluation copy is loaded
    if not (eval_records and is_main_process):
        return {}
    return _evaluate_saved(train_records, eval_records, gamma, training_args, model_args, trust_remote_code)


def _evaluate_saved(train_records, eval_records, gamma: float, training_args, model_args,
                    trust_remote_code: bool) -> dict:
    """The report of the saved checkpoint and of the training records' constant, printed and written.

    The saved checkpoint is evaluated, so the report describes exactly the files written. (The training model
    may be sharded across processes under ZeRO-3, and the others have finished: this process loads a whole
    copy, not a ZeRO-3 partition.)
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from lenvm_rl.evaluation import constant_baseline_value, evaluate_constant, evaluate_lenvm, format_report
    from lenvm_rl.modeling import LenVM

    unset_hf_deepspeed_config()
    saved = LenVM.from_pretrained(training_args.output_dir, dtype=model_args.dtype, device=training_args.device,
                                  trust_remote_code=trust_remote_code)
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
