"""PPO with a trained task critic and a frozen LenVM length critic (docs/method.md#ppo-with-a-lenvm-critic).

TRL removed its ``PPOTrainer`` in 1.13; this one keeps TRL's conventions and runs on TRL's GRPO
machinery (generation with HF or vLLM, reward functions and reward models, PEFT, DeepSpeed, logging,
checkpoints), which :class:`~lenvm_rl.LengthAwareGRPOTrainer` already extends with the length term.
What PPO changes is the task advantage, which comes from GAE on a trained critic, and the loss.

One PPO iteration, top to bottom:

1. Rollouts: TRL samples ``generation_batch_size`` completions (``num_generations`` per prompt) and
   scores them with the reward functions.
2. Rewards per token (:func:`~lenvm_rl.core.ppo_token_rewards`): ``-kl_coef * KL_t`` at every action,
   plus the task score at the last one (minus ``missing_eos_penalty`` if the completion never ended).
3. GAE (:func:`~lenvm_rl.core.task_gae`) on the task critic's values, ending at the last token of every
   completion (``V = 0`` after it, after EOS and truncation alike: the reward function has scored the cut
   text already); optional whitening (:func:`~lenvm_rl.core.whiten`).
4. The length term, as in GRPO: ``A_t = A_task_t + s * gate * A_len_t``, with ``A_len`` from the frozen
   LenVM (its own gamma and ``length_lam``) or a sequence-level twin.
5. ``num_ppo_epochs`` passes over ``num_mini_batches`` mini-batches, each one optimizer step of
   :func:`~lenvm_rl.core.clipped_policy_loss` ``+ vf_coef *`` :func:`~lenvm_rl.core.clipped_value_loss`.

The math is all :mod:`lenvm_rl.core`; this module only coordinates.
"""

from __future__ import annotations

import contextlib
import copy
import os
import textwrap
from dataclasses import dataclass, field, fields

import torch
from accelerate.utils import broadcast, is_peft_model
from safetensors.torch import load_file, save_file
from transformers import get_scheduler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig
from trl.trainer.utils import add_fused_lm_head

from lenvm_rl.core import (
    approx_kl,
    clip_fraction,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    kl_estimate,
    masked_mean,
    ppo_token_rewards,
    task_gae,
    whiten,
)
from lenvm_rl.core.losses import KL_ESTIMATORS
from lenvm_rl.critics import completion_layout, gather_states
from lenvm_rl.modeling import TaskValueModel, resolve_model_path
from lenvm_rl.trainers.estimators import RolloutBatch
from lenvm_rl.trainers.grpo_trainer import LengthAwareGRPOConfig, LengthAwareGRPOTrainer, whole_model_loading

__all__ = ["PPOConfig", "PPOTrainer"]

