"""Length-aware GRPO or PPO on GSM8K-style math: data, LenVM, evaluation before and after, training.

Arguments come from three dataclasses, TRL style: :class:`GRPOScriptArguments` (data, rewards, the
LenVM, the held-out evaluation), :class:`~lenvm_rl.trainers.LengthAwareGRPOConfig` (every
``GRPOConfig`` option plus the length term) or :class:`~lenvm_rl.trainers.PPOConfig`, and
``trl.ModelConfig`` (policy, dtype, LoRA). ``recipes/grpo_gsm8k.py`` and ``recipes/ppo_gsm8k.py``
run :func:`main`; the config class picks the trainer:

1. Load the training prompts and the held-out prompts as chat messages (the question plus an
   instruction to end with ``#### <number>``) with their ``answer`` column.
2. Sample the policy on the held-out prompts (:func:`~lenvm_rl.evaluation.evaluate_policy`).
3. Resolve the length critic: ``--lenvm PATH`` (a LenVM checkpoint), or ``--lenvm auto``: sample the
   policy at the GRPO temperature and ``max_completion_length`` on training prompts
   (:func:`~lenvm_rl.data.sample_rollouts`, resumable), pretrain a LenVM on those rollouts
   (:func:`lenvm_rl.scripts.pretrain.main`; by default the value head only, on the frozen policy
   backbone; the held-out samples of step 2 are its evaluation set) and cache it under
   ``cache_dir()/lenvm-auto/<key>``. The key hashes every setting that shapes the checkpoint, so a
   second run with the same settings reuses it.
4. Train :class:`~lenvm_rl.trainers.LengthAwareGRPOTrainer` (the LenVM as ``length_critic``) or
   :class:`~lenvm_rl.trainers.PPOTrainer` (the LenVM as ``value_model``) with the rewards
   ``correctness_reward_weight * gsm8k_correctness_reward + format_reward_weight * gsm8k_format_reward``
   and save the policy to ``output_dir``.
5. Sample the saved policy on the same held-out prompts, print the before/after table (mean length,
   truncated fraction, answer rate, accuracy, each with its standard error) and write it to
   ``output_dir/policy_eval.json``.

Under ``accelerate launch`` with several processes, sampling (the ``auto`` rollouts and both
evaluations) runs on the main process while the others wait at a barrier; LenVM pretraining and
GRPO use every process. Models sampled on the main process are loaded whole, outside DeepSpeed
ZeRO-3's partitioned initialisation, as :func:`lenvm_rl.scripts.pretrain.main` evaluates its checkpoint;
so is the frozen critic, on every process. Under DeepSpeed ``--lenvm auto`` only reuses a cached LenVM
(accelerate allows one DeepSpeed ``Accelerator`` per process, and GRPO needs it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lenvm_rl.trainers.grpo_trainer import restore_deepspeed_config, whole_model_loading

__all__ = ["DEFAULT_POLICY", "INSTRUCTION", "GRPOScriptArguments", "main", "make_parser"]

DEFAULT_POLICY = "smollm2-135m"
"""The policy when ``--model_name_or_path`` is not given: SmolLM2-135M-Instruct, embedded (offline)."""

INSTRUCTION = 'Solve the problem step by step. End your reply with a final line "#### <number>" giving the answer.'
"""Appended to every question (after a blank line), so that the rewards can parse the answer."""

WORD_PROBLEMS = "word-problems"
AUTO = "auto"
SAMPLER_DEFAULTS = {"top_k": 0, "min_p": None, "repetition_penalty": 1.0, "generation_kwargs": None}
"""GRPO generation options that --lenvm auto's sampler (temperature and top_p only) cannot follow."""
AUTO_MARKER = "lenvm_auto.json"
"""Written into a finished ``--lenvm auto`` checkpoint: its settings and cache key."""


