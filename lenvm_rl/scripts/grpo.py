"""Length-aware GRPO or PPO on GSM8K-style math: the recipe pipeline of ``recipes/grpo_gsm8k.py`` and ``ppo_gsm8k.py``.

Arguments come from three dataclasses, TRL style: :class:`GRPOScriptArguments` (data, rewards, the
LenVM, the held-out evaluation), :class:`~lenvm_rl.trainers.LengthAwareGRPOConfig` (every
``GRPOConfig`` option plus the length term) or :class:`~lenvm_rl.trainers.PPOConfig`, and
``trl.ModelConfig`` (policy, dtype, LoRA). :func:`main` reads top to bottom:

1. Load the training prompts and the held-out prompts as chat messages (the question plus an
   instruction to end with ``#### <number>``) with their ``answer`` column
   (:func:`~lenvm_rl.data.load_math_problems`).
2. Sample the policy on the held-out prompts (:func:`~lenvm_rl.evaluation.sample_and_evaluate_policy`).
3. Get the length critic: ``--lenvm PATH`` (a LenVM checkpoint), or ``--lenvm auto``
   (:func:`~lenvm_rl.lenvm_cache.ensure_lenvm`: the LenVM the package ships for the embedded policy when the
   run samples as its data was sampled, unless ``--lenvm_auto_retrain``; else one sampled at the GRPO
   temperature and ``max_completion_length`` on training prompts, pretrained, cached under
   ``cache_dir()/lenvm-auto/<key>``). Print its prediction of the held-out samples' lengths of step 2 (value
   MSE, prompt MRE, positionwise RE) beside the constant predictor of its training rollouts.
4. Train the trainer of the config class (:data:`TRAINERS`): :class:`~lenvm_rl.trainers.LengthAwareGRPOTrainer`
   (the LenVM as ``length_critic``) or :class:`~lenvm_rl.trainers.PPOTrainer` (the LenVM as ``value_model``)
   with the rewards ``correctness_reward_weight * gsm8k_correctness_reward + format_reward_weight *
   gsm8k_format_reward``, and save the policy to ``output_dir``.
5. Sample the saved policy on the same held-out prompts, print the before/after table (mean length,
   truncated fraction, answer rate, accuracy, each with its standard error) and write it to
   ``output_dir/policy_eval.json``.

Under ``accelerate launch`` with several processes, sampling (the ``auto`` rollouts and both
evaluations) runs on the main process while the others wait at a barrier; LenVM pretraining and
GRPO use every process. Models sampled on the main process are loaded whole, outside DeepSpeed
ZeRO-3's partitioned initialisation; so is the frozen critic, on every process. Under DeepSpeed
``--lenvm auto`` only uses a shipped or cached LenVM (accelerate allows one DeepSpeed ``Accelerator`` per
process, and GRPO needs it).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

from lenvm_rl.data.problems import INSTRUCTION, WORD_PROBLEMS
from lenvm_rl.lenvm_cache import LenVMAutoSettings
from lenvm_rl.trainers import LengthAwareGRPOConfig, LengthAwareGRPOTrainer, PPOConfig, PPOTrainer
from lenvm_rl.trainers.grpo_trainer import whole_model_loading

__all__ = ["DEFAULT_POLICY", "INSTRUCTION", "TRAINERS", "GRPOScriptArguments", "main", "make_parser"]

DEFAULT_POLICY = "smollm2-135m"
"""The policy when ``--model_name_or_path`` is not given: SmolLM2-135M-Instruct, embedded (offline)."""

AUTO = "auto"
SAMPLER_DEFAULTS = {"top_k": 0, "min_p": None, "repetition_penalty": 1.0, "generation_kwargs": None}
"""GRPO generation options that --lenvm auto's sampler (temperature and top_p only) cannot follow."""


class Recipe(NamedTuple):
    """A :data:`TRAINERS` entry: the trainer, the keyword it takes the LenVM by, and the name printed."""

    trainer: type
    critic_argument: str
    name: str