TASK_CRITIC_MODES = ("head", "lora", "separate")
VALUE_MODEL_DIR = "value_model"
"""Subdirectory of each checkpoint (and of the saved model, with ``save_value_model``) holding the task critic."""
VALUE_STATE_DIR = "value_model_state"
"""Subdirectory of a checkpoint holding the critic's trainable tensors, optimizer and scheduler (for resuming)."""
GRPO_ONLY_SETTINGS = {
    "loss_type": "PPO's policy loss is the clipped surrogate of cliprange, a token mean over each mini-batch",
    "epsilon_high": "PPO clips the ratio symmetrically, to [1 - cliprange, 1 + cliprange]",
    "delta": "PPO clips the ratio with cliprange only",
    "importance_sampling_level": "PPO's policy ratios are per token",
    "top_entropy_quantile": "PPO's loss counts every action token",
    "entropy_coef": "PPO's loss has no entropy bonus (ppo/entropy is only logged)",
    "use_adaptive_entropy": "PPO's loss has no entropy bonus (ppo/entropy is only logged)",
    "off_policy_mask_threshold": "PPO masks no sequences",
    "num_iterations": "PPO sets it from num_ppo_epochs; use num_mini_batches and num_ppo_epochs",
    "steps_per_generation": "PPO sets it from num_mini_batches; use num_mini_batches and num_ppo_epochs",
    "epsilon": "PPO sets it from cliprange; set cliprange",
    "beta": "PPO's KL penalty is in the per-token reward, and PPO sets beta from kl_coef; set kl_coef",
}
"""GRPO's settings that PPO does not implement, or sets itself (:data:`GRPO_FIELDS_FROM_PPO`): ``PPOConfig`` refuses
any value but GRPOConfig's default, with the reason. (``vllm_importance_sampling_correction`` is implemented: the
policy loss takes TRL's ratio.)"""
GRPO_FIELDS_FROM_PPO = {
    "num_iterations": lambda args: args.num_ppo_epochs,
    "epsilon": lambda args: args.cliprange,
    "beta": lambda args: args.kl_coef,  # TRL then computes the reference log-probs; the KL goes into the reward
    "scale_rewards": lambda args: "none" if args.num_generations == 1 else args.scale_rewards,
}
"""GRPO's fields as PPO sets them, from its own (``steps_per_generation``, from ``num_mini_batches``, is set with
GRPO's batch checks). TRL's trainer reads ``beta`` as the switch of its reference log-probs, which PPO's KL reward
uses; ``scale_rewards`` only touches TRL's group advantage, which PPO replaces."""
GRPO_CHECKS_VIEW = {"num_generations": lambda args: 2 if args.num_generations == 1 else args.num_generations}
"""What ``GRPOConfig.__post_init__`` (TRL 1.16) checks in place of PPO's values, restored after it: it refuses
``num_generations < 2``, which GRPO's group advantage needs and PPO's GAE does not."""


@contextlib.contextmanager
def grpo_view(args, **values):
    """Inside, the GRPO fields ``values`` of ``args`` are set; after, they are restored. For the two places where TRL
    1.16 reads a field that means something else to PPO: ``GRPOConfig``'s checks (:data:`GRPO_CHECKS_VIEW`), and
    ``GRPOTrainer.__init__``'s reference model (``beta = 0`` when PPO brings its own reference)."""
    saved = {name: getattr(args, name) for name in values}
    for name, value in values.items():
        setattr(args, name, value)
    try:
        yield args
    finally:
        for name, value in saved.items():
            setattr(args, name, value)