@dataclass
class GRPOScriptArguments:
    """Data, rewards, LenVM and evaluation arguments of length-aware GRPO and PPO on GSM8K-style problems."""

    dataset: str = field(default="openai/gsm8k", metadata={
        "help": "Where the problems come from: a Hub dataset id (with --dataset_config), a local directory holding "
                "<split>.jsonl files (e.g. ../shared/data/gsm8k), one local .jsonl file (held-out prompts are its "
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
                f"checkpoint directory, or '{AUTO}' to pretrain one on rollouts of the policy (cached, see the "
                "lenvm_auto_* options)."})
    lenvm_auto_prompts: int = field(default=64, metadata={
        "help": "--lenvm auto: the first N training prompts to sample the policy on."})
    lenvm_auto_samples: int = field(default=8, metadata={"help": "--lenvm auto: completions per prompt."})
    lenvm_auto_epochs: float = field(default=2.0, metadata={"help": "--lenvm auto: value pretraining epochs."})
    lenvm_auto_learning_rate: float = field(default=1e-3, metadata={
        "help": "--lenvm auto: learning rate of value pretraining (1e-3 suits a head-only fit; use about 2e-5 "
                "with --lenvm_auto_freeze_backbone false)."})
    lenvm_auto_batch_size: int = field(default=8, metadata={
        "help": "--lenvm auto: sequences per device and pretraining step."})
    lenvm_auto_freeze_backbone: bool = field(default=True, metadata={
        "help": "--lenvm auto: train the value head only, on the frozen policy backbone (CPU-sized; the paper "
                "fine-tunes the whole model)."})
    lenvm_auto_cache_dir: str | None = field(default=None, metadata={
        "help": "--lenvm auto: cache directory (default: $LENVM_RL_HOME/lenvm-auto, else "
                "~/.cache/lenvm_rl/lenvm-auto)."})

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

    from lenvm_rl.trainers import LengthAwareGRPOConfig

    return TrlParser((GRPOScriptArguments, config_class or LengthAwareGRPOConfig, ModelConfig))


