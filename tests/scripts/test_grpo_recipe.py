"""The length-aware GRPO recipe end to end on a tiny random policy: data, --lenvm auto and its cache, the
before/after table, one and two accelerate processes; and the shipped CPU config."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch, tiny_backbone

from lenvm_rl.scripts.grpo import (
    INSTRUCTION,
    GRPOScriptArguments,
    load_problems,
    main,
    make_parser,
)

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "grpo_gsm8k.py"
CPU_CONFIG = REPO / "recipes" / "configs" / "grpo_gsm8k_cpu.yaml"


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory, smollm2_tokenizer):
    """A random tiny Llama with the SmolLM2 tokenizer (its EOS, which is also its pad token)."""
    path = tmp_path_factory.mktemp("grpo-recipe") / "policy"
    model = tiny_backbone("llama", vocab_size=len(smollm2_tokenizer))
    model.generation_config.eos_token_id = smollm2_tokenizer.eos_token_id
    model.save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


def tiny_args(policy, out, cache, *extra):
    return ["--model_name_or_path", str(policy), "--dataset", "word-problems", "--train_limit", "8",
            "--eval_prompts", "2", "--eval_samples", "2", "--lenvm", "auto", "--lenvm_auto_prompts", "4",
            "--lenvm_auto_samples", "2", "--lenvm_auto_epochs", "1", "--lenvm_auto_cache_dir", str(cache),
            "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations",
            "2", "--max_completion_length", "8", "--learning_rate", "1e-3", "--use_cpu", "--bf16", "false",
            "--gradient_checkpointing", "false", "--report_to", "none", "--save_strategy", "no", "--logging_steps",
            "1", "--disable_tqdm", "true", *extra]


def check_report(out, num_prompts=2, num_completions=4):
    report = json.loads((out / "policy_eval.json").read_text())
    assert set(report["rows"]) == {"before", "after"}
    for row in report["rows"].values():
        assert (row["num_prompts"], row["num_completions"]) == (num_prompts, num_completions)
        # the random policy never ends within 8 tokens and never writes "#### N"
        assert row["mean_length"] == 8 and row["truncated_frac"] == 1 and row["accuracy"] == 0
        assert {"mean_length_se", "truncated_frac_se", "answer_rate_se", "accuracy_se"} <= set(row)
    return report


@pytest.fixture
def one_thread():
    """One torch thread for in-process runs: the tiny model gains nothing from more, and on a busy 2-core
    machine two threads competing with other jobs run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_main_end_to_end_then_reuses_the_cached_lenvm(tiny_policy_dir, tmp_path, capsys, one_thread):
    cache = tmp_path / "cache"
    report = main(*make_parser().parse_args_and_config(tiny_args(tiny_policy_dir, tmp_path / "run1", cache)))
    first = capsys.readouterr().out
    assert "[lenvm auto] sampling 4 training prompts x 2" in first and "cached the LenVM" in first
    assert "before" in first and "after" in first and "mean length" in first  # the printed table
    check_report(tmp_path / "run1")
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    assert report["lenvm"] == str(folder / "lenvm")
    # the LenVM's prediction of the "before" samples, beside the constant of its own rollouts (all cut at 8 tokens)
    assert f"== the LenVM {folder / 'lenvm'} on the held-out samples" in first
    assert "2 prompts / 4 completions / 4 censored" in first and "constant baseline" in first
    assert list(report["lenvm_rows"]) == ["LenVM", "constant baseline"]
    assert report["lenvm_rows"]["LenVM"]["num_completions"] == 4 and report["lenvm_rows"]["LenVM"]["prompt_mre"] > 0
    assert len((folder / "rollouts.jsonl").read_text().splitlines()) == 8
    marker = json.loads((folder / "lenvm" / "lenvm_auto.json").read_text())
    assert marker["key"] == folder.name and marker["settings"]["samples"] == 2
    head = folder / "lenvm" / "value_head.safetensors"
    stamp = head.stat().st_mtime_ns
    (tmp_path / "run1" / "policy_eval.json").unlink()

    # Same settings: the cached LenVM is reused, nothing is sampled or pretrained again.
    main(*make_parser().parse_args_and_config(tiny_args(tiny_policy_dir, tmp_path / "run2", cache)))
    second = capsys.readouterr().out
    assert f"[lenvm auto] reusing the cached LenVM {folder / 'lenvm'}" in second
    assert "sampling" not in second and "pretraining" not in second
    assert head.stat().st_mtime_ns == stamp
    check_report(tmp_path / "run2")
    # Another setting that shapes the LenVM gets another cache entry. A LoRA policy is saved as an adapter, and
    # the "after" row samples it merged into its base.
    main(*make_parser().parse_args_and_config(tiny_args(tiny_policy_dir, tmp_path / "run3", cache,
                                                        "--lenvm_auto_samples", "3", "--use_peft", "--lora_r", "4",
                                                        "--lora_target_modules", "q_proj", "v_proj")))
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
    assert (tmp_path / "run3" / "adapter_config.json").is_file()
    check_report(tmp_path / "run3")
    # --eval_prompts 0: no evaluation, no table
    main(*make_parser().parse_args_and_config(tiny_args(tiny_policy_dir, tmp_path / "run4", cache,
                                                        "--eval_prompts", "0")))
    assert (tmp_path / "run4" / "model.safetensors").is_file()
    assert not (tmp_path / "run4" / "policy_eval.json").exists()