TRAINERS = {
    PPOConfig: Recipe(PPOTrainer, "value_model", "PPO"),  # a task head trains beside the frozen length head
    LengthAwareGRPOConfig: Recipe(LengthAwareGRPOTrainer, "length_critic", "length-aware GRPO"),
}
"""Config class -> the recipe's trainer; :func:`main` looks up the config's class, then its base classes."""


def _auto_field(name: str):
    """The ``--lenvm_auto_<name>`` option: default and help of :class:`LenVMAutoSettings`'s field ``name``."""
    (spec,) = [f for f in fields(LenVMAutoSettings) if f.name == name]
    return field(default=spec.default, metadata=spec.metadata)


@dataclass
class GRPOScriptArguments:
    """Data, rewards, LenVM and evaluation arguments of length-aware GRPO and PPO on GSM8K-style problems."""

    dataset: str = field(default="openai/gsm8k", metadata={
        "help": "Where the problems come from: a Hub dataset id (with --dataset_config), a local directory holding "
                "<split>.jsonl files (a GSM8K copy: train.jsonl, test.jsonl), one local .jsonl file (held-out "
                "prompts are its "
                f"last --eval_prompts rows, training rows come before them), or '{WORD_PROBLEMS}' for the offline "
                "generator lenvm_rl.data.generate_word_problems (needs --train_limit)."})
    dataset_config: str | None = field(default="main", metadata={
        "help": "Configuration name of a Hub dataset (openai/gsm8k: 'main' or 'socratic')."})
    train_split: str = field(default="train", metadata={"help": "Split of the training prompts (Hub or directory)."})
    eval_split: str = field(default="test", metadata={"help": "Split of the held-out prompts (Hub or directory)."})
    question_column: str = field(default="question", metadata={"help": "Column holding the question text."})
    answer_column: str = field(default="answer", metadata={
        "help": "Column holding the gold answer: a solution ending in '#### N', or a bare number."})
    train_limit: int | None = field(default=None, metadata={
        "help": "Use the first N training problems (default: all; required for word-problems: how many to generate)."})
    word_problems_seed: int = field(default=0, metadata={
        "help": "Seed of the word-problem generator (training problems first, then the held-out ones)."})
    instruction: str = field(default=INSTRUCTION, metadata={
        "help": "Appended to every question after a blank line; '' sends the bare question."})

    eval_prompts: int = field(default=64, metadata={
        "help": "Held-out prompts of the before/after table (the first N of --eval_split); 0 skips both evaluations."})
    eval_samples: int = field(default=4, metadata={"help": "Completions sampled per held-out prompt."})
    eval_temperature: float | None = field(default=None, metadata={
        "help": "Sampling temperature of the evaluations (default: the GRPO --temperature). Their length limit is "
                "--max_completion_length and their seed --seed, before and after alike."})
    sampling_batch_size: int = field(default=32, metadata={
        "help": "Sequences per generate call when sampling the evaluations and the --lenvm auto rollouts."})

    correctness_reward_weight: float = field(default=1.0, metadata={
        "help": "Weight of gsm8k_correctness_reward: 1 when the number after the last '####' equals the gold answer."})
    format_reward_weight: float = field(default=0.5, metadata={
        "help": "Weight of gsm8k_format_reward: 1 when the completion has a parseable '#### N' answer, right or "
                "wrong. A correct completion scores both weights, a parseable wrong one the format weight only."})

    lenvm: str | None = field(default=None, metadata={
        "help": "Length critic of --length_estimator lenvm (optional otherwise: it adds the length metrics): a LenVM "
                f"checkpoint directory, or '{AUTO}': the one the package ships for the embedded smollm2-135m when the "
                "run samples like its data (temperature 0.7, chat prompts), else one pretrained on rollouts of the "
                "policy (cached, see the lenvm_auto_* options)."})
    lenvm_auto_prompts: int = _auto_field("prompts")
    lenvm_auto_samples: int = _auto_field("samples")
    lenvm_auto_epochs: float = _auto_field("epochs")
    lenvm_auto_learning_rate: float = _auto_field("learning_rate")
    lenvm_auto_batch_size: int = _auto_field("batch_size")
    lenvm_auto_freeze_backbone: bool = _auto_field("freeze_backbone")
    lenvm_auto_cache_dir: str | None = _auto_field("cache_dir")
    lenvm_auto_retrain: bool = _auto_field("retrain")

    def __post_init__(self):
        if self.dataset == WORD_PROBLEMS and self.train_limit is None:
            raise ValueError(f"--dataset {WORD_PROBLEMS} generates its problems: set --train_limit to how many "
                             "training problems to generate")
        for name in ("train_limit", "lenvm_auto_prompts", "lenvm_auto_samples", "lenvm_auto_batch_size",
                     "eval_samples", "sampling_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        if self.eval_prompts < 0:
            raise ValueError(f"--eval_prompts must be >= 0 (0 skips the evaluations), got {self.eval_prompts}")
        if self.eval_temperature is not None and self.eval_temperature <= 0:
            raise ValueError(f"--eval_temperature must be > 0 (evaluations sample), got {self.eval_temperature}")
        if self.lenvm_auto_epochs <= 0 or self.lenvm_auto_learning_rate <= 0:
            raise ValueError("--lenvm_auto_epochs and --lenvm_auto_learning_rate must be > 0, got "
                             f"{self.lenvm_auto_epochs} and {self.lenvm_auto_learning_rate}")
        if self.correctness_reward_weight < 0 or self.format_reward_weight < 0:
            raise ValueError("--correctness_reward_weight and --format_reward_weight must be >= 0, got "
                             f"{self.correctness_reward_weight} and {self.format_reward_weight}")
        if self.correctness_reward_weight == 0:
            raise ValueError("--correctness_reward_weight is 0: nothing would reward right answers; give it a "
                             "positive weight")
        if self.lenvm not in (None, AUTO) and not Path(self.lenvm).is_dir():
            raise ValueError(f"--lenvm {self.lenvm}: no such directory; give a LenVM checkpoint (a backbone "
                             f"directory with value_head.safetensors) or '{AUTO}'")

    @property
    def reward_weights(self) -> list[float]:
        """Weights of (gsm8k_correctness_reward, gsm8k_format_reward), in that order."""
        return [self.correctness_reward_weight, self.format_reward_weight]


def make_parser(config_class=None):
    """``TrlParser`` of (script arguments, ``config_class``, ``ModelConfig``); ``config_class`` is
    ``LengthAwareGRPOConfig`` (the default) or ``PPOConfig``, and picks the trainer :func:`main` runs."""
    from trl import ModelConfig, TrlParser

    return TrlParser((GRPOScriptArguments, config_class or LengthAwareGRPOConfig, ModelConfig))


# ----------------------------------------------------------------------------- the pipeline


def main(script_args: GRPOScriptArguments, training_args, model_args) -> dict:
    """Train the policy with length-aware GRPO or PPO; returns the before/after report (empty off the main process)."""
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from lenvm_rl.lenvm_cache import (
        ensure_lenvm,
        lenvm_cache_dir,
        pretrained_lenvm,
        refuse_pretraining_under_deepspeed,
    )
    from lenvm_rl.modeling import resolve_model_path

    state = PartialState()
    recipe = _recipe(training_args)
    _check_settings(script_args, training_args)
    model_name = model_args.model_name_or_path or DEFAULT_POLICY
    policy_path = resolve_model_path(model_name)  # the embedded model converts once; other processes wait
    settings = lenvm_auto_settings(script_args, training_args, model_args)
    tokenizer = AutoTokenizer.from_pretrained(policy_path, trust_remote_code=training_args.trust_remote_code)

    # 1. data
    train_dataset, eval_prompts, eval_answers = load_problems(script_args)
    if script_args.lenvm == AUTO and pretrained_lenvm(policy_path, train_dataset["prompt"], settings) is None:
        # before any sampling: under DeepSpeed only a shipped or cached LenVM will do
        refuse_pretraining_under_deepspeed(training_args, lenvm_cache_dir(
            policy_path, train_dataset["prompt"], settings, prompts_source=prompts_source(script_args)))
    state.print(f"== {recipe.name}: {model_name}, {len(train_dataset)} training prompts from "
                f"{script_args.dataset}, {len(eval_prompts)} held-out x {script_args.eval_samples} samples; "
                f"length_estimator={training_args.length_estimator}, length_coef={training_args.length_coef} ==")
    held_out = (eval_prompts, eval_answers)
    samples = Path(training_args.output_dir) / "policy_eval"  # the held-out samples: before.jsonl, after.jsonl

    # 2. evaluate before
    rows, policy = {}, None
    with _main_process_sampling(state, training_args) as sampling:
        if sampling and eval_prompts:
            policy = _load_policy(policy_path, model_args, training_args)
            rows["before"] = _evaluate(policy, tokenizer, *held_out, samples / "before.jsonl", script_args,
                                       training_args, model_name)

    # 3. the LenVM, and how well it predicts the lengths of those held-out samples
    lenvm = script_args.lenvm
    if lenvm == AUTO:
        lenvm = ensure_lenvm(policy_path, train_dataset["prompt"], settings, args=training_args,
                             prompts_source=prompts_source(script_args), model=policy, tokenizer=tokenizer,
                             model_name=model_name)
    del policy
    critic, lenvm_rows = _load_lenvm(lenvm, model_args, training_args), {}
    with _main_process_sampling(state, training_args) as sampling:
        if sampling and eval_prompts and critic is not None:
            lenvm_rows = _evaluate_lenvm(critic, lenvm, samples / "before.jsonl", script_args, training_args)

    # 4. train and save
    trainer = _build_trainer(recipe, policy_path, critic, train_dataset, tokenizer, script_args, training_args,
                             model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    del trainer, critic  # free the optimiser state before the evaluation copy is loaded

    # 5. evaluate after: the saved policy, so the table describes exactly the files written (a ZeRO-3 run's
    # policy is sharded across processes; the saved copy is whole)
    report = {}
    with _main_process_sampling(state, training_args) as sampling:
        if sampling and eval_prompts:
            policy = _load_policy(training_args.output_dir, model_args, training_args)
            rows["after"] = _evaluate(policy, tokenizer, *held_out, samples / "after.jsonl", script_args,
                                      training_args, str(training_args.output_dir))
            del policy
            report = _write_report(rows, lenvm_rows, model_name, lenvm, script_args, training_args)
    return report


def _recipe(training_args) -> Recipe:
    """The :data:`TRAINERS` entry of the config's class (or of its nearest registered base class)."""
    for cls in type(training_args).__mro__:
        if cls in TRAINERS:
            return TRAINERS[cls]
    raise TypeError(f"no trainer for {type(training_args).__name__}: the recipe runs {[c.__name__ for c in TRAINERS]}")


def _load_lenvm(lenvm, model_args, training_args):
    """The LenVM at ``lenvm`` (None for none) on this process's device, loaded whole on every process: it only
    scores."""
    from lenvm_rl.modeling import LenVM

    if lenvm is None:
        return None
    with whole_model_loading(training_args):
        return LenVM.from_pretrained(lenvm, dtype=model_args.dtype, device=training_args.device,
                                     trust_remote_code=training_args.trust_remote_code)


def _build_trainer(recipe: Recipe, policy_path, critic, train_dataset, tokenizer, script_args, training_args,
                   model_args):
    """The recipe's trainer with the GSM8K rewards and the LenVM ``critic`` (or None)."""
    from trl import get_peft_config

    from lenvm_rl.rewards import gsm8k_correctness_reward, gsm8k_format_reward

    training_args.model_init_kwargs = {
        "use_safetensors": True, "dtype": model_args.dtype, "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation, **(training_args.model_init_kwargs or {})}
    training_args.reward_weights = script_args.reward_weights
    return recipe.trainer(policy_path, reward_funcs=[gsm8k_correctness_reward, gsm8k_format_reward],
                          args=training_args, train_dataset=train_dataset, processing_class=tokenizer,
                          peft_config=get_peft_config(model_args), **{recipe.critic_argument: critic})


def load_problems(script_args: GRPOScriptArguments):
    """The training dataset, held-out prompts and gold answers of the script arguments
    (:func:`~lenvm_rl.data.load_math_problems`)."""
    from lenvm_rl.data import load_math_problems

    names = ("dataset_config", "train_split", "eval_split", "question_column", "answer_column", "train_limit",
             "eval_prompts", "word_problems_seed", "instruction")
    return load_math_problems(script_args.dataset, **{name: getattr(script_args, name) for name in names})


def lenvm_auto_settings(script_args: GRPOScriptArguments, training_args, model_args) -> LenVMAutoSettings:
    """``--lenvm auto``'s settings: the ``lenvm_auto_*`` options, sampling as the trainer generates."""
    auto = {f.name: getattr(script_args, f"lenvm_auto_{f.name}") for f in fields(LenVMAutoSettings)
            if hasattr(script_args, f"lenvm_auto_{f.name}")}
    return LenVMAutoSettings(**auto, temperature=training_args.temperature, top_p=training_args.top_p,
                             max_completion_length=training_args.max_completion_length, seed=training_args.seed,
                             dtype=model_args.dtype, chat_template_kwargs=training_args.chat_template_kwargs,
                             sampling_batch_size=script_args.sampling_batch_size)


def prompts_source(script_args: GRPOScriptArguments) -> dict:
    """What identifies the training prompts in ``--lenvm auto``'s cache key."""
    dataset = script_args.dataset
    return {"dataset": str(Path(dataset).resolve()) if Path(dataset).exists() else dataset,
            "dataset_config": script_args.dataset_config, "train_split": script_args.train_split,
            "question_column": script_args.question_column, "instruction": script_args.instruction,
            "word_problems_seed": script_args.word_problems_seed}


def _check_settings(script_args: GRPOScriptArguments, training_args) -> None:
    """Refuse combinations of script and GRPO arguments that would waste a run; before any work is done.

    The reward weights live in the script arguments, and the length gates must agree with them; ``--lenvm
    auto`` must sample like GRPO generates.
    """
    unmatched = {name: getattr(training_args, name) for name, plain in SAMPLER_DEFAULTS.items()
                 if getattr(training_args, name, plain) != plain}
    if script_args.lenvm == AUTO and unmatched:
        raise ValueError(f"--lenvm auto samples with plain temperature / top_p sampling, but GRPO generates with "
                         f"{unmatched}: the LenVM would model another policy. Drop those options, or sample and "
                         "pretrain the LenVM yourself (lenvm-rl rollout, recipes/pretrain_lenvm.py) and pass --lenvm")
    weights = script_args.reward_weights
    if training_args.reward_weights is not None and list(training_args.reward_weights) != weights:
        raise ValueError(f"--reward_weights {training_args.reward_weights} conflicts with the recipe's rewards "
                         f"(correctness, format) = {weights}: set --correctness_reward_weight and "
                         "--format_reward_weight instead")
    if training_args.length_coef == 0:
        return
    correct, best_wrong = sum(weights), script_args.format_reward_weight
    uses_threshold = training_args.length_gate == "correct" or training_args.length_estimator == "kimi"
    if uses_threshold and not best_wrong < training_args.length_correct_threshold <= correct:
        raise ValueError(f"--length_correct_threshold {training_args.length_correct_threshold} does not separate "
                         f"correct completions (reward {correct}) from wrong ones (at most {best_wrong}): set it to "
                         f"{correct}")
    if training_args.length_gate == "pass_rate" and training_args.length_gate_max_reward != correct:
        raise ValueError(f"--length_gate_max_reward {training_args.length_gate_max_reward} is not the largest task "
                         f"reward, correctness + format = {correct}: set it to {correct}")




# ----------------------------------------------------------------------------- sampling and the report


@contextlib.contextmanager
def _main_process_sampling(state, training_args):
    """Yields whether this process samples (the main one), with whole models; the others wait at the end.

    No barrier on an error: the failing process exits and the launcher stops the others.
    """
    with whole_model_loading(training_args):
        yield state.is_main_process
    state.wait_for_everyone()


def _load_policy(path, model_args, training_args):
    from lenvm_rl.lenvm_cache import load_sampling_policy

    return load_sampling_policy(path, dtype=model_args.dtype, device=training_args.device,
                                trust_remote_code=training_args.trust_remote_code)


def _evaluate(policy, tokenizer, prompts, answers, path: Path, script_args, training_args, model_name: str):
    """``eval_samples`` completions per held-out prompt (sampled afresh into ``path``), scored."""
    from lenvm_rl.data import RolloutConfig
    from lenvm_rl.evaluation import sample_and_evaluate_policy

    config = RolloutConfig(num_completions=script_args.eval_samples,
                           temperature=_eval_temperature(script_args, training_args), top_p=training_args.top_p,
                           max_new_tokens=training_args.max_completion_length, seed=training_args.seed,
                           batch_size=script_args.sampling_batch_size, backend="hf",
                           chat_template_kwargs=training_args.chat_template_kwargs)
    return sample_and_evaluate_policy(policy, tokenizer, prompts, answers, path, config,
                                      model_name=model_name, progress=not training_args.disable_tqdm)


def _eval_temperature(script_args, training_args) -> float:
    return script_args.eval_temperature or training_args.temperature


def _evaluate_lenvm(critic, lenvm, path: Path, script_args, training_args) -> dict:
    """Print the LenVM's prediction of the held-out samples at ``path`` beside the constant predictor of its training
    rollouts (:func:`~lenvm_rl.lenvm_cache.training_constant`, where known); returns the rows."""
    from lenvm_rl.data import read_rollouts
    from lenvm_rl.evaluation import evaluate_constant, evaluate_lenvm, format_report
    from lenvm_rl.lenvm_cache import training_constant

    print(f"== the LenVM {lenvm} on the held-out samples {path} ==")
    if _eval_temperature(script_args, training_args) != training_args.temperature:
        print(f"not evaluated: they were sampled at --eval_temperature {script_args.eval_temperature}, the LenVM "
              f"models the trainer's --temperature {training_args.temperature}")
        return {}
    records = read_rollouts(path)
    rows = {"LenVM": evaluate_lenvm(critic, records)}
    constant = training_constant(lenvm, critic.gamma)
    if constant is not None:
        rows["constant baseline"] = evaluate_constant(constant, records, critic.gamma)
    print(format_report(rows))
    if constant is None:
        print("(no constant baseline: the LenVM's training rollouts are unknown here; lenvm-rl evaluate "
              "--baseline_rollouts adds it)")
    return rows


def _write_report(rows: dict, lenvm_rows: dict, model_name: str, lenvm, script_args, training_args) -> dict:
    """Print the before/after table and write it, with the LenVM's evaluation ``lenvm_rows``, to
    ``output_dir/policy_eval.json`` (NaN values as null)."""
    from lenvm_rl.evaluation import format_policy_table

    print(format_policy_table(rows))
    report = {
        "policy": model_name, "dataset": script_args.dataset, "lenvm": None if lenvm is None else str(lenvm),
        "eval_samples": script_args.eval_samples, "temperature": _eval_temperature(script_args, training_args),
        "max_completion_length": training_args.max_completion_length,
        "rows": {name: _finite(vars(row)) for name, row in rows.items()},
        "lenvm_rows": {name: _finite(vars(row)) for name, row in lenvm_rows.items()},
    }
    path = Path(training_args.output_dir) / "policy_eval.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written: {path}")
    return report


def _finite(fields: dict) -> dict:
    """``fields`` with NaN as None, in nested dicts too (JSON has no NaN)."""
    return {key: _finite(value) if isinstance(value, dict) else None if isinstance(value, float) and math.isnan(value)
            else value for key, value in fields.items()}
