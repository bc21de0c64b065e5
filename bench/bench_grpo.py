"""Length-aware GRPO on SmolLM2-135M-Instruct: the critic's overhead, and the RL comparison of the estimators.

    python bench/bench_grpo.py overhead --steps 4 --rounds 2
    python bench/bench_grpo.py train --lenvm LENVM_DIR --output-dir bench/results/grpo   # resumable, hours
    python bench/bench_grpo.py evaluate --output-dir bench/results/grpo                  # held-out samples
    python bench/bench_grpo.py report --output-dir bench/results/grpo                    # table + PNG
    # issue 19, all of it in bash bench/grpo_compare.sh: seeds 0-2, the group twin also at s = 2.0, the gate at seed 0
    python bench/bench_grpo.py report --arms plain,group,lenvm,group_s2.0,lenvm_pass_rate --seeds 0,1,2
    # PPO with the LenVMCritic (s > 0), the same critic at s = 0, and the sequence-level twin (issue 10):
    python bench/bench_grpo.py train --lenvm LENVM_DIR --output-dir bench/results/ppo \
        --arms ppo_lenvm,ppo_lenvm_s0,ppo_group --steps 16 --chunk 8
    python bench/bench_grpo.py evaluate --output-dir bench/results/ppo --arms ppo_lenvm,ppo_lenvm_s0,ppo_group
    #   (--backend vllm, from the vLLM environment, samples with vLLM: float32, eager; how the PPO table was made)
    python bench/bench_grpo.py report --output-dir bench/results/ppo --arms ppo_lenvm,ppo_lenvm_s0,ppo_group \
        --plot docs/ppo_compare.png

``overhead`` trains plain ``trl.GRPOTrainer`` and ``LengthAwareGRPOTrainer`` (``length_estimator="lenvm"``,
a LenVM on the policy's own backbone, so a critic the policy's size) with the same config, seed and
data, alternating rounds of ``--steps`` steps in one process. It prints the median step time of each
(the first step of every round is a warm-up and is dropped), the median time inside
``_generate_and_score_completions`` (where the critic runs), the time of the critic call itself,
and the ratios. The learning rate is tiny so that both arms keep sampling the same policy: the
step time then differs by the critic's work, not by what the policies happen to generate. ``--device`` (default
``auto``: CUDA when available) and ``--dtype`` (default float32: the policy's and the critic's weights) set where
and in what it runs; it prints the device and the library versions first, and its timers wait for the GPU.

Every command reads GSM8K from ``--data``: the Hub's ``openai/gsm8k`` by default, or a local copy (a directory of
``train.jsonl`` and ``test.jsonl``). Training takes the first ``--train-prompts`` train rows, the held-out
samples the first ``--eval-prompts`` test rows.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

GSM8K = "openai/gsm8k"  # --data's default: the Hub's GSM8K, configuration main
DATA_HELP = ("GSM8K: a Hub dataset id (configuration main), a directory of train.jsonl and test.jsonl, or one .jsonl "
             "file (lenvm_rl.data.load_math_problems); default: %(default)s")


def timed_scoring(trainer_class, device: str):
    """A subclass that records the wall time of every ``_generate_and_score_completions`` call on ``device``."""
    from lenvm_rl.benchmarking import timed

    class Timed(trainer_class):
        score_times: list[float] = []

        def _generate_and_score_completions(self, inputs):
            output = []
            parent = super(Timed, self)._generate_and_score_completions
            self.score_times.append(timed(lambda: output.append(parent(inputs)), device))
            return output[0]

    Timed.score_times = []
    return Timed


def overhead(args) -> None:
    import torch
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from lenvm_rl import LengthAwareGRPOConfig, LengthAwareGRPOTrainer, LenVM, LenVMCritic
    from lenvm_rl.benchmarking import environment_header, timed
    from lenvm_rl.modeling import load_backbone, resolve_model_path
    from lenvm_rl.rewards import gsm8k_format_reward

    torch.set_num_threads(args.threads)
    print(environment_header(args.device, args.dtype), flush=True)
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset, _, _ = gsm8k_problems(args.data, 64, 0)
    common = dict(per_device_train_batch_size=args.prompts * args.num_generations, num_generations=args.num_generations,
                  max_completion_length=args.max_completion_length, learning_rate=1e-9, logging_steps=1,
                  report_to="none", save_strategy="no", use_cpu=args.device == "cpu", bf16=False, seed=0,
                  temperature=0.7, disable_tqdm=True, max_steps=args.steps)
    # the weights in --dtype (no mixed precision: bf16=False); the trainer moves the critic to its device
    critic = LenVMCritic(LenVM.from_backbone(args.model, gamma=0.99, dtype=args.dtype),
                         batch_size=args.critic_batch_size)
    critic_times = []
    original_call = LenVMCritic.__call__

    def timed_call(self, *a, **k):
        out = []
        critic_times.append(timed(lambda: out.append(original_call(self, *a, **k)), args.device))
        return out[0]

    LenVMCritic.__call__ = timed_call
    arms = {"GRPOTrainer": (timed_scoring(GRPOTrainer, args.device), GRPOConfig, {}),
            "LengthAwareGRPOTrainer (lenvm)": (timed_scoring(LengthAwareGRPOTrainer, args.device),
                                               LengthAwareGRPOConfig, {"length_critic": critic})}
    step_times = {name: [] for name in arms}
    score_times = {name: [] for name in arms}
    for round_index in range(args.rounds):
        for name, (trainer_class, config_class, extra) in arms.items():
            config = config_class(output_dir=f"/tmp/bench-grpo-{round_index}", **common)
            trainer = trainer_class(load_backbone(args.model, dtype=args.dtype), reward_funcs=gsm8k_format_reward,
                                    args=config, train_dataset=dataset, processing_class=tokenizer, **extra)
            trainer.train()
            steps = [e["step_time"] for e in trainer.state.log_history if "step_time" in e]
            step_times[name] += steps[1:]
            score_times[name] += trainer.score_times[1:]
            print(f"round {round_index} {name}: step times {[round(s, 1) for s in steps]} s", flush=True)
    LenVMCritic.__call__ = original_call

    base = "GRPOTrainer"
    print(f"\nSmolLM2-135M-Instruct policy and LenVM, {args.prompts} prompts x {args.num_generations} completions, "
          f"max {args.max_completion_length} tokens, HF generate, {args.device}, {args.dtype}, {args.threads} "
          f"threads; median over {len(step_times[base])} steps per arm ({args.rounds} rounds of {args.steps}, "
          "first step of each dropped)")
    print("| trainer | step time (s) | ratio | generate + score (s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in arms:
        step, score = statistics.median(step_times[name]), statistics.median(score_times[name])
        print(f"| {name} | {step:.1f} | {step / statistics.median(step_times[base]):.3f} | {score:.1f} | "
              f"{score / statistics.median(score_times[base]):.3f} |")
    print(f"LenVM critic call: median {statistics.median(critic_times):.2f} s per step "
          f"({statistics.median(critic_times) / statistics.median(step_times[base]):.1%} of a plain GRPO step)")


# ----------------------------------------------------------------------------- RL comparison

ARMS = {
    "plain": dict(length_estimator="none"),
    "group": dict(length_estimator="group"),
    "lenvm": dict(length_estimator="lenvm"),
    "lenvm_pass_rate": dict(length_estimator="lenvm", length_gate="pass_rate"),
}
PPO_ARMS = {
    "ppo_lenvm": dict(length_estimator="lenvm"),
    "ppo_lenvm_s0": dict(length_estimator="lenvm", length_coef=0.0),
    "ppo_group": dict(length_estimator="group"),
}
"""PPO arms (``--arms ppo_lenvm,ppo_lenvm_s0,ppo_group``): the LenVMCritic as value model with a task head on its
frozen trunk in every arm; they differ in the length term only. A PPO step is one optimizer step on a mini-batch:
each rollout (``--prompts`` x ``--num-generations``) is used for 2 epochs of 2 mini-batches, so a PPO arm samples
a rollout every 4 steps where a GRPO arm samples one every step."""
REWARD_WEIGHTS = [1.0, 0.5]  # gsm8k_correctness_reward, gsm8k_format_reward: r_max = 1.5


def arm_settings(arm: str) -> dict:
    """An arm's config overrides: a name of ARMS or PPO_ARMS, or ``NAME_sX``: that arm with ``length_coef = X``."""
    if arm in ARMS or arm in PPO_ARMS:
        return {**ARMS.get(arm, {}), **PPO_ARMS.get(arm, {})}
    base, _, coef = arm.rpartition("_s")
    if (base in ARMS or base in PPO_ARMS) and coef:
        try:
            return {**arm_settings(base), "length_coef": float(coef)}
        except ValueError:
            pass
    raise ValueError(f"unknown arm {arm!r}: use one of {', '.join([*ARMS, *PPO_ARMS])}, or NAME_sX for NAME at "
                     "length_coef X")


