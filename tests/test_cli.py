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
    assert main(["predict", "--model", str(tiny_checkpoint), "--input", str(prompts), "--prompt-column", "question",
                 "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in records] == [0, 1]
    assert records[1]["prompt"] == [{"role": "user", "content": "Hi"}]
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
    # The README's main job with every size turned down: rollouts, value pretraining, predictions.
    args = ["demo", "--output-dir", str(tmp_path), "--train-prompts", "2", "--eval-prompts", "2", "-n", "2",
            "--eval-completions", "2", "--max-new-tokens", "8", "--epochs", "1"]
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
        (["--prompt-column", "text"], r"has no column 'text' \(columns: \['question'\]\)"),
        (["--prompt-column", "question", "-n", "0"], r"num_completions \(n\) must be >= 1"),
        (["--prompt-column", "question", "--temperature", "0"], "temperature must be > 0"),
        pytest.param(["--prompt-column", "question", "--backend", "vllm"], r"the vllm backend needs vLLM: pip install",
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
