"""Length-aware GRPO: TRL's ``GRPOTrainer`` with a length term beside the task reward (docs/method.md#length-in-rl).

The objective is ``J = J_task + s * J_len`` with ``J_len = E[-(1 - gamma^L)]``. The estimators differ
only in credit assignment:

- ``"lenvm"``: token-level. ``A_t = A_task + s * A_len_t``, with ``A_len`` the GAE of a pretrained
  LenVM (:class:`~lenvm_rl.LenVMCritic`): a state-dependent baseline and the return-to-go from ``t``.
- ``"group"``: its sequence-level twin. ``A = A_task + s * (G - mean_group G)`` with the whole completion's
  return ``G = -(1 - gamma^L (1 + V(s_T)))``: ``V(s_T) = 0`` after EOS, and for a truncated completion the
  critic's value of its last state, the bootstrap ``"lenvm"`` uses. So both optimise
  ``J_len = E[-(1 - gamma^L)]`` over the length the completion would have had, and differ only in credit
  assignment (the honest baseline). Without a critic (of the same gamma) the twin scores a truncated
  completion at its cut length, and warns.
- ``"kimi"``: the Kimi k1.5 group length reward, group-centred.
- ``"none"``: plain GRPO (with the length metrics logged when a critic is given).

One step, as data: TRL generates and scores (``super()._generate_and_score_completions``; hooks capture the
lengths, EOS flags and gathered rewards it does not return); the trainer builds one
:class:`~lenvm_rl.trainers.estimators.RolloutBatch`, takes the task advantage (``_task_advantages``, PPO's step) and
the length advantage of the estimator's registered strategy (:mod:`lenvm_rl.trainers.estimators`), and replaces the
``(B,)`` task advantages with the ``(B, T)`` tensor of :func:`lenvm_rl.core.combine_advantages`, which TRL's loss
accepts. Every formula is a :mod:`lenvm_rl.core` call; the trainer only coordinates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import textwrap
import warnings
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer

from lenvm_rl.core import (
    combine_advantages,
    correct_gate,
    explained_variance,
    length_gae,
    masked_mean,
    pass_rate_gate,
    pearson_correlation,
    per_token_advantages,
    scale_by_std,
)
from lenvm_rl.critics import LenVMCritic, place_critic
from lenvm_rl.modeling import LenVM, resolve_model_path
from lenvm_rl.modeling.lenvm import GAMMA_CONFIG_KEY, VALUE_HEAD_FILE
from lenvm_rl.trainers.estimators import LENGTH_ESTIMATORS, RolloutBatch, get_length_estimator
from lenvm_rl.trainers.hardware import warn_if_slow_bf16

__all__ = ["LengthAwareGRPOConfig", "LengthAwareGRPOTrainer", "restore_deepspeed_config", "whole_model_loading"]

logger = logging.getLogger(__name__)



def estimator_names() -> tuple[str, ...]:
    """The values of ``length_estimator``: the strategies registered (:mod:`lenvm_rl.trainers.estimators`) by now,
    so one a user registers after import is accepted too."""
    return tuple(name for name in LENGTH_ESTIMATORS if not name.endswith("_shaping"))

CRITIC_DIR = "length_critic"
"""Subdirectory of the saved model and of each checkpoint holding the refit critic head (``value_head.safetensors``,
the file of the LenVM layout), and in checkpoints its optimizer."""
LENVM_PAPER = {
    "title": "Length Value Model: Scalable Value Pretraining for Token-Level Length Modeling",
    "id": "2604.27039",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @article{zhang2026lenvm,
            title        = {{Length Value Model: Scalable Value Pretraining for Token-Level Length Modeling}},
            author       = {Zhang, Zhen and Yang, Changyi and Xia, Zijie and Yang, Zhen and Liu, Chengzhi
                            and Weng, Zhaotiao and Liu, Yepeng and Chen, Haobo and Pan, Jin and Zhao, Chenyang
                            and Bu, Yuheng and Patel, Alkesh and Gan, Zhe and Wang, Xin Eric},
            year         = 2026,
            eprint       = {arXiv:2604.27039},
        }"""),
}
LENGTH_SETTINGS = ("length_critic_name_or_path", "length_gamma", "length_estimator", "length_mode", "length_coef",
                   "length_lam", "length_normalize", "length_gate", "length_critic_refit_steps")