def launch(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(accelerate_launch(*args), capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, first_error(result.stderr)
    return result


def first_error(stderr: str) -> str:
    """The first traceback of a failed multi-process run (the rank that crashed), then the tail of its stderr."""
    start = stderr.find("Traceback (most recent call last)")
    first = stderr[start:start + 3000] if start >= 0 else ""
    return f"{first}\n...\n{stderr[-1500:]}"


@pytest.fixture(scope="module")
def ddp_run(tiny_policy_dir, tmp_path_factory):
    # On a CPU-only machine `--multi_gpu` starts two real (gloo) processes. Sampling runs on the main process,
    # LenVM pretraining and GRPO on both.
    path = tmp_path_factory.mktemp("grpo-ddp")
    result = launch("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", str(RECIPE),
                    *tiny_args(tiny_policy_dir, path / "out", path / "cache", "--per_device_train_batch_size", "2"))
    return result, path


def test_two_accelerate_processes_print_one_table(ddp_run):
    result, path = ddp_run
    assert result.stdout.count("held-out prompts / 4 completions") == 1  # printed by the main process only
    assert result.stdout.count("[lenvm auto] cached the LenVM") == 1
    assert "'num_tokens': '388'" in result.stdout  # 4 completions of 8 tokens + prompts per step: both processes
    check_report(path / "out")


def test_zero3_config_trains_with_a_whole_critic_and_evaluates_the_saved_policy(tiny_policy_dir, ddp_run):
    pytest.importorskip("deepspeed")
    _, path = ddp_run
    # The shipped ZeRO-3 config on two CPU processes (fp32). The LenVM is the one the DDP run cached: the critic
    # is loaded whole on each process, the policy partitioned, and the saved (gathered) policy is evaluated.
    result = launch("--config_file", str(REPO / "recipes" / "accelerate" / "zero3.yaml"), "--num_processes", "2",
                    "--mixed_precision", "no", str(RECIPE),
                    *tiny_args(tiny_policy_dir, path / "zero3", path / "cache", "--per_device_train_batch_size", "2"))
    assert "[lenvm auto] reusing the cached LenVM" in result.stdout
    assert result.stdout.count("held-out prompts / 4 completions") == 1
    check_report(path / "zero3")


def test_lenvm_auto_under_deepspeed_needs_a_cached_lenvm(tiny_policy_dir, tmp_path):
    args = make_parser().parse_args_and_config(tiny_args(tiny_policy_dir, tmp_path / "out", tmp_path / "cache"))
    args[1].deepspeed_plugin = object()  # what `accelerate launch --config_file zero3.yaml` sets up
    with pytest.raises(ValueError, match="cannot pretrain under DeepSpeed.*pass --lenvm PATH"):
        main(*args)


def test_shipped_cpu_config_parses():
    script_args, training_args, model_args = make_parser().parse_args_and_config(["--config", str(CPU_CONFIG)])
    assert script_args.dataset == "word-problems" and script_args.lenvm == "auto"
    assert script_args.reward_weights == [1.0, 0.5]
    assert model_args.model_name_or_path == "smollm2-135m"
    assert training_args.use_cpu and not training_args.bf16 and training_args.report_to == []
    assert training_args.logging_steps == 1 and training_args.length_estimator == "lenvm"
    assert training_args.generation_batch_size % training_args.num_generations == 0
    # the command line overrides the file
    script_args, training_args, _ = make_parser().parse_args_and_config(
        ["--config", str(CPU_CONFIG), "--max_steps", "3", "--dataset", "tests/data/gsm8k", "--train_limit", "5"])
    assert training_args.max_steps == 3 and script_args.dataset == "tests/data/gsm8k"


def test_the_cpu_config_samples_like_the_shipped_lenvm_unless_retrained():
    from lenvm_rl.lenvm_cache import PRETRAINED_DIR, pretrained_lenvm
    from lenvm_rl.scripts.grpo import lenvm_auto_settings

    args = make_parser().parse_args_and_config(["--config", str(CPU_CONFIG)])
    settings = lenvm_auto_settings(*args)
    assert not settings.retrain and (settings.temperature, settings.max_completion_length) == (0.7, 128)
    prompts = load_problems(args[0])[0]["prompt"]
    assert pretrained_lenvm(args[2].model_name_or_path, prompts, settings) == PRETRAINED_DIR / "smollm2-135m-gsm8k"
    args = make_parser().parse_args_and_config(["--config", str(CPU_CONFIG), "--lenvm_auto_retrain", "true"])
    assert lenvm_auto_settings(*args).retrain
    assert pretrained_lenvm(args[2].model_name_or_path, prompts, lenvm_auto_settings(*args)) is None


def test_help_lists_the_recipe_options():
    text = make_parser().format_help()
    for option in ("--dataset", "--eval_prompts", "--eval_samples", "--lenvm", "--lenvm_auto_prompts", "--lenvm_auto_retrain",
                   "--correctness_reward_weight", "--format_reward_weight", "--length_coef", "--model_name_or_path"):
        assert option in text


# ----------------------------------------------------------------------------- data and argument errors


def rows(n, start=0):
    return [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(start, n)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_problems_from_one_jsonl_file_hold_out_its_last_rows(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", rows(10))
    train, eval_prompts, eval_answers = load_problems(GRPOScriptArguments(dataset=str(path), eval_prompts=3,
                                                                          train_limit=4))
    assert train["answer"] == [r["answer"] for r in rows(4)]
    assert train["prompt"][0] == [{"role": "user", "content": f"What is 0 + 1?\n\n{INSTRUCTION}"}]
    assert eval_answers == [r["answer"] for r in rows(10, 7)]
    assert eval_prompts[0][0]["content"].startswith("What is 7 + 1?")
    with pytest.raises(ValueError, match="none left for training"):
        load_problems(GRPOScriptArguments(dataset=str(path), eval_prompts=10))


def test_problems_from_a_directory_of_splits(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(5))
    write_jsonl(tmp_path / "test.jsonl", rows(8, 5))
    train, eval_prompts, eval_answers = load_problems(GRPOScriptArguments(dataset=str(tmp_path), eval_prompts=2,
                                                                          instruction=""))
    assert len(train) == 5 and train["prompt"][4] == [{"role": "user", "content": "What is 4 + 1?"}]
    assert eval_answers == ["5 + 1 = 6\n#### 6", "6 + 1 = 7\n#### 7"]
    with pytest.raises(FileNotFoundError, match="--eval_split: .*validation.jsonl not found"):
        load_problems(GRPOScriptArguments(dataset=str(tmp_path), eval_split="validation"))
    with pytest.raises(ValueError, match="no column 'solution'.*set --answer_column"):
        load_problems(GRPOScriptArguments(dataset=str(tmp_path), answer_column="solution"))


def test_word_problems_train_and_held_out_sets_are_disjoint():
    train, eval_prompts, eval_answers = load_problems(GRPOScriptArguments(dataset="word-problems", train_limit=6,
                                                                          eval_prompts=3))
    assert len(train) == 6 and len(eval_prompts) == 3 and all("####" in a for a in eval_answers)
    assert not {p[0]["content"] for p in train["prompt"]} & {p[0]["content"] for p in eval_prompts}


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="word-problems"), "set --train_limit"),
    (dict(lenvm="no/such/dir"), "--lenvm no/such/dir: no such directory"),
    (dict(eval_samples=0), "--eval_samples must be >= 1"),
    (dict(correctness_reward_weight=0.0), "--correctness_reward_weight is 0"),
    (dict(eval_temperature=0.0), "--eval_temperature must be > 0"),
])
def test_bad_script_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GRPOScriptArguments(**kwargs)


@pytest.mark.parametrize("extra, message", [
    (["--reward_weights", "1.0", "1.0"], "set --correctness_reward_weight and --format_reward_weight instead"),
    (["--length_gate", "correct", "--length_correct_threshold", "0.5"], "set it to 1.5"),
    (["--length_gate", "pass_rate"], "--length_gate_max_reward 1.0 is not the largest task reward"),
    (["--top_k", "50"], "the LenVM would model another policy"),
])
def test_inconsistent_settings_fail_before_any_work(tiny_policy_dir, tmp_path, extra, message):
    args = make_parser().parse_args_and_config(tiny_args(tiny_policy_dir, tmp_path / "out", tmp_path / "cache",
                                                         *extra))
    with pytest.raises(ValueError, match=message):
        main(*args)
    assert not (tmp_path / "cache").exists()