@dataclass
class PPOConfig(LengthAwareGRPOConfig):
    """Configuration of :class:`PPOTrainer`: TRL's ``GRPOConfig`` (generation, rewards, logging), the length
    term of ``LengthAwareGRPOConfig`` and PPO's own settings.

    Batches: one optimizer step takes a *mini-batch* of ``per_device_train_batch_size x
    gradient_accumulation_steps`` completions per process; a rollout is ``num_mini_batches`` mini-batches
    (``generation_batch_size`` completions over all processes), and it is used for ``num_ppo_epochs``
    passes. PPO sets GRPO's ``num_iterations``, ``steps_per_generation``, ``beta`` and ``epsilon`` from
    these fields (:data:`GRPO_FIELDS_FROM_PPO`) and refuses them, and GRPO's loss settings PPO does not
    implement, unless at their defaults (:data:`GRPO_ONLY_SETTINGS`).
    """

    num_generations: int | None = field(default=1, metadata={
        "help": "Completions per prompt. PPO needs 1; the group estimators and gates need >= 2."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout."})
    num_mini_batches: int | None = field(default=None, metadata={
        "help": "Optimizer steps per pass over a rollout. Default: generation_batch_size / the global mini-batch "
                "when generation_batch_size is set, else 1."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range eps of the policy ratio."})
    cliprange_value: float | None = field(default=0.2, metadata={
        "help": "Clip range of the value update around the rollout's values; None: an unclipped value loss."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    kl_coef: float = field(default=0.05, metadata={
        "help": "KL penalty in the per-token reward, -kl_coef * KL(pi || pi_ref). 0 loads no reference model."})
    kl_estimator: str = field(default="k1", metadata={
        "help": "Per-token KL estimate: 'k1' (log pi - log pi_ref, the classic PPO-RLHF penalty) or 'k3'."})
    gamma: float = field(default=1.0, metadata={"help": "Discount of the task return, in (0, 1]."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of the task GAE, in [0, 1]."})
    whiten_advantages: bool = field(default=True, metadata={
        "help": "Whiten the task advantages over each process's rollout (mean 0, std 1) before the length term."})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "Subtracted from the task score of completions that hit max_completion_length without EOS."})
    task_critic: str = field(default="head", metadata={
        "help": "How the task value head trains when value_model is a LenVMCritic: 'head' (a head on the frozen "
                "LenVM trunk: one forward gives both heads; cheapest), 'lora' (a LoRA adapter on the LenVM "
                "backbone, which the frozen length head reads with the adapter off) or 'separate' (a full copy "
                "of the policy as task critic; most capacity and cost)."})
    task_critic_lora_r: int = field(default=16, metadata={"help": "LoRA rank of task_critic='lora'."})
    task_critic_lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha of task_critic='lora'."})
    critic_learning_rate: float | None = field(default=None, metadata={
        "help": "Learning rate of the task critic (AdamW, the policy's scheduler type). Default: learning_rate."})
    length_estimator: str = field(default="lenvm", metadata={
        "help": "As in LengthAwareGRPOConfig: 'lenvm' (token-level A_len from value_model=LenVMCritic), 'group', "
                "'kimi' or 'none'."})
    save_value_model: bool = field(default=False, metadata={
        "help": "Also write the task critic to value_model/ when the final model is saved (save_model, and so "
                "push_to_hub, which uploads output_dir). Checkpoints always hold value_model/ and "
                "value_model_state/, for resuming. In 'separate' mode the critic is a full copy of the policy."})

    def __post_init__(self):
        self._refuse_grpo_only_settings()
        for name, value, allowed in (("task_critic", self.task_critic, TASK_CRITIC_MODES),
                                     ("kl_estimator", self.kl_estimator, KL_ESTIMATORS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        for name in ("num_ppo_epochs", "task_critic_lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cliprange <= 0 or (self.cliprange_value is not None and self.cliprange_value <= 0):
            raise ValueError(f"cliprange and cliprange_value must be > 0 (cliprange_value may be None), got "
                             f"{self.cliprange} and {self.cliprange_value}")
        if self.vf_coef < 0 or self.kl_coef < 0:
            raise ValueError(f"vf_coef and kl_coef must be >= 0, got {self.vf_coef} and {self.kl_coef}")
        if self.critic_learning_rate is not None and self.critic_learning_rate <= 0:
            raise ValueError(f"critic_learning_rate must be > 0, got {self.critic_learning_rate}")
        if self.length_critic_refit_steps:
            raise ValueError("length_critic_refit_steps must be 0 in PPO: the length head stays frozen; the task "
                             "head is the critic that trains")
        self._set_grpo_batching()
        for name, value in GRPO_FIELDS_FROM_PPO.items():
            setattr(self, name, value(self))
        with grpo_view(self, **{name: value(self) for name, value in GRPO_CHECKS_VIEW.items()}):
            super().__post_init__()
        self._check_batching()
        if self.num_generations == 1 and (self.length_estimator in ("group", "kimi")
                                          or self.length_gate == "pass_rate"):
            raise ValueError(f"length_estimator={self.length_estimator!r} / length_gate={self.length_gate!r} compare "
                             "completions of one prompt: set num_generations >= 2")

    def _refuse_grpo_only_settings(self) -> None:
        """:data:`GRPO_ONLY_SETTINGS`, which PPO would silently ignore or overwrite, are refused unless at their
        GRPOConfig default."""
        defaults = {f.name: f.default for f in fields(GRPOConfig)}
        for name, reason in GRPO_ONLY_SETTINGS.items():
            value, default = getattr(self, name), defaults[name]
            if value != default:
                raise ValueError(f"PPOConfig does not implement {name}={value!r}: {reason}. Leave {name} at its "
                                 f"default ({default!r}), or use LengthAwareGRPOConfig for GRPO")

    def _set_grpo_batching(self) -> None:
        """Before GRPO's checks: mini-batches to GRPO's ``steps_per_generation``, unless the rollout size is given."""
        if self.generation_batch_size is None:
            if self.num_mini_batches is None:
                self.num_mini_batches = 1
            if self.num_mini_batches < 1:
                raise ValueError(f"num_mini_batches must be >= 1, got {self.num_mini_batches}")
            self.steps_per_generation = self.num_mini_batches * self.gradient_accumulation_steps

    def _check_batching(self) -> None:
        """After GRPO's checks: a rollout must be whole mini-batches, and checkpoints must fall between rollouts."""
        mini_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size
        if self.steps_per_generation % self.gradient_accumulation_steps:
            raise ValueError(
                f"generation_batch_size={self.generation_batch_size} is not a whole number of mini-batches of "
                f"{mini_batch} (per_device_train_batch_size {self.per_device_train_batch_size} x "
                f"gradient_accumulation_steps {self.gradient_accumulation_steps} x {self.world_size} processes): "
                "make it a multiple, or set num_mini_batches instead")
        derived = self.steps_per_generation // self.gradient_accumulation_steps
        if self.num_mini_batches is not None and self.num_mini_batches != derived:
            raise ValueError(f"num_mini_batches={self.num_mini_batches} disagrees with generation_batch_size="
                             f"{self.generation_batch_size} / mini-batch {mini_batch} = {derived}: set one of them")
        self.num_mini_batches = derived
        steps_per_rollout = self.num_ppo_epochs * self.num_mini_batches
        if self.save_strategy == "steps" and self.save_steps >= 1 and int(self.save_steps) % steps_per_rollout:
            raise ValueError(
                f"save_steps={self.save_steps} must be a multiple of num_ppo_epochs x num_mini_batches = "
                f"{steps_per_rollout}, so that checkpoints fall between rollouts and resume exactly")


class PPOTrainer(LengthAwareGRPOTrainer):
    """PPO for language models with a trained task critic and, optionally, a frozen LenVM length critic.

    Args:
        model, reward_funcs, args, train_dataset, processing_class, peft_config, callbacks: as in TRL
            (datasets in TRL's prompt format, plain or conversational; reward functions with GRPO's
            signature, or reward models).
        value_model: the critic.
            - a :class:`~lenvm_rl.LenVMCritic` (or a :class:`~lenvm_rl.LenVM` / its path): the drop-in. Its
              pretrained length head stays frozen and gives ``A_len``; a task value head trains beside it,
              as ``args.task_critic`` says ('head', 'lora' or 'separate').
            - a :class:`~lenvm_rl.modeling.TaskValueModel`: any per-token task critic, trained as is.
            - ``None``: a task critic copied from the policy (``TaskValueModel.from_model``).
        ref_model: the KL reference. Default: a frozen copy of the policy, or the policy with its adapter
            disabled under PEFT. Unused when ``kl_coef = 0``.
        Every model given (critics, LenVM, reference) is moved to the accelerator's device, but a ``LenVMCritic``
        pinned with ``device=`` stays there and hands its outputs over (:func:`~lenvm_rl.critics.place_critic`).

    Logged (besides TRL's and the length metrics of ``LengthAwareGRPOTrainer``): ``ppo/policy_loss``,
    ``ppo/value_loss``, ``ppo/entropy``, ``ppo/clip_fraction``, ``ppo/approx_kl``, ``ppo/kl`` (to the
    reference), ``ppo/explained_variance`` of the task critic and ``ppo/return`` (TRL's ``reward`` is the task score);
    under fp16 loss scaling, ``ppo/value_step_skipped`` (the critic's overflowing steps).

    Saved: checkpoints hold ``value_model/`` and ``value_model_state/``; ``save_model`` (and so ``push_to_hub``)
    writes the policy alone unless ``save_value_model=True``. The model card names PPO and records the length term.

    TRL internals relied on (checked against TRL 1.16.0 by ``tests/trainers/test_trl_private_api.py``), besides
    ``LengthAwareGRPOTrainer``'s: ``GRPOTrainer._compute_loss(model, inputs)`` (overridden: PPO's loss),
    ``_get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, compute_entropy=)``,
    ``create_scheduler``, ``training_step``, the attributes ``ref_model``, ``beta`` (the switch of the reference
    log-probs), ``temperature``, ``use_vllm``, ``vllm_importance_sampling_correction`` and ``_step``, the output keys
    ``old_per_token_logps``, ``ref_per_token_logps`` and ``importance_sampling_ratio``, ``GRPOConfig``'s
    ``num_generations >= 2`` check (:data:`GRPO_CHECKS_VIEW`), and ``trl.trainer.utils.add_fused_lm_head`` and
    ``trl.models.prepare_deepspeed`` for the reference.
    """

    loss_is_scaled_for_ga = False  # the loss is a mini-batch mean; Trainer divides by the accumulation steps
    _tag_names = ["trl", "ppo", "lenvm-rl"]
    _name = "PPO"
    _paper = {
        "title": "Fine-Tuning Language Models from Human Preferences",
        "id": "1909.08593",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{mziegler2019fine-tuning,
                title        = {{Fine-Tuning Language Models from Human Preferences}},
                author       = {Daniel M. Ziegler and Nisan Stiennon and Jeffrey Wu and Tom B. Brown and
                                Alec Radford and Dario Amodei and Paul F. Christiano and Geoffrey Irving},
                year         = 2019,
                eprint       = {arXiv:1909.08593},
            }"""),
    }

    def __init__(self, model, reward_funcs=None, args: PPOConfig | None = None, train_dataset=None,
                 processing_class=None, value_model=None, ref_model=None, peft_config=None, callbacks=None, **kwargs):
        if args is not None and not isinstance(args, PPOConfig):
            raise TypeError(f"args must be a PPOConfig, got {type(args).__name__}")
        if isinstance(model, str):  # a short name (``smollm2-135m``) is the embedded model's local copy
            model = resolve_model_path(model)
        if reward_funcs is None or (isinstance(reward_funcs, list) and not reward_funcs):
            raise ValueError("PPOTrainer needs reward_funcs: a reward function with GRPO's signature, a reward model, "
                             "or a list of them")
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = PPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-PPO")
        length_critic, task_critic = None, None
        if isinstance(value_model, TaskValueModel):
            if value_model.mode == "head":
                raise ValueError("a 'head' TaskValueModel reads a LenVM's trunk states: pass "
                                 "value_model=LenVMCritic(...) with task_critic='head' instead")
            task_critic = value_model
        elif value_model is not None:
            length_critic = value_model
        if length_critic is None and args.length_estimator == "lenvm":
            raise ValueError("length_estimator='lenvm' takes its length advantages from value_model=LenVMCritic(...) "
                             "(or a LenVM or its path); set length_estimator='none' for plain PPO, or 'group' for the "
                             "sequence-level twin")
        if ref_model is None and args.kl_coef > 0 and peft_config is None \
                and not isinstance(model, (str, os.PathLike)) and not is_peft_model(model):
            ref_model = copy.deepcopy(model)  # the policy as it starts (TRL would reload it from its path)
        # TRL builds a reference when beta != 0 (from the policy's path, or a PEFT "ref" adapter); ours is set below
        with grpo_view(args, **({"beta": 0.0} if ref_model is not None else {})):
            super().__init__(model, reward_funcs, args, train_dataset=train_dataset, processing_class=processing_class,
                             peft_config=peft_config, callbacks=callbacks, length_critic=length_critic, **kwargs)
        self.beta = args.kl_coef  # TRL's switch of the reference log-probs, which the KL reward reads
        if args.fp16 and self.is_deepspeed_enabled:
            raise ValueError("fp16 with DeepSpeed scales the loss inside DeepSpeed's engine, where the task critic's "
                             "own optimizer cannot unscale it: use bf16=True, or fp16 without DeepSpeed")
        if ref_model is not None:
            self.ref_model = self._prepare_reference(ref_model)
        task_critic = task_critic or self._build_task_critic()
        # a LoRA task critic is an adapter on the LenVM's backbone, so it sits where the LenVM sits (a pinned
        # critic's device, else the accelerator's); any other task critic goes to the accelerator's device
        shares_lenvm = self.length_critic is not None and task_critic.mode == "lora"
        self.task_critic = task_critic.to(self.length_critic.device if shares_lenvm else self.accelerator.device)
        if self.accelerator.num_processes > 1:  # one critic everywhere (a LoRA init draws per-process randomness)
            with torch.no_grad():
                for param in self.task_critic.parameters():
                    if param.requires_grad:
                        param.copy_(broadcast(param.detach().clone(), from_process=0))
        self.value_optimizer = torch.optim.AdamW(
            [p for p in self.task_critic.parameters() if p.requires_grad],
            lr=args.critic_learning_rate or args.learning_rate, weight_decay=args.weight_decay)
        self.value_scheduler = None
        self._saving_checkpoint = False

    # ------------------------------------------------------------------ construction
    def _build_task_critic(self) -> TaskValueModel:
        mode = self.args.task_critic
        if self.length_critic is None or mode == "separate":
            return TaskValueModel.from_model(self._whole_policy())
        lenvm = self.length_critic.model
        if mode == "head":
            return TaskValueModel(None, lenvm.config.hidden_size)
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=self.args.task_critic_lora_r, lora_alpha=self.args.task_critic_lora_alpha,
                          target_modules="all-linear", lora_dropout=0.0)
        return TaskValueModel(get_peft_model(lenvm.backbone, lora), lenvm.config.hidden_size)

    def _whole_policy(self):
        """The policy with whole parameters, to copy: itself, or under ZeRO-3 a whole copy of its gathered weights."""
        policy = self.accelerator.unwrap_model(self.model)
        if not (self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3):
            return policy
        import deepspeed
        from transformers import AutoModelForCausalLM

        if is_peft_model(policy):
            raise ValueError("a task critic copied from a PEFT policy under ZeRO-3 is not supported: pass "
                             "value_model=LenVMCritic(...) with task_critic='head' or 'lora', or a TaskValueModel")
        with whole_model_loading(self.args):
            whole = AutoModelForCausalLM.from_config(policy.config, dtype=policy.dtype)
        with deepspeed.zero.GatheredParameters(list(policy.parameters())):
            whole.load_state_dict(policy.state_dict())
        return whole

    def _prepare_reference(self, ref_model):
        if isinstance(ref_model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM

            with whole_model_loading(self.args):
                ref_model = AutoModelForCausalLM.from_pretrained(ref_model, dtype=self.model.dtype)
        ref_model.eval().requires_grad_(False)
        add_fused_lm_head(ref_model, temperature=self.temperature, cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32)
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model.to(self.accelerator.device), evaluation_mode=True)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.value_scheduler is None:
            self.value_scheduler = get_scheduler(
                self.args.lr_scheduler_type, self.value_optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps, scheduler_specific_kwargs=self.args.lr_scheduler_kwargs)
        return scheduler

    # ------------------------------------------------------------------ rollout: rewards, values, GAE
    def _score_length(self, batch: RolloutBatch):
        """The frozen length head: with LoRA it reads the backbone with the adapter off; in 'head' mode it also
        returns the trunk's hidden states, which the task head reads (one forward for both heads)."""
        if self.length_critic is None:
            return None
        adapter_off = (self.task_critic.backbone.disable_adapter() if self.task_critic.mode == "lora"
                       else contextlib.nullcontext())
        with adapter_off:
            return self.length_critic(batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                      batch.completion_mask, terminated=batch.terminated,
                                      action_mask=batch.action_mask, return_hidden=self.task_critic.mode == "head")

    def _task_advantages(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict]:
        """PPO's task advantage: GAE on the task critic's values of the per-token rewards (KL penalty and score),
        whitened if asked; and what the loss reads: the rollout's log-probs, values, returns (and in 'head' mode the
        trunk states), with TRL's reference log-probs dropped (the KL is in the reward now)."""
        args, action_mask = self.args, batch.action_mask
        inputs = {"prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask,
                  "completion_ids": batch.completion_ids, "completion_mask": batch.completion_mask}
        if self.task_critic.mode == "head":  # cached: the mini-batches reuse the rollout's trunk states
            inputs["critic_hidden_states"] = batch.critic_out.hidden_states
        # the sampling policy's log-probs (TRL skips them when the first mini-batch is on-policy)
        old_logps = batch.old_per_token_logps
        if old_logps is None:
            with torch.no_grad():
                old_logps = self._policy_logps(self.model, inputs)[0]
        kl = (kl_estimate(old_logps, batch.ref_per_token_logps, action_mask, args.kl_estimator)
              if batch.ref_per_token_logps is not None else torch.zeros_like(old_logps))
        rewards = ppo_token_rewards(batch.scores, kl, action_mask, args.kl_coef, batch.terminated,
                                    args.missing_eos_penalty)
        with torch.no_grad():
            values = self._task_values(inputs)
        advantages, returns = task_gae(rewards, values, action_mask, args.gamma, args.lam)  # V = 0 after the last

        metrics = self._metrics[batch.mode]
        gathered = self._gather_rows
        metrics["ppo/kl"].append(masked_mean(*gathered(kl, action_mask)).item())
        metrics["ppo/return"].append(masked_mean(*gathered(returns, action_mask)).item())
        values_all, mask_all = gathered(values, action_mask)
        metrics["ppo/explained_variance"].append(
            explained_variance(values_all, gathered(returns, action_mask)[0], mask_all).item())
        advantages = whiten(advantages, action_mask) if args.whiten_advantages else advantages
        loss_inputs = {"old_per_token_logps": old_logps, "values": torch.where(action_mask, values, 0.0),
                       "returns": returns, "ref_per_token_logps": None}
        if "critic_hidden_states" in inputs:
            loss_inputs["critic_hidden_states"] = inputs["critic_hidden_states"]
        return advantages, loss_inputs

    def _task_values(self, batch) -> torch.Tensor:
        """Task values (B, T) at the states ``s_t`` (none at ``s_T``: the task GAE ends at the last token), with
        grad when grad is enabled."""
        critic = self.task_critic
        if critic.mode == "head":
            hidden = batch["critic_hidden_states"]
        else:
            input_ids, attention_mask, state_index, last_index = completion_layout(
                batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"],
                critic.score.weight.device)
            hidden, _ = gather_states(critic.hidden_states(input_ids, attention_mask), state_index, last_index)
        return critic(hidden).to(self.accelerator.device)  # from a pinned LenVM's device in 'lora' mode

    def _policy_logps(self, model, batch, compute_entropy: bool = False):
        """TRL's per-token log-probs (B, T) of the completion tokens, and their entropies when asked."""
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, batch["completion_ids"].size(1), compute_entropy=compute_entropy)
        return logps, entropies

    # ------------------------------------------------------------------ one mini-batch
    def _compute_loss(self, model, inputs):
        args = self.args
        mask = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            mask = mask & inputs["tool_mask"].bool()
        logps, entropies = self._policy_logps(model, inputs, compute_entropy=True)
        old_logps = inputs["old_per_token_logps"]
        # vLLM's sampler is not pi_old: TRL's truncated ratio pi_old / pi_vLLM weighs each token, as in TRL's loss
        is_ratio = (inputs["importance_sampling_ratio"] if self.use_vllm and self.vllm_importance_sampling_correction
                    else None)
        policy_loss = clipped_policy_loss(logps, old_logps, inputs["advantages"], mask, args.cliprange, is_ratio)
        values = self._task_values(inputs)
        value_loss = clipped_value_loss(values, inputs["values"], inputs["returns"], mask, args.cliprange_value)
        loss = policy_loss + args.vf_coef * value_loss

        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        with torch.no_grad():
            for name, value in (("policy_loss", policy_loss), ("value_loss", value_loss),
                                ("entropy", masked_mean(entropies, mask)),
                                ("clip_fraction", clip_fraction(logps, old_logps, mask, args.cliprange)),
                                ("approx_kl", approx_kl(logps, old_logps, mask))):
                metrics[f"ppo/{name}"].append(self.accelerator.gather(value.detach()).nanmean().item())
        return loss

    def training_step(self, model, inputs, num_items_in_batch):
        loss = super().training_step(model, inputs, num_items_in_batch)  # backward reaches the critic too
        if self._step % self.current_gradient_accumulation_steps == 0:
            self._value_optimizer_step()
        return loss

    def _value_optimizer_step(self) -> None:
        """Average the critic's gradients over processes, unscale and clip them, and step its optimizer and scheduler.

        Under fp16 the backward pass ran on the loss times the policy's loss scale, which the critic's gradients
        share: they are divided by it here, and a step whose gradients overflowed (inf or NaN) is skipped, optimizer
        and scheduler alike, as the policy's ``GradScaler`` skips its own (``ppo/value_step_skipped``).
        """
        params = [p for p in self.task_critic.parameters() if p.requires_grad]
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            if self.accelerator.num_processes > 1:
                param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        skipped = False
        scaler = self.accelerator.scaler
        if scaler is not None and scaler.is_enabled():
            inverse_scale = 1.0 / scaler.get_scale()
            for param in params:
                param.grad.mul_(inverse_scale)
            skipped = not torch.stack([param.grad.isfinite().all() for param in params]).all().item()
            self._metrics["train"]["ppo/value_step_skipped"].append(float(skipped))
        if not skipped:
            if self.args.max_grad_norm is not None and self.args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
            self.value_optimizer.step()
            if self.value_scheduler is not None:
                self.value_scheduler.step()
        self.value_optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ saving and resuming
    def _save(self, output_dir: str | None = None, state_dict=None):
        """The policy; the task critic too (``value_model/``) in a checkpoint, or when ``save_value_model`` is set.

        ``save_model(output_dir)`` writes the folder that ``push_to_hub`` uploads, so the critic (a whole policy
        copy in 'separate' mode) stays out of it unless asked for.
        """
        super()._save(output_dir, state_dict)
        if not self.args.should_save:  # transformers calls _save on every process; one writes
            return
        if self._saving_checkpoint or self.args.save_value_model:
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            self.task_critic.save_pretrained(os.path.join(output_dir, VALUE_MODEL_DIR))

    def _save_checkpoint(self, model, trial):
        self._saving_checkpoint = True  # Trainer's checkpoint calls save_model(checkpoint-N): keep value_model/ there
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False
        if not self.args.should_save:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}",
                              VALUE_STATE_DIR)
        os.makedirs(folder, exist_ok=True)
        trainable = {name: p.detach().cpu().contiguous() for name, p in self.task_critic.named_parameters()
                     if p.requires_grad}
        save_file(trainable, os.path.join(folder, "trainable.safetensors"), metadata={"format": "pt"})
        torch.save(self.value_optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
        if self.value_scheduler is not None:
            torch.save(self.value_scheduler.state_dict(), os.path.join(folder, "scheduler.pt"))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        folder = os.path.join(checkpoint, VALUE_STATE_DIR)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{checkpoint} has no {VALUE_STATE_DIR}/: it was not written by a PPOTrainer")
        trainable = load_file(os.path.join(folder, "trainable.safetensors"), device=str(self.accelerator.device))
        params = dict(self.task_critic.named_parameters())
        expected = {name for name, p in params.items() if p.requires_grad}
        if set(trainable) != expected:
            raise ValueError(f"{folder}/trainable.safetensors holds {sorted(set(trainable) ^ expected)[:5]} that do "
                             "not match this run's task critic; resume with the same task_critic setting")
        with torch.no_grad():
            for name, tensor in trainable.items():
                params[name].copy_(tensor)
        device = self.accelerator.device
        self.value_optimizer.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt"), map_location=device,
                                                        weights_only=True))
        scheduler_file = os.path.join(folder, "scheduler.pt")
        if self.value_scheduler is not None and os.path.isfile(scheduler_file):
            self.value_scheduler.load_state_dict(torch.load(scheduler_file, weights_only=True))
