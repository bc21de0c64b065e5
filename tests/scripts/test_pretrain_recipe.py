"""The pretraining recipe end to end: real files, real accelerate multi-process runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch, tiny_backbone
from safetensors.torch import load_file
from transformers import TrainingArguments

from lenvm_rl import LenVM

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "pretrain_lenvm.py"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, smollm2_tokenizer):
    sys.path.insert(0, str(REPO / "tests" / "trainers"))
    from test_lenvm_trainer import synthetic_records

    path = tmp_path_factory.mktemp("recipe")
    tiny_backbone("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(path / "backbone")
    smollm2_tokenizer.save_pretrained(path / "backbone")
    for name, records in (("train", synthetic_records(16)), ("eval", synthetic_records(8, seed=1))):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def recipe_args(workdir, out, *extra):
    return [str(RECIPE), "--model_name_or_path", str(workdir / "backbone"), "--train_rollouts",
            str(workdir / "train.jsonl"), "--eval_rollouts", str(workdir / "eval.jsonl"), "--output_dir", str(out),
            "--max_steps", "3", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--use_cpu",
            "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true", *extra]


def run(cmd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ddp_run(workdir):
    # On a CPU-only machine `--multi_gpu` starts real processes (torchrun, gloo backend); `--cpu` alone
    # runs a single process whatever --num_processes says (accelerate 1.15).
    out = workdir / "ddp"
    result = run(accelerate_launch("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
                                   "no", "--dynamo_backend", "no", *recipe_args(workdir, out, "--gamma", "0.8")))
    return result, out


def test_accelerate_two_processes_write_a_reference_checkpoint_and_a_report(ddp_run):
    result, out = ddp_run
    # 16 examples, 2 per process and step: a quarter epoch per step only if both processes trained.
    first_log = next(line for line in result.stdout.splitlines() if "'loss'" in line)
    assert "'epoch': '0.25'" in first_log, first_log
    assert sorted(load_file(out / "value_head.safetensors")) == [
        "v_head.fc.bias", "v_head.fc.weight", "v_head.summary.bias", "v_head.summary.weight"]
    model = LenVM.from_pretrained(out)
    assert model.gamma == 0.8
    report = json.loads((out / "eval_report.json").read_text())
    assert set(report) == {"LenVM", "constant baseline"}
    assert report["LenVM"]["num_completions"] == 8 and report["LenVM"]["num_censored"] == 0
    state = json.loads((out / "trainer_state.json").read_text()) if (out / "trainer_state.json").exists() else None
    assert state is None or state["global_step"] == 3


def test_zero3_recipe_config_trains_exactly_like_ddp_and_saves_whole_weights(workdir, ddp_run):
    pytest.importorskip("deepspeed")
    ddp_result, ddp_out = ddp_run
    out = workdir / "zero3"
    # The shipped ZeRO-3 config, on two CPU processes (DeepSpeed's CPU accelerator, gloo), in fp32.
    result = run(accelerate_launch("--config_file", str(REPO / "recipes" / "accelerate" / "zero3.yaml"),
                                   "--num_processes", "2", "--mixed_precision", "no",
                                   *recipe_args(workdir, out, "--gamma", "0.8")))
    logs = [line for line in result.stdout.splitlines() if "'loss'" in line]
    assert logs == [line for line in ddp_result.stdout.splitlines() if "'loss'" in line] and len(logs) == 3
    # Parameters sharded across the two processes are gathered into whole tensors on save.
    for name in ("value_head.safetensors", "model.safetensors"):
        zero3, ddp = load_file(out / name), load_file(ddp_out / name)
        assert sorted(zero3) == sorted(ddp)
        for key in ddp:
            assert zero3[key].shape == ddp[key].shape
            torch.testing.assert_close(zero3[key], ddp[key], rtol=0, atol=1e-6)
    assert json.loads((out / "eval_report.json").read_text())["LenVM"]["num_completions"] == 8


# transformers 5.19 and older (the newest that vLLM allows) name it gradient checkpointing
CHECKPOINTING_FLAG = ("--activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                      else "--gradient_checkpointing")


def test_single_process_lora_with_activation_checkpointing_and_derived_gamma(workdir):
    out = workdir / "lora"
    result = run([sys.executable, *recipe_args(workdir, out, "--use_peft", "--lora_r", "4", "--lora_target_modules",
                                             "q_proj", "v_proj", CHECKPOINTING_FLAG)])
    assert "constant baseline" in result.stdout
    assert (out / "adapter_config.json").is_file() and (out / "value_head.safetensors").is_file()
    # gamma from the 99th-percentile length of the training completions (2 and 12 tokens)
    assert LenVM.from_pretrained(out).gamma == pytest.approx(0.01 ** (1 / 12), rel=1e-6)


def test_pretraining_is_a_library_function(workdir):
    from trl import ModelConfig

    from lenvm_rl.pretraining import pretrain_lenvm
    from lenvm_rl.trainers import LenVMConfig

    out, backbone = workdir / "library", ModelConfig(model_name_or_path=str(workdir / "backbone"))
    options = dict(max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, use_cpu=True, report_to="none",
                   save_strategy="no", disable_tqdm=True, freeze_backbone=True)
    report = pretrain_lenvm([str(workdir / "train.jsonl")], LenVMConfig(output_dir=str(out), **options), backbone,
                            eval_rollouts=[str(workdir / "eval.jsonl")], gamma=0.8)
    assert set(report) == {"LenVM", "constant baseline"} and report["LenVM"]["num_completions"] == 8
    assert LenVM.from_pretrained(out).gamma == 0.8 and (out / "eval_report.json").is_file()
    # without held-out rollouts: no report, gamma from the training lengths
    assert pretrain_lenvm([str(workdir / "train.jsonl")], LenVMConfig(output_dir=str(out / "2"), **options),
                          backbone) == {}
    assert LenVM.from_pretrained(out / "2").gamma == pytest.approx(0.01 ** (1 / 12), rel=1e-6)


def test_the_library_never_imports_its_entry_points():
    # lenvm_rl.scripts, lenvm_rl.commands and lenvm_rl.cli (and lenvm_rl.benchmarking, the bench scripts' options)
    # parse arguments and call the library, never the reverse
    import ast

    package = REPO / "lenvm_rl"
    entry_points = ("lenvm_rl.scripts", "lenvm_rl.commands", "lenvm_rl.cli", "lenvm_rl.__main__",
                    "lenvm_rl.benchmarking")
    arrows = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if module.startswith(entry_points):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            arrows += [f"{module} -> {name}" for name in names if name.startswith(entry_points)]
    assert not arrows, arrows


def test_help_explains_every_option():
    result = run([sys.executable, str(RECIPE), "--help"])
    for option in ("--train_rollouts", "--eval_rollouts", "--gamma", "--loss_type", "--lam", "--censored",
                   "--freeze_backbone", "--use_peft", "--model_name_or_path"):
        assert option in result.stdout