def main(script_args: GRPOScriptArguments, training_args, model_args) -> dict:
    """Train the policy with length-aware GRPO or PPO; returns the before/after report (empty off the main process)."""
    from accelerate import PartialState
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from lenvm_rl.evaluation import format_policy_table
    from lenvm_rl.modeling import LenVM, resolve_model_path
    from lenvm_rl.rewards import gsm8k_correctness_reward, gsm8k_format_reward
    from lenvm_rl.trainers import LengthAwareGRPOTrainer, PPOConfig, PPOTrainer

    state = PartialState()
    algorithm = "PPO" if isinstance(training_args, PPOConfig) else "length-aware GRPO"
    _check_settings(script_args, training_args)
    model_name = model_args.model_name_or_path or DEFAULT_POLICY
    policy_path = resolve_model_path(model_name)  # the embedded model converts once; other processes wait
    if script_args.lenvm == AUTO and getattr(training_args, "deepspeed_plugin", None) is not None:
        folder = lenvm_auto_dir(script_args, lenvm_auto_settings(script_args, training_args, model_args, policy_path))
        if not (folder / "lenvm" / AUTO_MARKER).is_file():
            raise ValueError(
                "--lenvm auto cannot pretrain under DeepSpeed (accelerate allows one DeepSpeed Accelerator per "
                "process, and GRPO needs it): pretrain the LenVM first (lenvm-rl rollout, then "
                "recipes/pretrain_lenvm.py, ZeRO-3 included) and pass --lenvm PATH, or run this command once "
                f"without DeepSpeed to fill the cache ({folder}), which a DeepSpeed run then reuses")
    trust_remote_code = training_args.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(policy_path, trust_remote_code=trust_remote_code)
    train_dataset, eval_prompts, eval_answers = load_problems(script_args)
    state.print(f"== {algorithm}: {model_name}, {len(train_dataset)} training prompts from "
                f"{script_args.dataset}, {len(eval_prompts)} held-out x {script_args.eval_samples} samples; "
                f"length_estimator={training_args.length_estimator}, length_coef={training_args.length_coef} ==")

    out = Path(training_args.output_dir)
    eval_dir = out / "policy_eval"
    rows = {}
    policy = None
    with _sampling(state, training_args):
        if state.is_main_process and eval_prompts:
            policy = _load_policy(policy_path, model_args, training_args)
            rows["before"] = _evaluate(policy, tokenizer, eval_prompts, eval_answers, eval_dir / "before.jsonl",
                                       script_args, training_args, model_name=model_name)
    lenvm = resolve_lenvm(script_args, training_args, model_args, state, policy_path, model_name, tokenizer,
                          train_dataset, policy=policy,
                          eval_rollouts=eval_dir / "before.jsonl" if eval_prompts else None)
    del policy
    critic = None
    if lenvm is not None:
        # A frozen critic, whole on every process (not partitioned by ZeRO-3: it only scores completions).
        with whole_model_loading(training_args):
            critic = LenVM.from_pretrained(lenvm, dtype=model_args.dtype,
                                           trust_remote_code=training_args.trust_remote_code)

    training_args.model_init_kwargs = {
        "use_safetensors": True, "dtype": model_args.dtype, "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation, **(training_args.model_init_kwargs or {})}
    training_args.reward_weights = script_args.reward_weights
    # PPO takes the LenVM as its value model (a task head trains beside the frozen length head), GRPO as its
    # length critic
    critic_argument = {"value_model": critic} if algorithm == "PPO" else {"length_critic": critic}
    trainer = (PPOTrainer if algorithm == "PPO" else LengthAwareGRPOTrainer)(
        policy_path, reward_funcs=[gsm8k_correctness_reward, gsm8k_format_reward], args=training_args,
        train_dataset=train_dataset, processing_class=tokenizer, peft_config=get_peft_config(model_args),
        **critic_argument,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    del trainer  # free the optimiser state before the evaluation copy is loaded

    report = {}
    with _sampling(state, training_args):
        if state.is_main_process and eval_prompts:
            # The saved policy is evaluated, so the table describes exactly the files written (a ZeRO-3
            # run's policy is sharded across processes; the saved copy is whole).
            policy = _load_policy(training_args.output_dir, model_args, training_args)
            rows["after"] = _evaluate(policy, tokenizer, eval_prompts, eval_answers, eval_dir / "after.jsonl",
                                      script_args, training_args, model_name=str(training_args.output_dir))
            del policy
            print(format_policy_table(rows))
            report = {
                "policy": model_name, "dataset": script_args.dataset, "lenvm": None if lenvm is None else str(lenvm),
                "eval_samples": script_args.eval_samples, "temperature": _eval_temperature(script_args, training_args),
                "max_completion_length": training_args.max_completion_length,
                "rows": {name: _finite(vars(row)) for name, row in rows.items()},
            }
            (out / "policy_eval.json").write_text(json.dumps(report, indent=2))
            print(f"written: {out / 'policy_eval.json'}")
    return report


# ----------------------------------------------------------------------------- data


def load_problems(script_args: GRPOScriptArguments):
    """The training dataset (``prompt`` messages, ``answer``), the held-out prompts and their gold answers."""
    import datasets

    from lenvm_rl.data import word_problem_dataset

    source, n_eval = script_args.dataset, script_args.eval_prompts
    path = Path(source)
    if source == WORD_PROBLEMS:
        rows = word_problem_dataset(script_args.train_limit + n_eval, seed=script_args.word_problems_seed)
        train_range, eval_range = (0, script_args.train_limit), (script_args.train_limit, n_eval)
        train_rows = eval_rows = rows
    elif path.is_file() or path.suffix == ".jsonl":
        rows = _read_jsonl_dataset(path)
        if len(rows) <= n_eval:
            raise ValueError(f"--dataset {path} has {len(rows)} rows: none left for training after the "
                             f"{n_eval} held-out ones (its last rows); lower --eval_prompts")
        n_train = len(rows) - n_eval
        train_range, eval_range = (0, min(n_train, script_args.train_limit or n_train)), (n_train, n_eval)
        train_rows = eval_rows = rows
    elif path.is_dir():
        train_rows = _read_jsonl_dataset(path / f"{script_args.train_split}.jsonl", "--train_split")
        eval_rows = _read_jsonl_dataset(path / f"{script_args.eval_split}.jsonl", "--eval_split") if n_eval else None
        train_range, eval_range = (0, script_args.train_limit), (0, n_eval)
    else:
        train_rows = datasets.load_dataset(source, script_args.dataset_config, split=script_args.train_split)
        eval_rows = (datasets.load_dataset(source, script_args.dataset_config, split=script_args.eval_split)
                     if n_eval else None)
        train_range, eval_range = (0, script_args.train_limit), (0, n_eval)
    prompts, answers = _prompts_and_answers(train_rows, *train_range, script_args, source)
    train_dataset = datasets.Dataset.from_dict({"prompt": prompts, "answer": answers})
    if not n_eval:
        return train_dataset, [], []
    return train_dataset, *_prompts_and_answers(eval_rows, *eval_range, script_args, source)


def _read_jsonl_dataset(path: Path, option: str = "--dataset"):
    import datasets

    from lenvm_rl.data.prompts import read_jsonl

    if not path.is_file():
        raise FileNotFoundError(f"{option}: {path} not found (--dataset takes a Hub id, a .jsonl file, a directory "
                                f"of <split>.jsonl files or '{WORD_PROBLEMS}')")
    return datasets.Dataset.from_list([row for _, row in read_jsonl(path)])


def _prompts_and_answers(rows, offset: int, limit: int | None, script_args: GRPOScriptArguments, source: str):
    """Rows ``offset .. offset + limit`` as (chat prompts with the instruction, gold answers).

    A question string becomes one user message (:func:`~lenvm_rl.data.to_messages`), so the dataset is
    conversational and TRL, the rollouts and the LenVM all put it through the chat template.
    """
    from lenvm_rl.data import load_prompts, to_messages
    from lenvm_rl.data.prompts import append_to_prompt

    if script_args.answer_column not in rows.column_names:
        raise ValueError(f"--dataset {source} has no column {script_args.answer_column!r} (columns: "
                         f"{rows.column_names}); set --answer_column")
    prompts = [to_messages(p) for p in load_prompts(rows, prompt_column=script_args.question_column, limit=limit,
                                                    offset=offset)]
    if script_args.instruction:
        prompts = [append_to_prompt(p, script_args.instruction) for p in prompts]
    answers = list(rows.select(range(offset, offset + len(prompts)))[script_args.answer_column])
    return prompts, answers


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


# ----------------------------------------------------------------------------- sampling


@contextlib.contextmanager
def _sampling(state, training_args):
    """Main-process sampling with whole models; the other processes wait at the end.

    No barrier on an error: the failing process exits and the launcher stops the others.
    """
    with whole_model_loading(training_args):
        yield
    state.wait_for_everyone()


def _load_policy(path, model_args, training_args):
    """A whole policy for sampling on this process: a model directory, or a PEFT adapter directory (merged)."""
    from lenvm_rl.modeling import load_backbone

    kwargs = {"dtype": model_args.dtype, "trust_remote_code": training_args.trust_remote_code}
    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs).merge_and_unload()
    else:
        model = load_backbone(path, **kwargs)
    return model.to(training_args.device).eval()


def _eval_temperature(script_args, training_args) -> float:
    return script_args.eval_temperature or training_args.temperature


def _rollout_config(training_args, *, num_completions: int, temperature: float, batch_size: int):
    from lenvm_rl.data import RolloutConfig

    return RolloutConfig(num_completions=num_completions, temperature=temperature, top_p=training_args.top_p,
                         max_new_tokens=training_args.max_completion_length, batch_size=batch_size,
                         seed=training_args.seed, backend="hf", chat_template_kwargs=training_args.chat_template_kwargs)


def _evaluate(policy, tokenizer, prompts, answers, path: Path, script_args, training_args, *, model_name: str):
    """Sample ``eval_samples`` completions per held-out prompt (afresh) and score them."""
    from lenvm_rl.data import sample_rollouts
    from lenvm_rl.evaluation import evaluate_policy

    path.unlink(missing_ok=True)  # another policy may have written it: never resume an evaluation
    config = _rollout_config(training_args, num_completions=script_args.eval_samples,
                             temperature=_eval_temperature(script_args, training_args),
                             batch_size=script_args.sampling_batch_size)
    records = sample_rollouts(policy, tokenizer, prompts, path, config, model_name=model_name,
                              progress=not training_args.disable_tqdm)
    return evaluate_policy(records, answers, tokenizer)


def _finite(row: dict) -> dict:
    """NaN (a standard error of one prompt) as null, so the report is strict JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


# ----------------------------------------------------------------------------- --lenvm auto


def lenvm_auto_settings(script_args: GRPOScriptArguments, training_args, model_args, policy_path: str) -> dict:
    """Everything that shapes a ``--lenvm auto`` checkpoint; its hash is the cache key."""
    def local_or_id(name: str) -> str:
        return str(Path(name).resolve()) if Path(name).exists() else name

    return {
        "policy": local_or_id(policy_path), "dtype": model_args.dtype,
        "temperature": training_args.temperature, "top_p": training_args.top_p,
        "max_completion_length": training_args.max_completion_length,
        "dataset": local_or_id(script_args.dataset), "dataset_config": script_args.dataset_config,
        "train_split": script_args.train_split, "question_column": script_args.question_column,
        "instruction": script_args.instruction, "word_problems_seed": script_args.word_problems_seed,
        "prompts": script_args.lenvm_auto_prompts, "samples": script_args.lenvm_auto_samples,
        "seed": training_args.seed, "epochs": script_args.lenvm_auto_epochs,
        "learning_rate": script_args.lenvm_auto_learning_rate, "batch_size": script_args.lenvm_auto_batch_size,
        "freeze_backbone": script_args.lenvm_auto_freeze_backbone,
        # recorded only when set, so the keys of caches built before it was recorded stay valid
        **({"chat_template_kwargs": training_args.chat_template_kwargs} if training_args.chat_template_kwargs else {}),
    }


def lenvm_auto_dir(script_args: GRPOScriptArguments, settings: dict) -> Path:
    """``<cache>/lenvm-auto/<key>``: the rollouts, and the LenVM in ``lenvm/`` once finished."""
    from lenvm_rl.modeling.embedded import cache_dir

    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(script_args.lenvm_auto_cache_dir) if script_args.lenvm_auto_cache_dir else cache_dir() / "lenvm-auto"
    return root / key


def resolve_lenvm(script_args, training_args, model_args, state, policy_path, model_name, tokenizer, train_dataset,
                  *, policy=None, eval_rollouts: Path | None = None) -> str | None:
    """The LenVM checkpoint for the trainer: ``--lenvm`` as given, or the ``auto`` one (built when not cached).

    ``policy`` is the policy already loaded on the main process (loaded here when needed and None).
    ``eval_rollouts`` (held-out samples of the policy) become the pretraining report's held-out set when
    they were sampled like the auto rollouts (same temperature and length limit).
    """
    if script_args.lenvm != AUTO:
        return script_args.lenvm
    settings = lenvm_auto_settings(script_args, training_args, model_args, policy_path)
    folder = lenvm_auto_dir(script_args, settings)
    final = folder / "lenvm"
    rollouts = folder / "rollouts.jsonl"
    lock = None
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder.parent / f".{folder.name}.lock", "w")  # one builder per key, across runs
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with _sampling(state, training_args):
            if state.is_main_process and not (final / AUTO_MARKER).is_file():
                print(f"[lenvm auto] sampling {script_args.lenvm_auto_prompts} training prompts x "
                      f"{script_args.lenvm_auto_samples} at temperature {training_args.temperature}, max "
                      f"{training_args.max_completion_length} tokens -> {rollouts} (resumable)")
                from lenvm_rl.data import sample_rollouts

                if policy is None:
                    policy = _load_policy(policy_path, model_args, training_args)
                count = min(script_args.lenvm_auto_prompts, len(train_dataset))
                prompts = list(train_dataset.select(range(count))["prompt"])
                config = _rollout_config(training_args, num_completions=script_args.lenvm_auto_samples,
                                         temperature=training_args.temperature,
                                         batch_size=script_args.sampling_batch_size)
                sample_rollouts(policy, tokenizer, prompts, rollouts, config, model_name=model_name,
                                progress=not training_args.disable_tqdm)
        if (final / AUTO_MARKER).is_file():
            state.print(f"[lenvm auto] reusing the cached LenVM {final}")
            return str(final)
        _pretrain_lenvm(script_args, training_args, model_args, state, policy_path, rollouts, folder / "lenvm.partial",
                        eval_rollouts if _same_sampler(eval_rollouts, rollouts) else None)
        restore_deepspeed_config(training_args)  # the pretraining arguments replaced it
        if state.is_main_process:
            partial = folder / "lenvm.partial"
            (partial / AUTO_MARKER).write_text(json.dumps({"key": folder.name, "settings": settings}, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)  # a finished checkpoint appears at once, with its marker
            print(f"[lenvm auto] cached the LenVM at {final}")
        state.wait_for_everyone()
    finally:
        if lock is not None:
            lock.close()
    return str(final)


def _same_sampler(eval_rollouts: Path | None, rollouts: Path) -> bool:
    """Whether the held-out evaluation rollouts were sampled with the temperature and length limit of ``rollouts``."""
    from lenvm_rl.data import read_rollouts

    if eval_rollouts is None or not eval_rollouts.is_file() or not rollouts.is_file():
        return False
    keys = ("temperature", "top_p", "max_new_tokens")
    first = read_rollouts(rollouts)[0]["sampler"]
    return all(rec["sampler"].get(k) == first.get(k) for rec in read_rollouts(eval_rollouts) for k in keys)


def _pretrain_lenvm(script_args, training_args, model_args, state, policy_path, rollouts: Path, output_dir: Path,
                    eval_rollouts: Path | None) -> None:
    """Value pretraining on the auto rollouts with the shared pipeline, on every process."""
    from trl import ModelConfig

    from lenvm_rl.scripts.pretrain import PretrainScriptArguments
    from lenvm_rl.scripts.pretrain import main as pretrain
    from lenvm_rl.trainers import LenVMConfig

    state.print(f"[lenvm auto] pretraining a LenVM on {rollouts} "
                f"({'value head only' if script_args.lenvm_auto_freeze_backbone else 'whole model'})")
    config = LenVMConfig(
        output_dir=str(output_dir), use_cpu=training_args.use_cpu, seed=training_args.seed,
        bf16=training_args.bf16, num_train_epochs=script_args.lenvm_auto_epochs,
        learning_rate=script_args.lenvm_auto_learning_rate, lr_scheduler_type="constant",
        per_device_train_batch_size=script_args.lenvm_auto_batch_size,
        per_device_eval_batch_size=script_args.lenvm_auto_batch_size,
        freeze_backbone=script_args.lenvm_auto_freeze_backbone, save_strategy="no", report_to="none",
        logging_steps=training_args.logging_steps, disable_tqdm=training_args.disable_tqdm,
        ddp_timeout=training_args.ddp_timeout,
    )
    pretrain(PretrainScriptArguments(train_rollouts=[str(rollouts)],
                                     eval_rollouts=[str(eval_rollouts)] if eval_rollouts else None,
                                     trust_remote_code=training_args.trust_remote_code),
             config, ModelConfig(model_name_or_path=policy_path, dtype=model_args.dtype))
