"""Issue 21, item 5: the one-GPU recipe configs (recipes/configs/*_gpu.yaml) parse through the recipes' own
``TrlParser`` as shipped, their launch lines name files that exist, and each runs one step on the CPU with a tiny
random policy swapped in (no vLLM, no bf16, tiny lengths), so that a typo in a config cannot ship."""

import re
from pathlib import Path

import pytest
import yaml
from test_grpo_recipe import check_report, one_thread, tiny_args, tiny_policy_dir  # noqa: F401

from lenvm_rl.scripts.grpo import main, make_parser
from lenvm_rl.trainers import LengthAwareGRPOConfig, PPOConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"grpo": (REPO / "recipes" / "configs" / "grpo_gsm8k_gpu.yaml", LengthAwareGRPOConfig),
           "ppo": (REPO / "recipes" / "configs" / "ppo_gsm8k_gpu.yaml", PPOConfig)}
# on the CPU: no vLLM, float32, one step of one small rollout (tiny_args sets the rest: policy, data, lengths)
CPU_SAFE = ("--use_vllm", "false", "--dtype", "float32", "--max_steps", "1", "--gradient_accumulation_steps", "1",
            "--save_strategy", "no")
ONE_STEP = {"grpo": ("--per_device_train_batch_size", "4", "--num_generations", "2"),
            "ppo": ("--per_device_train_batch_size", "2", "--num_generations", "1", "--num_mini_batches", "2")}


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_gpu_config_parses_as_a_one_gpu_vllm_run(name):
    path, config_class = CONFIGS[name]
    raw = yaml.safe_load(path.read_text())
    assert raw["bf16"] is True and raw["dtype"] == "bfloat16"  # bf16 cannot be parsed on a CPU: read from the file
    # unknown keys are refused by the parser; --bf16 false only because this machine has no bf16 GPU
    script_args, training_args, model_args = make_parser(config_class).parse_args_and_config(
        ["--config", str(path), "--bf16", "false"])
    assert type(training_args) is config_class
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct" and model_args.dtype == "bfloat16"
    assert training_args.use_vllm and training_args.vllm_mode == "colocate" and not training_args.use_cpu
    assert script_args.lenvm == "auto" and script_args.dataset == "openai/gsm8k"
    assert training_args.length_estimator == "lenvm" and training_args.report_to == []
    assert training_args.generation_batch_size % training_args.num_generations == 0


@pytest.mark.parametrize("name", CONFIGS)
def test_launch_lines_name_files_that_exist(name):
    path, _ = CONFIGS[name]
    lines = [line for line in path.read_text().splitlines() if line.startswith("#")]
    text = " ".join(line.lstrip("# ").rstrip("\\ ") for line in lines)
    launches = re.findall(r"accelerate launch (.*?--config \S+)", text)
    assert len(launches) == 3  # one GPU, DDP, ZeRO-3
    for launch in launches:
        files = [word for word in launch.split() if word.endswith((".py", ".yaml"))]
        assert files and all((REPO / f).is_file() for f in files), launch
        assert f"--config {path.relative_to(REPO)}" in launch
    assert "unmeasured" in path.read_text()


@pytest.mark.parametrize("name", CONFIGS)
def test_gpu_config_runs_one_step_on_the_cpu_with_a_tiny_policy(name, tiny_policy_dir, tmp_path, capsys,  # noqa: F811
                                                               one_thread):  # noqa: F811
    path, config_class = CONFIGS[name]
    args = make_parser(config_class).parse_args_and_config(
        ["--config", str(path), *tiny_args(tiny_policy_dir, tmp_path / "run", tmp_path / "cache"), *CPU_SAFE,
         *ONE_STEP[name]])
    script_args, training_args, _ = args
    # what the config sets and the swap leaves alone reaches the run
    assert training_args.vllm_mode == "colocate" and training_args.temperature == 1.0
    assert training_args.length_coef == 0.1 and script_args.lenvm_auto_batch_size == 16
    if name == "ppo":
        assert training_args.task_critic == "head" and training_args.num_ppo_epochs == 2
    main(*args)
    out = capsys.readouterr().out
    assert "cached the LenVM" in out and ("== PPO:" in out) == (name == "ppo")
    check_report(tmp_path / "run")
