"""Value pretraining: :class:`LenVMConfig` and :class:`LenVMTrainer` (a ``transformers.Trainer``).

The trainer only coordinates; the targets and the loss are pure functions of
:mod:`lenvm_rl.core` (``monte_carlo_targets`` in the collator, ``lambda_return_targets`` and
``value_regression_loss`` here). The loss is token-averaged over every target position of the
whole optimiser step: all gradient-accumulation micro-batches on all processes (docs/method.md#value-pretraining).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from lenvm_rl.core import boundary_weights, lambda_return_targets, value_regression_loss
from lenvm_rl.data.prompts import format_mismatch
from lenvm_rl.data.samplers import ShuffledLengthGroupedSampler
from lenvm_rl.data.value_dataset import ValueDataCollator, dataset_encoding
from lenvm_rl.modeling import LenVM
from lenvm_rl.modeling.vision import freeze_vision_tower, is_vision_language, vision_inputs
from lenvm_rl.modeling.vocabulary import check_vocabulary, vocabulary_hash
from lenvm_rl.trainers.hardware import warn_if_slow_bf16

__all__ = ["LenVMConfig", "LenVMTrainer"]

logger = logging.getLogger(__name__)


@dataclass
class LenVMConfig(TrainingArguments):
    """Training arguments for :class:`LenVMTrainer`.

    The recommended recipe, on the policy's own rollouts with one sample per prompt of as many prompts as you
    have (thousands), is a head-only fit with the prompt boundary weighted up: ``freeze_backbone=True,
    boundary_weight=100, learning_rate=3e-4, num_train_epochs=3`` with the default linear decay, about 1,000
    states a step (measured on GSM8K from 200 to 7,473 prompts in docs/results.md). The defaults stay the
    reference's.

    Defaults differ from ``TrainingArguments`` where value pretraining wants it: the reference
    learning rate 2e-5, length-grouped batches (``train_sampling_strategy="group_by_length"``:
    batches of similar length, in random order, so padding stays small), and
    ``remove_unused_columns=False`` (the collator needs the length columns).
    """

    loss_type: str = field(default="mse", metadata={
        "help": "Value loss: 'mse' (token-mean squared error on V, the paper's default) or 'bce' "
                "(binary cross-entropy on the head logits with target u = 1 - gamma**l)."})
    lam: float = field(default=1.0, metadata={
        "help": "Lambda of the lambda-return targets. 1.0 regresses the Monte-Carlo returns (best in the "
                "paper); < 1 bootstraps from the model's own detached values."})
    censored: str = field(default="infinite", metadata={
        "help": "Completions cut at the length limit: 'infinite' (target -1, as the reference code; biased "
                "long near the cut) or 'drop' (left out; biased short)."})
    boundary_weight: float = field(default=1.0, metadata={
        "help": "Weight of the prompt-boundary state s_0 (the last prompt token) in the token-mean loss; every "
                "other target position weighs 1. Values > 1 spend more of the fit on the length predicted from "
                "the prompt alone. Recommended (measured on GSM8K; docs/results.md): 100, with --freeze_backbone "
                "--learning_rate 3e-4 --num_train_epochs 3 and the default linear decay, about 1,000 states a step, "
                "on one sample per prompt of thousands of prompts (with fewer than about 1,600 prompts the "
                "prompt-length line of lenvm-rl evaluate predicts the prompt's length as well)."})
    freeze_backbone: bool = field(default=False, metadata={
        "help": "Train the value head only; the backbone stays bit-identical. Part of the recommended recipe "
                "(see --boundary_weight): at 200 prompts x 8 samples a head on the frozen policy beat the full "
                "fine-tune of the reference recipe (held-out prompt MRE 21.7 against 29.7 per cent), and at 7,473 "
                "prompts x 1 it scored 20.0 per cent (mean of 3 seeds)."})
    freeze_vision_tower: bool = field(default=True, metadata={
        "help": "Vision-language backbones: keep the vision encoder and its merger frozen, as the reference's "
                "Qwen2.5-VL recipe does; the language model and the head train. No effect on text backbones."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate (reference: 2e-5)."})
    train_sampling_strategy: str = field(default="group_by_length", metadata={
        "help": "'group_by_length' (default: shuffled, then length-grouped batches), 'random', 'sequential' "
                "or 'batch_rebalance'."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={
        "help": "DDP unused-parameter search. Off: every trainable LenVM parameter is used (the LM head is "
                "frozen)."})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "Keep dataset columns the model does not take; the collator needs them."})

    def __post_init__(self):
        if self.loss_type not in ("mse", "bce"):
            raise ValueError(f"loss_type must be 'mse' or 'bce', got {self.loss_type!r}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        if self.censored not in ("infinite", "drop"):
            raise ValueError(f"censored must be 'infinite' or 'drop', got {self.censored!r}")
        if not self.boundary_weight >= 0:
            raise ValueError(f"boundary_weight must be >= 0, got {self.boundary_weight}")
        if self.lam < 1.0 and self.loss_type == "bce":
            raise ValueError("lam < 1 bootstraps value targets; use it with loss_type='mse'")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns=True would drop the columns the value collator needs; "
                             "leave it False")
        super().__post_init__()


class LenVMTrainer(Trainer):
    """Pretrains a :class:`~lenvm_rl.modeling.LenVM` on rollout examples.

    Args:
        model: the LenVM (its ``gamma`` sets the targets).
        args: a :class:`LenVMConfig`.
        train_dataset / eval_dataset: from :func:`lenvm_rl.data.build_value_dataset`.
        processing_class: the tokenizer; saved with checkpoints, and its pad id pads batches. A vision-language
            LenVM takes its processor (saved beside the checkpoint, as the reference layout has it).
        data_collator: defaults to :class:`~lenvm_rl.data.ValueDataCollator`, for a vision-language LenVM
            :class:`~lenvm_rl.data.images.VisionValueDataCollator`.

    Checkpoints are written in the reference layout (backbone + ``value_head.safetensors``) and
    resume with ``trainer.train(resume_from_checkpoint=...)``. They record how the training prompts became
    ``s_0`` (the dataset's ``prompt_encoding``: raw or chat, the chat template's hash) and the tokenizer's
    vocabulary hash. The tokenizer must have the vocabulary of the rollouts' sampler and of the LenVM's
    backbone (:func:`~lenvm_rl.modeling.vocabulary.check_vocabulary`), or the trainer refuses to start.
    ``eval_loss`` is the value MSE: each eval batch's token-mean MSE, averaged over batches by the
    ``Trainer``; the exact token-mean over a whole held-out set is :func:`lenvm_rl.evaluation.evaluate_lenvm`.
    """

    def __init__(self, model: LenVM, args: LenVMConfig, train_dataset=None, eval_dataset=None,
                 processing_class=None, data_collator=None, **kwargs):
        if not isinstance(model, LenVM):
            raise TypeError(f"model must be a lenvm_rl LenVM, got {type(model).__name__}")
        if not isinstance(args, LenVMConfig):
            raise TypeError(f"args must be a LenVMConfig, got {type(args).__name__}")
        if args.freeze_backbone:
            model.backbone.requires_grad_(False)
        if args.freeze_vision_tower:
            freeze_vision_tower(model.backbone)
        _record_encoding(model, processing_class, train_dataset, eval_dataset)
        if data_collator is None and is_vision_language(model.config):
            from lenvm_rl.data.images import VisionValueDataCollator

            pad_id = getattr(getattr(processing_class, "tokenizer", None), "pad_token_id", None)
            data_collator = VisionValueDataCollator(gamma=model.gamma, pad_token_id=pad_id or 0, censored=args.censored,
                                                    processor=processing_class, config=model.config)
        elif data_collator is None:
            pad_id = getattr(processing_class, "pad_token_id", None)
            data_collator = ValueDataCollator(gamma=model.gamma, pad_token_id=pad_id or 0, censored=args.censored)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=data_collator, **kwargs)
        # compute_loss divides by the target positions of the whole step; the Trainer must not rescale.
        self.model_accepts_loss_kwargs = True
        warn_if_slow_bf16(args.bf16, self.accelerator.device)

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches in random order, from a seeded generator (a resumed run sees the same order).

        See :class:`~lenvm_rl.data.ShuffledLengthGroupedSampler` for why not ``transformers``' own
        sampler: it sweeps each mega-batch from long to short, and it draws from the global RNG, which
        a resume restores only after the order is drawn.
        """
        train_dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "length" not in train_dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ShuffledLengthGroupedSampler(
            train_dataset["length"],
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            generator=torch.Generator().manual_seed(seed),
        )

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """Target positions (their summed loss weights) in all micro-batches of this step, summed over processes."""
        count = sum(self._weights(batch["target_mask"]).sum() for batch in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(inputs["input_ids"], inputs["attention_mask"], **vision_inputs(inputs))
        targets, target_mask = inputs["targets"], inputs["target_mask"]
        if self.args.lam < 1.0:
            targets, target_mask = lambda_return_targets(
                outputs.values.detach(), target_mask, inputs["terminated"], self.model_gamma, self.args.lam
            )
        loss = value_regression_loss(outputs.values, targets, target_mask, logits=outputs.logits,
                                     loss_type=self.args.loss_type, num_items=num_items_in_batch,
                                     weights=self._weights(target_mask))
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, outputs) if return_outputs else loss

    def _weights(self, target_mask: torch.Tensor) -> torch.Tensor:
        """The loss weight of every target position (see ``LenVMConfig.boundary_weight``)."""
        return boundary_weights(target_mask, self.args.boundary_weight)

    @property
    def model_gamma(self) -> float:
        return self.accelerator.unwrap_model(self.model).gamma

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the token-mean value MSE of the batch, whatever the training loss."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            outputs = model(inputs["input_ids"], inputs["attention_mask"], **vision_inputs(inputs))
            loss = value_regression_loss(outputs.values, inputs["targets"], inputs["target_mask"])
        return loss.detach(), None, None

    def _save(self, output_dir: str | None = None, state_dict=None):
        if not self.args.should_save:  # transformers calls _save on every process; one writes
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        with open(os.path.join(output_dir, "training_args.json"), "w") as f:
            f.write(self.args.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.accelerator.unwrap_model(model or self.model)
        saved = LenVM.from_pretrained(resume_from_checkpoint, dtype=next(model.backbone.parameters()).dtype)
        model.load_state_dict(saved.state_dict())


def _record_encoding(model: LenVM, processing_class, train_dataset, eval_dataset) -> None:
    """Refuse data or a tokenizer of another vocabulary; record the training data's prompt format in ``model``."""
    check_vocabulary(processing_class, model, names=("the tokenizer (processing_class)", "the LenVM's backbone"),
                     advice="give the tokenizer of the LenVM's backbone")
    evals = eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset]
    encodings = {name: dataset_encoding(d) for name, d in (("train_dataset", train_dataset),
                                                         *(("eval_dataset", d) for d in evals))}
    for name, encoding in encodings.items():
        if encoding is None:
            continue
        if encoding.vocabulary_hash is None and encoding.sampler is not None:
            logger.warning("the %s's rollouts do not record their sampler's vocabulary (written before it was "
                           "recorded) and the sampler %s has no local tokenizer: the vocabulary is not checked",
                           name, encoding.sampler)
        check_vocabulary(processing_class if processing_class is not None else model,
                         (encoding.sampler, encoding.vocabulary_hash),
                         names=("the backbone's tokenizer", f"the sampler of the {name}'s rollouts"),
                         advice="a LenVM learns the lengths of its own backbone's token ids: sample the rollouts "
                                "with the policy whose backbone (and tokenizer) the LenVM starts from")
    train = encodings["train_dataset"]
    if train is not None:
        why = format_mismatch(model, train.prompt_format, train.chat_template_hash)
        if why:
            logger.warning("%s; the checkpoint will record the training data's format", why)
        model.prompt_format, model.chat_template_hash = train.prompt_format, train.chat_template_hash
        for name, encoding in encodings.items():
            why = encoding and format_mismatch(model, encoding.prompt_format, encoding.chat_template_hash)
            if why:
                logger.warning("%s: %s", name, why)
    if processing_class is not None:
        model.vocabulary_hash = vocabulary_hash(processing_class)
    elif train is not None and train.vocabulary_hash is not None:
        model.vocabulary_hash = train.vocabulary_hash
