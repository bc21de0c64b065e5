import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from lenvm_rl.cli import main


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lenvm_rl", *args], capture_output=True, text=True, env=env, timeout=300)


def test_predict_table_from_prompt_arguments(tiny_checkpoint, capsys):
    assert main(["predict", "--model", str(tiny_checkpoint), "--prompt", "What is 2 + 2?", "--prompt", "Hi"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["#", "pred."] and len(lines) == 3
    assert "What is 2 + 2?" in lines[1] and float(lines[1].split()[1]) > 0


def test_predict_jsonl_file_to_jsonl(tiny_checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"question": "What is 2 + 2?"}) + "\n\n" + json.dumps({"question": "Hi"}) + "\n"
    )
    assert main(["predict", "--model", str(tiny_checkpoint), "--input", str(prompts), "--prompt_column", "question",
                 "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in records] == [0, 1]
    assert records[1]["prompt"] == "Hi"  # as given; formatted for the LenVM by --prompt-format
    assert all(-1 < r["value"] < 0 and r["length"] > 0 and r["gamma"] == 0.99 and not r["untrained"] for r in records)


def test_trace_jsonl(tiny_checkpoint, capsys):
    assert main(["trace", "--model", str(tiny_checkpoint), "--prompt", "Hi", "--completion", "Hello!", "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["t"] == 0 and records[0]["token"] == "<s0>" and len(records) >= 2


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, t: ["--input", str(t / "missing.jsonl")], "--input: prompt file not found: .*missing.jsonl"),
        (lambda d, t: ["--input", str(t / "bad.jsonl")], r"bad.jsonl line 3: not valid JSON"),
        (lambda d, t: ["--input", str(t / "norole.jsonl")], r"norole.jsonl has no column 'prompt' \(columns: \['text'\]\)"),
        (lambda d, t: [], "give at least one --prompt or an --input JSONL file"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tiny_checkpoint, tmp_path, capsys, make_args, message):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": oops}\n')
    (tmp_path / "norole.jsonl").write_text('{"text": "a"}\n')
    assert main(["predict", "--model", str(tiny_checkpoint), *make_args(tiny_checkpoint, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lenvm-rl predict: error: ")
    assert re.search(message, err), err


def test_unknown_model_path_exits_2(tmp_path):
    result = run_cli("predict", "--model", str(tmp_path / "nope"), "--prompt", "hi")
    assert result.returncode == 2
    assert f"--model {tmp_path / 'nope'}: model" in result.stderr and "not a local directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_on_the_embedded_smollm2_prints_a_predicted_length():
    # The acceptance command, end to end on the real backbone, in a fresh process.
    result = run_cli("predict", "--model", "smollm2-135m", "--prompt", "What is 15 + 27?")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("NOTE: untrained value head")
    row = lines[-1].split()
    assert row[0] == "0" and float(row[1]) > 0 and -1 < float(row[2]) < 0


def test_demo_pipeline_end_to_end_on_smollm2_at_a_small_scale(tmp_path):
    # The demo (python -m lenvm_rl demo) with every size turned down: rollouts, value pretraining, predictions.
    args = ["demo", "--output_dir", str(tmp_path), "--train_prompts", "2", "--eval_prompts", "2", "-n", "2",
            "--eval_completions", "2", "--max_new_tokens", "8", "--epochs", "1"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "constant baseline" in result.stdout and "LenVM" in result.stdout
    assert (tmp_path / "lenvm" / "value_head.safetensors").is_file()
    table = result.stdout.split("[3/3]")[1].strip().splitlines()[2:]
    assert len(table) == 2 and all(float(row.split()[1]) > 0 for row in table)
    rerun = run_cli(*args)  # resumable: the finished rollouts are not sampled again
    assert rerun.returncode == 0 and len((tmp_path / "train_rollouts.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt_column", "text"], r"has no column 'text' \(columns: \['question'\]\)"),
        (["--prompt_column", "question", "-n", "0"], r"num_completions \(n\) must be >= 1"),
        (["--prompt_column", "question", "--temperature", "0"], "temperature must be > 0"),
        pytest.param(["--prompt_column", "question", "--backend", "vllm"], r"the vllm backend needs vLLM: pip install",
                     marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM installed")),
    ],
)
def test_rollout_bad_input_exits_2_before_loading_a_model(tmp_path, capsys, extra, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": "What is 1 + 1?"}) + "\n")
    args = ["rollout", "--model", str(tmp_path / "no-model"), "--prompts", str(prompts), "--output",
            str(tmp_path / "out.jsonl"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lenvm-rl rollout: error: ") and re.search(message, err), err


def test_pretrain_rejects_gamma_outside_the_unit_interval(tmp_path):
    from lenvm_rl.scripts.pretrain import PretrainScriptArguments

    for gamma in (0.0, 1.0, 1.2):
        with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\)"):
            PretrainScriptArguments(train_rollouts=str(tmp_path / "r.jsonl"), gamma=gamma)


def write_rollouts(path, lengths_by_prompt, censored=()):
    """A rollout JSONL: prompt ``i`` has ``i + 2`` prompt tokens and one completion per length in its list."""
    with open(path, "w") as f:
        for i, lengths in enumerate(lengths_by_prompt):
            for s, length in enumerate(lengths):
                f.write(json.dumps({"prompt_index": i, "sample_index": s, "prompt_ids": list(range(10, 12 + i)),
                                    "completion_ids": [20 + s] * length, "completion_length": length,
                                    "finish_reason": "length" if (i, s) in censored else "eos"}) + "\n")
    return str(path)


def test_evaluate_prints_the_baselines_noise_floor_and_split_half(tiny_checkpoint, tmp_path, capsys):
    train = write_rollouts(tmp_path / "train.jsonl", [[3, 5], [6, 6], [9, 7]], censored={(2, 0)})
    test = write_rollouts(tmp_path / "test.jsonl", [[2, 4, 3], [5, 5, 8]])
    model = ["--model", str(tiny_checkpoint)]
    assert main(["evaluate", *model, "--rollouts", test, "--baseline_rollouts", train, "--bootstrap", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 prompts / 6 completions / 0 censored"
    names = ["LenVM", "constant baseline", "prompt-length regression", "noise floor (oracle vs K samples)",
             "split-half (K/2 vs K/2)"]
    assert [line[: len(name)] for line, name in zip(lines[2:], names)] == names and len(lines) == 7
    assert all(re.search(r"\d+\.\d% ± \d+\.\d%", line) for line in lines[2:])
    assert lines[4].split()[2] == "—"  # the regression predicts at s_0 only

    # without training rollouts: no baseline rows; JSON has every row; the seed makes the references reproducible
    reports = []
    for _ in range(2):
        assert main(["evaluate", *model, "--rollouts", test, "--format", "json", "--seed", "3"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0] == reports[1] and list(reports[0]) == ["LenVM", *names[3:]]
    assert set(reports[0][names[3]]) == {"prompt_mre", "prompt_mre_se"} and "prompt_mre_se" in reports[0]["LenVM"]


def test_evaluate_skips_references_a_single_sample_cannot_give(tiny_checkpoint, tmp_path, capsys):
    test = write_rollouts(tmp_path / "test.jsonl", [[2, 4], [5]])
    assert main(["evaluate", "--model", str(tiny_checkpoint), "--rollouts", test]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3  # header, columns, LenVM
    assert "note: no noise floor (oracle vs K samples) row: the noise floor needs at least 2 samples per prompt; " \
           "prompt_index=1 has 1" in captured.err and "note: no split-half (K/2 vs K/2) row" in captured.err
    assert main(["evaluate", "--model", str(tiny_checkpoint), "--rollouts", test, "--bootstrap", "0"]) == 2
    assert "lenvm-rl evaluate: error: --bootstrap must be >= 1, got 0" in capsys.readouterr().err


def test_device_auto_is_cuda_where_available_else_cpu(monkeypatch):
    import torch

    from lenvm_rl.cli import resolve_device
    from lenvm_rl.commands import command_module

    for argv in (["predict", "--model", "m"], ["serve", "--model", "m"], ["evaluate", "--model", "m", "--rollouts", "r"],
                 ["generate", "--policy", "p"]):
        (args,) = command_module(argv[0]).make_parser().parse_args_and_config(argv[1:])
        assert args.device == "auto", argv
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"


def test_predict_runs_with_the_resolved_device(tiny_checkpoint, monkeypatch, capsys):
    import torch

    from lenvm_rl.predict import LengthPredictor

    devices = []
    load = LengthPredictor.from_pretrained.__func__
    monkeypatch.setattr(LengthPredictor, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: devices.append(kw["device"]) or load(cls, *a, **kw)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["predict", "--model", str(tiny_checkpoint), "--prompt", "Hi"]) == 0
    assert devices == ["cpu"]


def test_every_command_has_a_dataclass_whose_fields_all_carry_help():
    import dataclasses

    from lenvm_rl.commands import COMMANDS, command_module

    assert {"grpo", "ppo", "predict", "pretrain", "serve"} <= set(COMMANDS)
    for name in COMMANDS:
        parser = command_module(name).make_parser()
        assert parser.prog == f"lenvm-rl {name}"
        arguments = parser.dataclass_types[0]
        missing = [f.name for f in dataclasses.fields(arguments) if not f.metadata.get("help")]
        assert not missing, f"{name}: {arguments.__name__} fields without help: {missing}"


def test_dash_spellings_still_work_with_a_future_warning_naming_the_new_one():
    import warnings

    from lenvm_rl.commands import command_module
    from lenvm_rl.commands.base import parse

    parser = command_module("generate").make_parser()
    with pytest.warns(FutureWarning) as record:
        (old,) = parse(parser, ["--policy", "p", "--max-new-tokens=7", "--top-k", "3", "--prompt", "a", "b"])
    messages = [str(w.message) for w in record]
    assert messages == ["--max-new-tokens is deprecated and will be removed in the next release: use --max_new_tokens",
                        "--top-k is deprecated and will be removed in the next release: use --top_k"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (new,) = parse(parser, ["--policy", "p", "--max_new_tokens", "7", "--top_k", "3", "--prompt", "a",
                                "--prompt", "b"])
    assert old == new and (new.max_new_tokens, new.top_k, new.prompt) == (7, 3, ["a", "b"])


def test_predict_with_a_dash_spelling_prints_the_same_as_the_underscore_one(tiny_checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"question": "What is 2 + 2?"}) + "\n")
    args = ["predict", "--model", str(tiny_checkpoint), "--input", str(prompts), "--format", "jsonl"]
    assert main([*args, "--prompt_column", "question"]) == 0
    new = capsys.readouterr().out
    with pytest.warns(FutureWarning, match="--prompt-column is deprecated.*use --prompt_column"):
        assert main([*args, "--prompt-column", "question"]) == 0
    assert capsys.readouterr().out == new


@pytest.mark.parametrize("command, config_class, only_here, not_here", [
    ("grpo", "LengthAwareGRPOConfig", "--length_estimator", "--num_ppo_epochs"),
    ("ppo", "PPOConfig", "--num_ppo_epochs", None),
])
def test_grpo_and_ppo_help_and_config_run_the_recipe_pipeline(command, config_class, only_here, not_here, tmp_path,
                                                             monkeypatch, capsys):
    import lenvm_rl.scripts.grpo as pipeline

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith(f"usage: lenvm-rl {command} ")
    assert only_here in out and "--model_name_or_path" in out and (not_here is None or not_here not in out)

    calls = []
    monkeypatch.setattr(pipeline, "main", lambda *args: calls.append(args))
    config = tmp_path / "config.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\nmax_steps: 3\nuse_cpu: true\n")
    assert main([command, "--config", str(config), "--learning_rate", "0.5"]) == 0
    ((script_args, training_args, model_args),) = calls
    assert type(script_args).__name__ == "GRPOScriptArguments" and type(training_args).__name__ == config_class
    assert (training_args.max_steps, training_args.learning_rate) == (3, 0.5)
    assert training_args.output_dir == str(tmp_path / "out") and type(model_args).__name__ == "ModelConfig"