"""The arguments the model card records for the length term."""


def restore_deepspeed_config(args) -> None:
    """Point transformers' global DeepSpeed config back at the run's ``args`` (ZeRO-3 loads the policy partitioned)."""
    from transformers.integrations.deepspeed import set_hf_deepspeed_config

    if getattr(args, "hf_deepspeed_config", None) is not None:
        set_hf_deepspeed_config(args.hf_deepspeed_config)
    elif getattr(args, "deepspeed_plugin", None) is not None:
        args.deepspeed_plugin.set_deepspeed_weakref()


@contextlib.contextmanager
def whole_model_loading(args):
    """Models loaded inside are whole on every process: DeepSpeed ZeRO-3's partitioned initialisation is off.

    For models that are not trained by the DeepSpeed engine, such as a frozen length critic that only scores.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        restore_deepspeed_config(args)


@dataclass
class LengthAwareGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the length term. The critic itself is a trainer argument (``length_critic=``)."""

    length_coef: float = field(default=0.1, metadata={
        "help": "Length coefficient s in J = J_task + s * J_len: s > 0 favours shorter completions, s < 0 longer "
                "ones, 0 switches the term off. In shaping mode it is the shaping weight beta."})
    length_estimator: str = field(default="lenvm", metadata={
        "help": "Credit assignment of the length term: 'lenvm' (token-level advantages from a LenVM critic), "
                "'group' (its sequence-level twin: G = -(1 - gamma^L (1 + V(s_T))) minus the group mean, V(s_T) the "
                "critic's value after a cut, 0 after EOS), 'kimi' (the Kimi "
                "k1.5 group length reward) or 'none' (plain GRPO)."})
    length_mode: str = field(default="advantage", metadata={
        "help": "'advantage' adds s * A_len (changes the objective on purpose). 'shaping' adds the potential-based "
                "shaping return-to-go beta * sum_k gamma^(k-t) F_k with a frozen LenVM; it equals "
                "-beta * V(s_t) (+ a bootstrap term at truncation), a state-dependent baseline, so it keeps the "
                "task optimum and is no length objective. Shaping needs length_estimator='lenvm'."})
    length_lam: float = field(default=1.0, metadata={
        "help": "Lambda of the length GAE (1.0: Monte-Carlo, bootstrapped only at truncation)."})
    length_gamma: float | None = field(default=None, metadata={
        "help": "Discount of J_len. Default: the LenVM's own gamma (a LenVM only models the discount it was "
                "trained with, so 'lenvm' refuses any other). Required for 'group' without a critic."})
    length_normalize: str = field(default="batch", metadata={
        "help": "'batch' divides the length advantage by its token-weighted std over the gathered batch, so that "
                "s is a weight relative to the unit-scale, group-normalised task advantage whatever gamma is; the "
                "twin and the token-level estimator are scaled alike. 'none' uses the raw advantage."})
    length_gate: str = field(default="none", metadata={
        "help": "'none'; 'pass_rate' scales s by the group's mean task reward / length_gate_max_reward (after "
                "prime-rl: groups that never solve the task feel no length pressure); 'correct' applies the length "
                "term only to completions whose task reward >= length_correct_threshold."})
    length_gate_max_reward: float = field(default=1.0, metadata={
        "help": "r_max of the 'pass_rate' gate: the largest task reward (sum of weighted reward functions)."})
    length_correct_threshold: float = field(default=1.0, metadata={
        "help": "Task reward at or above which a completion counts as correct, for the 'correct' gate and 'kimi'."})
    length_critic_refit_steps: int = field(default=0, metadata={
        "help": "Optimizer steps on the LenVM's value head after each generation batch, towards the Monte-Carlo "
                "returns of the fresh completions (advantage mode only). 0 keeps the critic frozen. The refit head "
                "is saved with the model, in length_critic/value_head.safetensors."})
    length_critic_learning_rate: float = field(default=1e-4, metadata={
        "help": "Learning rate of the critic refit (AdamW on the value head)."})
    length_critic_batch_size: int = field(default=8, metadata={
        "help": "Rows per LenVM forward pass when scoring completions (bounds memory)."})
    length_critic_name_or_path: str | None = field(default=None, metadata={
        "help": "Recorded by the trainer, for the saved arguments and the model card: the path or Hub id the length "
                "critic (LenVM) was loaded from, None for one built in memory. Leave it unset."})

    def __post_init__(self):
        super().__post_init__()
        for name, value, allowed in (
            ("length_estimator", self.length_estimator, estimator_names()),
            ("length_mode", self.length_mode, ("advantage", "shaping")),
            ("length_normalize", self.length_normalize, ("none", "batch")),
            ("length_gate", self.length_gate, ("none", "pass_rate", "correct")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        if not 0.0 <= self.length_lam <= 1.0:
            raise ValueError(f"length_lam must be in [0, 1], got {self.length_lam}")
        if self.length_gamma is not None and not 0.0 < self.length_gamma < 1.0:
            raise ValueError(f"length_gamma must be in (0, 1), got {self.length_gamma}; or leave it None to use the "
                             "LenVM's own gamma")
        if self.length_gate_max_reward <= 0:
            raise ValueError(f"length_gate_max_reward must be > 0, got {self.length_gate_max_reward}")
        if self.length_critic_refit_steps < 0:
            raise ValueError(f"length_critic_refit_steps must be >= 0, got {self.length_critic_refit_steps}")
        if self.length_critic_learning_rate <= 0:
            raise ValueError(f"length_critic_learning_rate must be > 0, got {self.length_critic_learning_rate}")
        if self.length_critic_batch_size < 1:
            raise ValueError(f"length_critic_batch_size must be >= 1, got {self.length_critic_batch_size}")
        if self.length_mode == "shaping" and self.length_estimator != "lenvm":
            raise ValueError("length_mode='shaping' shapes with a LenVM potential: set length_estimator='lenvm'")
        if self.length_critic_refit_steps > 0 and self.length_mode == "shaping":
            raise ValueError("a critic refit in shaping mode breaks the shaping guarantee (it needs a fixed "
                             "potential): set length_critic_refit_steps=0 or length_mode='advantage'")
        if self.length_critic_refit_steps > 0 and self.length_estimator != "lenvm":
            raise ValueError("length_critic_refit_steps > 0 refits the LenVM critic of length_estimator='lenvm'; "
                             f"length_estimator={self.length_estimator!r} has none to refit")
        if self.per_token_length_term:
            refused = []
            if self.importance_sampling_level == "sequence":
                refused.append("importance_sampling_level='sequence' (GSPO)")
            if self.loss_type in ("vespo", "luspo"):
                refused.append(f"loss_type={self.loss_type!r}")
            if self.off_policy_mask_threshold is not None:
                refused.append("off_policy_mask_threshold")
            if refused:
                raise ValueError(
                    f"{' and '.join(refused)} weight whole sequences by one number and would smear or reinterpret "
                    "the per-token length advantages of length_estimator='lenvm'; use a token-level loss_type "
                    "('grpo', 'bnpo', 'dr_grpo', 'dapo', 'cispo', 'sapo') with importance_sampling_level='token', "
                    "or the sequence-level length_estimator='group'"
                )

    @property
    def per_token_length_term(self) -> bool:
        """Whether the length term varies along a completion (the token-level estimator, switched on)."""
        return self.length_estimator == "lenvm" and self.length_coef != 0


def lenvm_name_or_path(critic: LenVMCritic | None) -> str | None:
    """Where the critic's LenVM was loaded from: its path or Hub id, or the checkpoint a loaded ``LenVM`` came from
    (its config records the LenVM's gamma); ``None`` for a LenVM built in memory."""
    if critic is None:
        return None
    if critic.name_or_path:
        return critic.name_or_path
    config = critic.model.config
    if getattr(config, GAMMA_CONFIG_KEY, None) is None:
        return None
    return getattr(config, "_name_or_path", None) or None


def length_card_section(args: LengthAwareGRPOConfig) -> str:
    """The model card's section on the length term: the LenVM (path or id), its gamma and the length settings."""
    lenvm = args.length_critic_name_or_path
    lines = ["", "## Length term (lenvm_rl)", "",
             f"Length critic (LenVM): {f'`{lenvm}`' if lenvm else 'none, or one built in memory'}; "
             f"gamma = {args.length_gamma}.", ""]
    lines += [f"- `{name}`: `{getattr(args, name)!r}`" for name in LENGTH_SETTINGS]
    lines += ["", "Cite the Length Value Model as:", "", "```bibtex", LENVM_PAPER["citation"], "```", ""]
    return "\n".join(lines)


class LengthAwareGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with a length term: token-level from a LenVM, or a sequence-level twin.

    Args:
        length_critic: a :class:`~lenvm_rl.LenVMCritic`, a :class:`~lenvm_rl.LenVM` or a checkpoint path.
            Required for ``length_estimator="lenvm"``; with the other estimators it is optional and only
            feeds the logged length metrics (predicted vs realised length, explained variance). It is moved
            to the accelerator's device, unless pinned with ``LenVMCritic(..., device=...)``
            (:func:`~lenvm_rl.critics.place_critic`).
        Every other argument is ``GRPOTrainer``'s.

    Logged (TRL metrics, prefix ``length/``): ``predicted_s0`` and ``realised`` mean lengths and their
    correlation, ``abs_advantage`` (mean ``|s * gate * A_len|`` over action tokens) and its ``share`` of
    ``|A_task| + |s * gate * A_len|``, ``truncated_frac``, the critic's ``explained_variance`` on the
    fresh Monte-Carlo returns and, with a refit, ``critic_refit_loss``.

    Saved: with a refit, ``save_model`` writes the refit head to ``length_critic/value_head.safetensors`` (the
    LenVM layout's file: put it in a copy of the LenVM's checkpoint to load the refit LenVM). The saved
    arguments and the model card record the LenVM (``length_critic_name_or_path``), its gamma
    (``length_gamma``, resolved) and the length settings.

    TRL internals relied on (checked against TRL 1.16.0 by ``tests/trainers/test_trl_private_api.py``):
    ``GRPOTrainer._generate_and_score_completions(inputs)`` (its output keys ``prompt_ids``, ``prompt_mask``,
    ``completion_ids``, ``completion_mask``, ``tool_mask``, ``advantages``, and for image prompts ``pixel_values``,
    ``image_grid_thw``, ``num_images``), ``_generate(prompts)`` (its result's
    items 1 and 2: completion ids and tool mask), ``_calculate_rewards(inputs, prompts, completions,
    completion_ids_list)`` (gathered, NaN for None), ``_metrics``, and the attributes ``eos_token_ids``,
    ``reward_weights``, ``num_generations``, ``num_generations_eval``, ``chat_template`` and
    ``chat_template_kwargs``; transformers' ``Trainer._get_train_sampler(dataset)`` (TRL's ``RepeatSampler``, its
    ``shuffle``, ``seed`` and ``generator``), ``_save(output_dir, state_dict)``, ``_save_checkpoint(model, trial)``,
    ``_load_optimizer_and_scheduler(checkpoint)`` and ``_get_output_dir(trial)``; the class attributes ``_tag_names``,
    ``_name`` and ``_paper`` of TRL's model card.
    """

    _tag_names = ["trl", "grpo", "lenvm-rl"]
    _name = "Length-aware GRPO"
    _paper = LENVM_PAPER

    def __init__(self, model, reward_funcs=None, args: LengthAwareGRPOConfig | None = None, *posargs,
                 length_critic: LenVMCritic | LenVM | str | os.PathLike | None = None, **kwargs):
        if args is not None and not isinstance(args, LengthAwareGRPOConfig):
            raise TypeError(f"args must be a LengthAwareGRPOConfig, got {type(args).__name__}")
        if isinstance(model, str):  # a short name (``smollm2-135m``) is the embedded model's local copy
            model = resolve_model_path(model)
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = LengthAwareGRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-LengthAwareGRPO")
        super().__init__(model, reward_funcs, args, *posargs, **kwargs)
        warn_if_slow_bf16(args.bf16, self.accelerator.device)
        self.length_critic = self._build_critic(length_critic)
        self.length_gamma = self._resolve_gamma()
        self._record_length_critic()
        self._twin_bootstraps = self._check_twin_bootstrap()
        self.critic_optimizer = None
        if args.length_critic_refit_steps > 0:
            self.critic_optimizer = torch.optim.AdamW(
                self.length_critic.model.v_head.parameters(), lr=args.length_critic_learning_rate
            )
        self.length_strategy = get_length_estimator(args.length_estimator, args.length_mode)(
            self.length_gamma, args.length_correct_threshold)
        self._captured = {}  # what TRL's generation and reward hooks capture for the next RolloutBatch
        self._rollout: RolloutBatch | None = None  # the last generation's RolloutBatch, for inspection

    def _build_critic(self, length_critic) -> LenVMCritic | None:
        args = self.args
        if length_critic is None:
            if args.length_estimator == "lenvm":
                raise ValueError("length_estimator='lenvm' needs a length critic: pass length_critic=LenVMCritic(...), "
                                 "a LenVM or a LenVM checkpoint path")
            return None
        if not isinstance(length_critic, LenVMCritic):
            with whole_model_loading(args):  # a frozen critic is whole on every process, never ZeRO-3 partitioned
                length_critic = LenVMCritic(length_critic, lam=args.length_lam,
                                            batch_size=args.length_critic_batch_size)
        elif length_critic.lam != args.length_lam:
            raise ValueError(f"the LenVMCritic has lam={length_critic.lam} but length_lam={args.length_lam}; "
                             "make them agree")
        length_critic.check_vocabulary(self.processing_class)
        return place_critic(length_critic, self.accelerator.device)

    def _record_length_critic(self) -> None:
        """Write the LenVM's path or id and the resolved gamma into ``args``, for the saved arguments and the card."""
        args, name = self.args, lenvm_name_or_path(self.length_critic)
        if args.length_critic_name_or_path not in (None, name):
            warnings.warn(f"length_critic_name_or_path={args.length_critic_name_or_path!r} is replaced by the length "
                          f"critic's {name!r}: the trainer records it; leave it unset", stacklevel=3)
        args.length_critic_name_or_path = name
        args.length_gamma = self.length_gamma

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None):
        """TRL's card (this trainer's name, tags and paper), plus a section recording the length term."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        with open(os.path.join(self.args.output_dir, "README.md"), "a", encoding="utf-8") as card:
            card.write(length_card_section(self.args))

    def _resolve_gamma(self) -> float | None:
        gamma, critic = self.args.length_gamma, self.length_critic
        if critic is not None and gamma is not None and self.args.length_estimator == "lenvm" \
                and abs(gamma - critic.gamma) > 1e-12:
            raise ValueError(f"length_gamma={gamma} differs from the LenVM's gamma={critic.gamma}: a value head only "
                             "models the discount it was trained with; leave length_gamma unset")
        gamma = gamma if gamma is not None else (critic.gamma if critic is not None else None)
        if gamma is None and self.args.length_estimator == "group":
            raise ValueError("length_estimator='group' needs a discount: set length_gamma (e.g. 0.01 ** (1 / L99) of "
                             "the policy's lengths) or pass a length_critic to use its gamma")
        return gamma

    def _check_twin_bootstrap(self) -> bool:
        """Whether the ``"group"`` twin scores a cut completion with the critic's ``V(s_T)``, as ``"lenvm"`` does.

        It does when a critic of the twin's discount is given; otherwise a cut completion is scored at its cut
        length, a different objective from the LenVM estimator's, and the trainer says so.
        """
        if self.args.length_estimator != "group" or self.args.length_coef == 0:
            return False
        critic = self.length_critic
        if critic is not None and abs(critic.gamma - self.length_gamma) <= 1e-12:
            return True
        reason = ("no length_critic is given" if critic is None else
                  f"the length_critic models gamma={critic.gamma}, not length_gamma={self.length_gamma}")
        warnings.warn(f"length_estimator='group': {reason}, so a truncated completion is scored at its cut length, "
                      "G = -(1 - gamma^L), while the 'lenvm' estimator bootstraps it with V(s_T). Pass a "
                      "length_critic of the same gamma to compare the two on one objective.", stacklevel=3)
        return False

    # ------------------------------------------------------------------ hooks into TRL's step
    def _get_train_sampler(self, dataset=None):
        """TRL's ``RepeatSampler``, shuffled with ``args.data_seed`` when it is set.

        transformers' meaning of ``data_seed``: the seed of the data samplers, while ``seed`` seeds everything else
        (sampling, initialisation, dropout). TRL's GRPO shuffles with ``seed``; honouring ``data_seed`` lets runs
        that differ in ``seed`` see the prompts in the same order.
        """
        sampler = super()._get_train_sampler(dataset)
        if self.args.data_seed is not None and getattr(sampler, "shuffle", False):
            sampler.seed = self.args.data_seed
            sampler.generator = torch.Generator()
            sampler.generator.manual_seed(self.args.data_seed)
        return sampler

    def _generate(self, prompts: list):
        """TRL's generation; captures each completion's EOS flag and action length, read from the generated ids, for
        the next :class:`RolloutBatch` (TRL's output keeps neither: ``mask_truncated_completions`` zeroes cut rows)."""
        result = super()._generate(prompts)
        completion_ids, tool_mask = result[1], result[2]
        eos = set(self.eos_token_ids)
        terminated = [len(ids) > 0 and ids[-1] in eos for ids in completion_ids]
        lengths = [sum(m) for m in tool_mask] if tool_mask is not None else [len(ids) for ids in completion_ids]
        device = self.accelerator.device
        self._captured.update(terminated=torch.tensor(terminated, device=device),
                              lengths=torch.tensor(lengths, device=device))
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards, gathered across processes (N_global, n_funcs); captured for the next :class:`RolloutBatch`."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._captured["rewards_per_func"] = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        """TRL's generation and scoring, then ``A_t = A_task + s * gate * A_len_t`` in place of TRL's advantages."""
        if self.length_critic is not None:  # warns once if the dataset's prompts are formatted unlike the LenVM's
            self.length_critic.check_prompt_format(inputs[0], self.processing_class, chat_template=self.chat_template,
                                                   chat_template_kwargs=self.chat_template_kwargs)
        output = super()._generate_and_score_completions(inputs)
        batch = self._rollout_batch(output)
        task_advantages, loss_inputs = self._task_advantages(batch)
        advantages = self._advantages(batch, task_advantages, self.length_strategy(batch))
        output.update(loss_inputs, advantages=advantages)
        mc_returns = self._critic_returns(batch)
        self._log_length_metrics(batch, mc_returns)
        if self.critic_optimizer is not None and batch.mode == "train":
            self._refit_critic(batch, mc_returns)
        self._rollout = batch
        return output

    def _rollout_batch(self, output) -> RolloutBatch:
        """One :class:`RolloutBatch` from TRL's output and what the generation and reward hooks captured."""
        captured, self._captured = self._captured, {}
        mode = "train" if self.model.training else "eval"
        completion_mask = output["completion_mask"]
        action_mask = completion_mask if "tool_mask" not in output else completion_mask * output["tool_mask"]
        action_mask = action_mask.bool()
        rank, lengths = self.accelerator.process_index, captured["lengths"]
        if not bool(action_mask.any()):
            logger.warning(f"process {rank}: every completion of this batch is masked (all cut under "
                           "mask_truncated_completions=True, or empty): no token takes an action, so the batch "
                           "gives no policy gradient and its advantages are neither whitened nor scaled")
        rewards_per_func = captured["rewards_per_func"]
        task_rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        # as TRL: a completion that every reward function returned None for is unscorable; its reward stays NaN
        # (not nansum's 0), so the gates and Kimi's "correct" skip it, and its advantage is 0
        task_rewards = task_rewards.masked_fill(rewards_per_func.isnan().all(dim=1), torch.nan)
        batch = RolloutBatch(
            mode=mode, prompt_ids=output["prompt_ids"], prompt_mask=output["prompt_mask"],
            completion_ids=output["completion_ids"], completion_mask=completion_mask, action_mask=action_mask,
            terminated=captured["terminated"], lengths=lengths, all_lengths=self.accelerator.gather(lengths),
            task_rewards=task_rewards,
            num_generations=self.num_generations if mode == "train" else self.num_generations_eval,
            local=slice(rank * len(lengths), (rank + 1) * len(lengths)), grpo_advantages=output["advantages"],
            old_per_token_logps=output.get("old_per_token_logps"),
            ref_per_token_logps=output.get("ref_per_token_logps"),
            images={key: output[key] for key in ("pixel_values", "image_grid_thw", "num_images") if key in output})
        batch.critic_out = self._score_length(batch)
        if self._twin_bootstraps:
            batch.all_final_values = self.accelerator.gather(batch.critic_out.final_values)
        return batch

    def _score_length(self, batch: RolloutBatch):
        """The length critic on the fresh completions (``None`` without one)."""
        if self.length_critic is None:
            return None
        return self.length_critic(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                                  terminated=batch.terminated, action_mask=batch.action_mask, **batch.images)

    def _task_advantages(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict]:
        """The task advantage beside which the length term goes, and the tensors the loss reads besides TRL's (by
        name; ``None`` clears one of TRL's). GRPO: TRL's group-normalised (B,) advantage, nothing more."""
        return batch.grpo_advantages, {}

    def _length_gate(self, batch: RolloutBatch) -> torch.Tensor | None:
        """(B,) the gate on the length term (:func:`~lenvm_rl.core.pass_rate_gate`, ``correct_gate``), or ``None``."""
        args = self.args
        if args.length_gate == "pass_rate":
            return pass_rate_gate(batch.task_rewards, batch.num_generations, args.length_gate_max_reward)[batch.local]
        if args.length_gate == "correct":
            return correct_gate(batch.task_rewards, args.length_correct_threshold)[batch.local]
        return None

    def _advantages(self, batch: RolloutBatch, task_advantages, length_advantages):
        """:func:`~lenvm_rl.core.combine_advantages` of the task and (scaled) length advantages; 0 where unscorable."""
        args, action_mask = self.args, batch.action_mask
        gate = self._length_gate(batch)
        combined = length_advantages is not None and args.length_coef != 0
        advantages = task_advantages
        if combined:
            length_advantages = per_token_advantages(length_advantages, action_mask)
            if args.length_normalize == "batch":
                length_advantages = scale_by_std(length_advantages, action_mask, *self._gather_rows(
                    length_advantages, action_mask))
            advantages = combine_advantages(task_advantages, length_advantages, args.length_coef, action_mask, gate)
        scored = ~batch.unscorable[batch.local].view(-1, *(1,) * (advantages.dim() - 1))
        advantages = torch.where(scored, advantages, 0.0)  # an unscorable completion carries no signal
        if combined:
            self._log_advantage_share(batch.mode, task_advantages, advantages, action_mask)
        return advantages

    def _critic_returns(self, batch: RolloutBatch) -> torch.Tensor | None:
        """The critic's fresh Monte-Carlo returns (lam = 1, bootstrapped only at truncation); ``None`` without one."""
        if batch.critic_out is None:
            return None
        _, returns = length_gae(batch.critic_out.values, batch.action_mask, batch.critic_out.final_values,
                                self.length_critic.gamma, 1.0)
        return returns

    # ------------------------------------------------------------------ critic refit
    def _refit_critic(self, batch: RolloutBatch, targets):
        """Refit the critic's head on the fresh Monte-Carlo returns (lam = 1, bootstrapped only at truncation)."""
        reduce = None
        if self.accelerator.num_processes > 1:
            def reduce(grad):
                return self.accelerator.reduce(grad, reduction="mean")
        losses = self.length_critic.refit(batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                          batch.completion_mask, targets, batch.action_mask,
                                          optimizer=self.critic_optimizer, steps=self.args.length_critic_refit_steps,
                                          reduce_gradients=reduce, **batch.images)
        loss = self.accelerator.reduce(torch.tensor(losses[-1], device=self.accelerator.device), reduction="mean")
        self._metrics[batch.mode]["length/critic_refit_loss"].append(loss.item())

    def _save(self, output_dir: str | None = None, state_dict=None):
        """The policy and, with a refit, the refit head in ``length_critic/value_head.safetensors``."""
        super()._save(output_dir, state_dict)
        if self.critic_optimizer is None or not self.args.should_save:
            return
        folder = os.path.join(output_dir if output_dir is not None else self.args.output_dir, CRITIC_DIR)
        os.makedirs(folder, exist_ok=True)
        head = {f"v_head.{k}": v.detach().cpu().contiguous()
                for k, v in self.length_critic.model.v_head.state_dict().items()}
        save_file(head, os.path.join(folder, VALUE_HEAD_FILE), metadata={"format": "pt"})

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)  # save_model(checkpoint-N) wrote the head
        if self.critic_optimizer is None or not self.args.should_save:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}",
                              CRITIC_DIR)
        torch.save(self.critic_optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.critic_optimizer is None or checkpoint is None:
            return
        folder = os.path.join(checkpoint, CRITIC_DIR)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{checkpoint} has no {CRITIC_DIR}/ but length_critic_refit_steps > 0: it was not "
                                    "written by a refitting LengthAwareGRPOTrainer")
        head = load_file(os.path.join(folder, VALUE_HEAD_FILE))
        self.length_critic.model.v_head.load_state_dict({k.removeprefix("v_head."): v for k, v in head.items()})
        state = torch.load(os.path.join(folder, "optimizer.pt"), map_location=self.length_critic.device,
                           weights_only=True)
        self.critic_optimizer.load_state_dict(state)

    # ------------------------------------------------------------------ metrics
    def _gather_rows(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) tensors of every process, padded to one width: (N_global, T_max) values and mask."""
        x = self.accelerator.pad_across_processes(x, dim=1)
        mask = self.accelerator.pad_across_processes(mask.long(), dim=1)
        return self.accelerator.gather(x), self.accelerator.gather(mask).bool()

    def _log_advantage_share(self, mode, task_advantages, advantages, action_mask):
        task = per_token_advantages(task_advantages, action_mask)
        length_abs = masked_mean(*self._gather_rows((advantages - task).abs(), action_mask))
        task_abs = masked_mean(*self._gather_rows(task.abs(), action_mask))
        self._metrics[mode]["length/abs_advantage"].append(length_abs.item())
        self._metrics[mode]["length/abs_advantage_share"].append((length_abs / (length_abs + task_abs)).item())

    def _log_length_metrics(self, batch: RolloutBatch, mc_returns):
        metrics, all_lengths = self._metrics[batch.mode], batch.all_lengths
        terminated, critic_out, action_mask = batch.terminated, batch.critic_out, batch.action_mask
        metrics["length/truncated_frac"].append(1.0 - self.accelerator.gather(terminated).float().mean().item())
        metrics["length/realised"].append(all_lengths.float().mean().item())
        if critic_out is None:
            return
        predicted = self.accelerator.gather(critic_out.lengths[:, 0].contiguous())
        started = self.accelerator.gather(action_mask[:, 0].contiguous())
        metrics["length/predicted_s0"].append(predicted[started].mean().item())
        metrics["length/predicted_realised_corr"].append(
            pearson_correlation(predicted[started], all_lengths[started].float()).item())
        values, mask = self._gather_rows(critic_out.values, action_mask)
        returns, _ = self._gather_rows(mc_returns, action_mask)
        metrics["length/critic_explained_variance"].append(explained_variance(values, returns, mask).item())
