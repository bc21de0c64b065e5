"""Issue 21, item 2: the benchmarks take ``--device`` and ``--dtype``, print the device and the library versions
first, and time with :func:`lenvm_rl.benchmarking.timed`, which waits for the GPU. On the CPU, with tiny random
models: the decoding and prediction benchmarks and GRPO's ``overhead`` run a tiny path end to end; the serving
benchmark is checked up to the servers' command line (two servers would cost a minute here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
import trl

from lenvm_rl import benchmarking
from lenvm_rl.benchmarking import environment_header, timed

BENCH = Path(__file__).resolve().parents[2] / "bench"
CPU = ["--device", "cpu", "--dtype", "float32"]


def load_bench(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # bench_serve imports bench_decoding
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(module, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    try:
        module.main()
    finally:  # the benchmarks set the threads, and bench_predict turns gradients off, for the whole process
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)


def check_header(printed: str, device: str = "cpu", dtype: str = "float32") -> None:
    first = printed.splitlines()[0]
    assert first.startswith(f"device {device} (") and f"dtype {dtype}" in first, first
    for package, version in (("torch", torch.__version__), ("transformers", transformers.__version__),
                             ("trl", trl.__version__)):
        assert f"{package} {version}" in first, (package, first)


def test_timed_synchronises_cuda_before_and_after(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync", str(device))))
    seconds = timed(lambda: calls.append("fn"), "cuda:1")
    assert calls == [("sync", "cuda:1"), "fn", ("sync", "cuda:1")] and seconds >= 0
    calls.clear()
    timed(lambda: calls.append("fn"), "cpu")
    assert calls == ["fn"]  # nothing to wait for on the CPU


def test_environment_header_names_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    header = environment_header("cuda:0", "bfloat16")
    assert header.startswith("device cuda:0 (NVIDIA H200, CUDA ") and "dtype bfloat16" in header
    check_header(environment_header("cpu", "float32"))


def test_auto_device_resolves(monkeypatch):
    parser = benchmarking.argparse.ArgumentParser()
    benchmarking.add_device_arguments(parser)
    args = parser.parse_args([])
    assert (args.device, args.dtype) == ("auto", "float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert benchmarking.resolve_device_arguments(args).device == "cuda"
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "float64"])


def test_decoding_speed_on_the_cpu_prints_the_header(tiny_checkpoint, monkeypatch, capsys):
    bench = load_bench("bench_decoding", monkeypatch)
    monkeypatch.setattr(bench, "prefix_ids", lambda tokenizer, length: torch.randint(5, 1000, (1, length)))
    loaded = []
    real_load = bench.load_models
    monkeypatch.setattr(bench, "load_models", lambda args: loaded.append(args) or real_load(args))
    run_main(bench, ["speed", *CPU, "--policy", str(tiny_checkpoint), "--lenvm", str(tiny_checkpoint),
                     "--prefix", "8", "--tokens", "8", "--naive-tokens", "1", "--repeats", "1", "--candidates", "4",
                     "--threads", "1"], monkeypatch)
    printed = capsys.readouterr().out
    check_header(printed)
    assert loaded[0].device == "cpu" and loaded[0].dtype == "float32"
    assert "guided / unguided" in printed and "cpu, float32, 1 threads" in printed


def test_decoding_speed_refuses_too_few_tokens(monkeypatch, capsys):
    # (all - first) / (N - 1) at N = 2 printed negative per-token times; the bench now refuses before loading
    bench = load_bench("bench_decoding", monkeypatch)
    with pytest.raises(SystemExit):
        run_main(bench, ["speed", *CPU, "--tokens", "2"], monkeypatch)
    assert "speed needs --tokens >= 8" in capsys.readouterr().err


def test_decoding_models_load_in_the_dtype(tiny_checkpoint, monkeypatch):
    bench = load_bench("bench_decoding", monkeypatch)
    args = bench.argparse.Namespace(policy=str(tiny_checkpoint), lenvm=str(tiny_checkpoint), dtype="bfloat16",
                                    device="cpu")
    policy, _, lenvm = bench.load_models(args)
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in lenvm.backbone.parameters()} == {torch.bfloat16}  # the head stays float32
    # a resumable file records the dtype and the device type when they are not the defaults
    common = dict(policy="p", lenvm="l", candidates=4, top_p=1.0, min_p=None, batch_size=2, offset=0,
                  num_prompts=2, sample=False, temperature=1.0, seed=0)
    assert "dtype" not in bench._result_args(bench.argparse.Namespace(**common, dtype="float32", device="cpu"))
    recorded = bench._result_args(bench.argparse.Namespace(**common, dtype="bfloat16", device="cuda:0"))
    assert (recorded["dtype"], recorded["device"]) == ("bfloat16", "cuda")


def test_predict_on_the_cpu_prints_the_header(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    bench = load_bench("bench_predict", monkeypatch)
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?"}) + "\n" for i in range(4)))
    run_main(bench, [*CPU, "--model", str(tiny_checkpoint), "--data", str(data), "--num-prompts", "4",
                     "--batch-size", "2", "--repeats", "1"], monkeypatch)
    printed = capsys.readouterr().out
    check_header(printed)
    assert "predict (sorted)" in printed and "backbone forward" in printed


def test_serve_starts_its_servers_on_the_chosen_device(tiny_checkpoint, monkeypatch, capsys):
    bench = load_bench("bench_serve", monkeypatch)
    commands = []

    class Started(Exception):
        pass

    def launch_server(model, *args, **kwargs):
        commands.append(args)
        raise Started

    monkeypatch.setattr(bench, "launch_server", launch_server)
    monkeypatch.setattr(bench, "gsm8k", lambda offset, n: ([f"What is {i} + 1?" for i in range(n)], [""] * n))
    with pytest.raises(Started):
        run_main(bench, [*CPU, "--model", str(tiny_checkpoint), "--prompts", "2"], monkeypatch)
    check_header(capsys.readouterr().out)
    (args,) = commands
    assert args[args.index("--device") + 1] == "cpu" and args[args.index("--dtype") + 1] == "float32"


def test_grpo_overhead_on_the_cpu_prints_the_header(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    bench = load_bench("bench_grpo", monkeypatch)
    rows = "".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
                   for i in range(8))
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(rows)
    monkeypatch.setattr(bench, "GSM8K", tmp_path)  # a GSM8K-format folder of our own: the test needs no ../shared
    threads = torch.get_num_threads()
    try:
        bench.main(["overhead", *CPU, "--model", str(tiny_checkpoint), "--steps", "2", "--rounds", "1",
                    "--prompts", "1", "--num-generations", "2", "--max-completion-length", "4", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    check_header(printed)
    assert "LenVM critic call: median" in printed and "cpu, float32, 1 threads" in printed