def arm_coef(arm: str, default: float) -> float:
    """An arm's length coefficient ``s``: its ``_sX``, else ``default``; plain GRPO is any estimator at ``s = 0``."""
    settings = arm_settings(arm)
    return 0.0 if settings.get("length_estimator") == "none" else settings.get("length_coef", default)


def estimator_arms(arms, estimator: str) -> list[str]:
    """The arms of ``arms`` that run ``estimator`` (an arm of ARMS) at any ``s``: itself and its ``_sX`` arms."""
    return [arm for arm in arms if arm == estimator or arm.startswith(estimator + "_s")]


def run_names(arms: str, seeds: str) -> list[str]:
    """One run per arm and training seed: ``ARM-seedN`` (its folder under --output-dir and its eval file)."""
    return [f"{arm}-seed{int(seed)}" for arm in arms.split(",") for seed in seeds.split(",")]


def train(args) -> None:
    """Train every arm at every seed, one run after the other, resuming each from its last checkpoint.

    All runs share the policy, data order (``data_seed``), steps, length coefficient and LenVM; an arm differs
    only in the length estimator, gate or coefficient (and, for the PPO arms, the algorithm). The training seed
    (``seed``) changes generation sampling, the initialisation of anything random (PPO's task head) and dropout;
    the data order stays ``--data-seed``'s. Every arm gets the LenVM critic, for its logged length metrics.
    """
    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint

    from lenvm_rl import LengthAwareGRPOConfig, LengthAwareGRPOTrainer, LenVMCritic, PPOConfig, PPOTrainer
    from lenvm_rl.modeling import load_backbone, resolve_model_path
    from lenvm_rl.rewards import gsm8k_correctness_reward, gsm8k_format_reward

    out = Path(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    dataset, _, _ = gsm8k_problems(args.data, args.train_prompts, 0)
    runs = run_names(args.arms, args.seeds)
    for arm in args.arms.split(","):
        arm_settings(arm)
    clash = [run for run in runs if (out / run).resolve() == Path(args.lenvm).resolve()]
    if clash:
        raise ValueError(f"--lenvm {args.lenvm} is the output directory of run {clash[0]!r}; keep the critic elsewhere")
    for run in runs:
        arm, _, seed = run.rpartition("-seed")
        run_dir = out / run
        if (run_dir / "final").is_dir():
            print(f"== {run}: done", flush=True)
            continue
        last = get_last_checkpoint(run_dir) if run_dir.is_dir() else None
        shared = dict(
            output_dir=str(run_dir), num_generations=args.num_generations,
            max_completion_length=args.max_completion_length, temperature=args.temperature,
            learning_rate=args.learning_rate, max_steps=args.steps, seed=int(seed), data_seed=args.data_seed,
            logging_steps=1, save_strategy="steps", save_steps=args.chunk, save_total_limit=2, use_cpu=True,
            bf16=False,
            report_to="none", reward_weights=REWARD_WEIGHTS, length_coef=args.length_coef,
            length_gate_max_reward=sum(REWARD_WEIGHTS))
        critic = LenVMCritic(args.lenvm, batch_size=args.critic_batch_size)
        rewards = [gsm8k_correctness_reward, gsm8k_format_reward]
        print(f"== {run}: from {Path(last).name if last else 'the start'} to step {args.steps}", flush=True)
        if arm.startswith("ppo_"):
            config = PPOConfig(**{**shared, **arm_settings(arm)}, num_mini_batches=2, num_ppo_epochs=2,
                               per_device_train_batch_size=args.prompts * args.num_generations // 2,
                               task_critic="head", critic_learning_rate=1e-3, kl_coef=0.05)
            trainer = PPOTrainer(load_backbone(args.model), reward_funcs=rewards, args=config,
                                 train_dataset=dataset, processing_class=tokenizer, value_model=critic)
        else:
            config = LengthAwareGRPOConfig(**{**shared, **arm_settings(arm)},
                                           per_device_train_batch_size=args.prompts * args.num_generations)
            trainer = LengthAwareGRPOTrainer(load_backbone(args.model), reward_funcs=rewards, args=config,
                                             train_dataset=dataset, processing_class=tokenizer,
                                             length_critic=critic)
        trainer.train(resume_from_checkpoint=last)
        trainer.save_model(str(run_dir / "final"))
        del trainer


def gsm8k_problems(data: str, train_prompts: int, eval_prompts: int):
    """The recipe's loader on GSM8K (``data``: ``--data``), with the bare questions as prompts (no instruction):
    the prompts of the committed rollouts the LenVM was pretrained on. Returns (train dataset, eval prompts,
    answers): the first ``train_prompts`` train rows and the first ``eval_prompts`` test rows."""
    from lenvm_rl.scripts.grpo import GRPOScriptArguments, load_problems

    return load_problems(GRPOScriptArguments(dataset=str(data), train_limit=train_prompts,
                                             eval_prompts=eval_prompts, instruction=""))


def evaluate(args) -> None:
    """Sample the base policy and every finished arm on the held-out questions (resumable, one file each)."""
    from transformers import AutoTokenizer

    from lenvm_rl.data import RolloutConfig, sample_rollouts, vllm_engine
    from lenvm_rl.modeling import load_backbone, resolve_model_path

    out = Path(args.output_dir)
    _, prompts, _ = gsm8k_problems(args.data, 1, args.eval_prompts)  # train_limit must be >= 1; unused
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    config = RolloutConfig(num_completions=args.eval_samples, temperature=args.temperature,
                           max_new_tokens=args.max_completion_length, batch_size=args.batch_size, backend=args.backend)
    policies = {"base": resolve_model_path(args.model)}
    policies.update({run: str(out / run / "final") for run in run_names(args.arms, args.seeds)
                     if (out / run / "final").is_dir()})
    for name, path in policies.items():
        output = out / "eval" / f"{name}.jsonl"
        if output.is_file() and len(output.read_text().splitlines()) >= len(prompts) * args.eval_samples:
            print(f"== held-out samples of {name}: {output} is complete", flush=True)
            continue
        print(f"== held-out samples of {name} ({path})", flush=True)
        if args.backend == "hf":
            model = load_backbone(path).eval()
        else:  # the settings of bench/rollouts/sample_issue9.sh: float32, eager (torch.compile fails on these CPUs)
            model = vllm_engine(path, dtype="float32", seed=config.seed, enforce_eager=True, max_model_len=1024)
        sample_rollouts(model, tokenizer, prompts, output, config, model_name=path)
        del model


def report(args) -> None:
    """The held-out tables and the training curves (PNG), of one seed or over several (--seeds 0,1,2).

    One seed: mean ± SE over prompts per arm, every paired difference, step times, and length and reward against
    step (--plot). Several: :func:`lenvm_rl.rl_report.seed_report`: per arm the mean over seeds with the
    between-seed SE and the within-run prompt SE; lenvm − group and lenvm − plain per seed and over seeds; lenvm
    against the group twin interpolated to its length (when two group arms are given, e.g. group and
    group_s1.0); a verdict; and length and answer rate against step with held-out answer rate against length
    (--seeds-plot).
    """
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if len(seeds) == 1:
        single_seed_report(args, seeds[0])
    else:
        seeds_report(args, seeds)


def held_out(args):
    """The held-out gold answers and the tokenizer that decodes the samples."""
    from transformers import AutoTokenizer

    from lenvm_rl.modeling import resolve_model_path

    _, _, answers = gsm8k_problems(args.data, 1, args.eval_prompts)  # train_limit must be >= 1; unused
    return answers, AutoTokenizer.from_pretrained(resolve_model_path(args.model))


def single_seed_report(args, seed: int) -> None:
    """The report of one seed's runs, each shown under its arm's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lenvm_rl.data import read_rollouts
    from lenvm_rl.evaluation import evaluate_policy, format_policy_table, paired_policy_difference, policy_prompt_means
    from lenvm_rl.rl_report import LENGTH_KEY, read_log_history, run_name

    out = Path(args.output_dir)
    arms = args.arms.split(",")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    step_times = {}
    for arm in arms:
        try:
            history = read_log_history(out / run_name(arm, seed))
        except FileNotFoundError:
            continue
        rows = [e for e in history if LENGTH_KEY in e]
        for ax, key in zip(axes, (LENGTH_KEY, "reward")):
            ax.plot([e["step"] for e in rows], [e[key] for e in rows], label=arm)
        step_times[arm] = [e["step_time"] for e in history if "step_time" in e]
        print(f"{arm}: {rows[-1]['step']} steps logged ({run_name(arm, seed)})")
    if step_times:  # mean, not median: a PPO arm samples on one optimizer step in four
        first = next(iter(step_times))
        base = statistics.mean(step_times[first])
        print(f"| arm | mean step time (s) | ratio to {first} |\n|---|---:|---:|")
        for arm, times in step_times.items():
            print(f"| {arm} | {statistics.mean(times):.1f} | {statistics.mean(times) / base:.2f} |")
    for ax, title in zip(axes, ("mean completion length (tokens)", "task reward (correct + 0.5 format)")):
        ax.set_xlabel("PPO step (one mini-batch)" if set(arms) & set(PPO_ARMS) else "GRPO step")
        ax.set_title(title)
        ax.legend()
    figure.tight_layout()
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")

    answers, tokenizer = held_out(args)
    files = {name: out / "eval" / f"{file}.jsonl"
             for name, file in [("base", "base"), *((arm, run_name(arm, seed)) for arm in arms)]}
    records = {name: read_rollouts(path) for name, path in files.items() if path.is_file()}
    if records:
        print(format_policy_table({name: evaluate_policy(recs, answers, tokenizer) for name, recs in records.items()}))
    means = {name: policy_prompt_means(recs, answers, tokenizer) for name, recs in records.items()}
    trained = [arm for arm in arms if arm in means]
    if len(trained) > 1:
        print("\npaired differences on the same held-out prompts (later arm minus earlier arm; mean ± SE over prompts)")
        print(f"{'difference':<36} {'mean length':>13} {'truncated':>15} {'answer rate':>15} {'accuracy':>15}")
        for j, a in enumerate(trained):
            for b in trained[:j]:
                diff = paired_policy_difference(means[a], means[b])
                cells = [f"{diff['mean_length'][0]:+.1f} ± {diff['mean_length'][1]:.1f}"]
                cells += [f"{diff[k][0]:+.1%} ± {diff[k][1]:.1%}"
                          for k in ("truncated_frac", "answer_rate", "accuracy")]
                print(f"{a + ' - ' + b:<36} " + " ".join(f"{c:>15}" if i else f"{c:>13}" for i, c in enumerate(cells)))


def matched_sides(args, arms: list[str], twins: list[str]):
    """``--matched TARGET:TWIN`` as :func:`lenvm_rl.rl_report.seed_report` takes it: a side naming several arms
    (``A,B,...``) becomes ``{arm: length_coef}``, plain GRPO at ``s = 0``. Default: lenvm against the group twin
    when it ran at two coefficients."""
    def side(arms: list[str]):
        return arms[0] if len(arms) == 1 else {arm: arm_coef(arm, args.length_coef) for arm in arms}

    if args.matched is None:
        return ("lenvm", side(twins)) if "lenvm" in arms and len(twins) == 2 else None
    sides = args.matched.split(":")
    if len(sides) != 2 or not all(sides):
        raise SystemExit(f"--matched {args.matched!r}: expected TARGET:TWIN, e.g. lenvm:group,group_s2.0")
    return tuple(side(s.split(",")) for s in sides)


def seeds_report(args, seeds: list[int]) -> None:
    """The report over several seeds (:mod:`lenvm_rl.rl_report`): tables, verdict and --seeds-plot."""
    from lenvm_rl.rl_report import (
        dominance,
        format_matched,
        format_seed_differences,
        format_seed_table,
        seed_report,
        verdict,
    )

    arms = args.arms.split(",")
    answers, tokenizer = held_out(args)
    twins = estimator_arms(arms, "group")
    pairs = [(a, b) for a, b in (("lenvm", "group"), ("lenvm", "plain"), *(("lenvm", t) for t in twins if t != "group"))
             if a in arms and b in arms]
    matched = matched_sides(args, arms, twins)
    result = seed_report(args.output_dir, arms, seeds, answers, tokenizer, pairs=pairs, matched=matched)
    print(f"held out: the first {len(answers)} GSM8K test questions; each cell: mean over seeds ± between-seed SE "
          "(within-run SE over prompts, pooled over seeds)")
    print(format_seed_table(result))
    if result.missing:
        print(f"no complete held-out samples (not trained or not evaluated): {', '.join(result.missing)}")
    print("\npaired differences: per seed ± SE over prompts (paired by prompt); then mean ± SE over seeds")
    print(format_seed_differences(result))
    print(format_matched(result))
    print(verdict(result))
    print("\n".join(dominance(result)))
    if args.seeds_plot:
        plot_seeds(args, arms, seeds, result)


def plot_seeds(args, arms: list[str], seeds: list[int], result) -> None:
    """Left: training length and answer rate against step, mean ± SE band over seeds per arm; right: held-out
    answer rate against mean length, error bars the between-seed SE in both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lenvm_rl.rl_report import ANSWER_KEY, LENGTH_KEY, training_band

    figure = plt.figure(figsize=(12, 6))
    grid = figure.add_gridspec(2, 2)
    curves = {LENGTH_KEY: figure.add_subplot(grid[0, 0]), ANSWER_KEY: figure.add_subplot(grid[1, 0])}
    right = figure.add_subplot(grid[:, 1])
    colors = {arm: f"C{i}" for i, arm in enumerate(arms)}

    def label(arm: str, n: int) -> str:
        return f"{arm} ({n} seed{'s' * (n > 1)})"

    for arm in arms:
        for key, ax in curves.items():
            band = training_band(args.output_dir, arm, seeds, key)
            if band is None:
                continue
            steps, mean, se, used = band
            scale = 100 if key == ANSWER_KEY else 1
            ax.plot(steps, scale * mean, color=colors[arm], label=label(arm, len(used)))
            if len(used) > 1:
                ax.fill_between(steps, scale * (mean - se), scale * (mean + se), color=colors[arm], alpha=0.2)
    for ax, title in zip(curves.values(), ("training: mean completion length (tokens)",
                                           "training: answer rate (%, format reward)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO step (one mini-batch)" if set(arms) & set(PPO_ARMS) else "GRPO step")
    curves[LENGTH_KEY].legend(fontsize=8)
    for arm, summary in result.arms.items():
        xerr, yerr = (0.0 if math.isnan(e) else e for e in (summary.seed_se["mean_length"],
                                                          100 * summary.seed_se["answer_rate"]))
        right.errorbar(summary.mean["mean_length"], 100 * summary.mean["answer_rate"], xerr=xerr, yerr=yerr,
                       fmt="o", capsize=3, color=colors[arm], label=label(arm, len(summary.seeds)))
    for family in ("group", "lenvm"):  # one estimator at several s: a dashed line in the order of s
        points = sorted([(arm_coef(arm, args.length_coef), result.arms[arm].mean)
                         for arm in estimator_arms(result.arms, family)], key=lambda point: point[0])
        if len(points) > 1:
            right.plot([m["mean_length"] for _, m in points], [100 * m["answer_rate"] for _, m in points], "--",
                       color="gray", linewidth=0.8, zorder=0)
    if result.base is not None:
        right.plot(result.base.mean_length, 100 * result.base.answer_rate, "s", color="gray", label="base")
    right.set_xlabel("held-out mean length (tokens)")
    right.set_ylabel("held-out answer rate (%)")
    right.set_title("held out: mean ± between-seed SE", fontsize=10)
    right.legend(fontsize=8)
    figure.tight_layout()
    Path(args.seeds_plot).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.seeds_plot, dpi=120)
    print(f"wrote {args.seeds_plot}")


def main(argv: list[str] | None = None) -> None:
    from lenvm_rl.benchmarking import add_device_arguments, resolve_device_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("overhead", help="step time of LengthAwareGRPOTrainer vs GRPOTrainer")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=GSM8K, help=DATA_HELP)
    p.add_argument("--steps", type=int, default=4, help="steps per round (the first is dropped as warm-up)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=128)
    p.add_argument("--critic-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    add_device_arguments(p)
    p.set_defaults(func=overhead)
    p = sub.add_parser("train", help="the RL comparison: every arm, round-robin, resumable")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=GSM8K, help=DATA_HELP)
    p.add_argument("--lenvm", required=True, help="LenVM checkpoint pretrained on the policy's own rollouts")
    p.add_argument("--output-dir", default="bench/results/grpo")
    p.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join([*ARMS, *PPO_ARMS])}, or NAME_sX")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--chunk", type=int, default=4, help="the checkpoint interval in steps")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=192)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--length-coef", type=float, default=0.5)
    p.add_argument("--train-prompts", type=int, default=200)
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated: one run per arm and seed")
    p.add_argument("--data-seed", type=int, default=0, help="the prompt order's seed, shared by every run")
    p.add_argument("--critic-batch-size", type=int, default=8)
    p.set_defaults(func=train)
    for name, func in (("evaluate", evaluate), ("report", report)):
        p = sub.add_parser(name, help=func.__doc__.splitlines()[0])
        p.add_argument("--model", default="smollm2-135m")
        p.add_argument("--data", default=GSM8K, help=DATA_HELP)
        p.add_argument("--output-dir", default="bench/results/grpo")
        p.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join([*ARMS, *PPO_ARMS])}, or NAME_sX")
        p.add_argument("--seeds", default="0", help="training seeds, comma-separated (report: several give the "
                       "seed means, paired differences per seed and the matched-length comparison)")
        p.add_argument("--eval-prompts", type=int, default=50, help="the first N GSM8K test questions")
        p.add_argument("--eval-samples", type=int, default=4)
        p.add_argument("--temperature", type=float, default=0.7)
        p.add_argument("--max-completion-length", type=int, default=192)
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--backend", default="hf", choices=["hf", "vllm"])
        p.add_argument("--plot", default=None,
                       help="report, one seed: where the PNG goes (none without it; bench/grpo_compare.sh passes "
                            "docs/grpo_compare.png)")
        if name == "report":
            p.add_argument("--seeds-plot", default=None,
                           help="report, several seeds: the PNG (none without it; bench/grpo_compare.sh passes "
                                "docs/grpo_seeds.png)")
            p.add_argument("--length-coef", type=float, default=0.5,
                           help="the length_coef of an arm without _sX (train's --length-coef): the twin's point")
            p.add_argument("--matched", default=None,
                           help="several seeds: TARGET:TWIN, one side an arm and the other the arms 'A,B,...' of one "
                                "estimator at several length coefficients (plain: s = 0), interpolated in s to the "
                                "arm's length, e.g. lenvm:group,group_s2.0 (the default when those two group arms "
                                "are given) or plain,lenvm_s0.25,lenvm:group_s4.0")
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    if args.command == "overhead":
        resolve_device_arguments(args)
    args.func(args)


if __name__ == "__main__":
    main()
