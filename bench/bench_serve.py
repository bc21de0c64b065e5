"""`lenvm-rl serve`: throughput and latency with dynamic batching, /tree_value against re-encoding, and a
guided-decoding trace, on our engine and vLLM's side by side.

    python bench/bench_serve.py --model bench/results/grpo/critic --concurrency 1 4 16 64 --prompts 64
    VLLM_CPU_KVCACHE_SPACE=2 python bench/bench_serve.py --engine hf vllm --vllm-enforce-eager --dtype float32

Everything runs in one invocation, on loopback only, with bounded request loops:

- servers (subprocesses) on the same checkpoint, per ``--engine``: ``hf``, our dynamic batching
  (``--batch-size 64``) and no batching (``--batch-size 1``); ``vllm``, ``lenvm-rl serve --engine vllm``
  (``--vllm-block-size`` tokens per prefix-cache block). They are measured interleaved, concurrency level by
  level (these machines are noisy). At each level ``c`` client threads send ``--prompts`` single-prompt
  ``/encode`` requests in all (GSM8K test questions under the chat template), each client its share one after
  another; prompts/s and the median / 90th-percentile request latency are printed, with each server's ratio to
  batch-1;
- in process, :meth:`LengthPredictor.predict` on the same prompts in one call (``--predict-batch-size``),
  the offline reference, interleaved with the levels;
- ``/tree_value`` with ``--candidates`` candidates on a ``--prefix``-token prefix against ``K``
  ``/encode`` calls of ``prefix + c`` (the naive way) and one ``/encode`` call holding all ``K``
  extensions, on each engine's batching server, median over ``--rounds``, with the largest |z| difference;
- the guided-decoding trace, per engine: ``--trace-steps`` calls of ``/tree_value`` with ``--candidates``
  candidates after a prefix (a chat-templated GSM8K prompt of ``--trace-prefix`` tokens, the cache flushed
  first) that grows by one token (the first candidate) per step; the time per step against the prefix length,
  a least-squares slope (ms per prefix token), and for vLLM the share of tokens read from its prefix cache.

The servers and the in-process predictor run on ``--device`` (default ``auto``: CUDA when available) in
``--dtype`` (default float32); the device and the library versions are printed first. HTTP latencies need no
synchronisation (a response holds the computed values); the in-process timings wait for the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time

import bench_decoding
import torch
from bench_decoding import gsm8k, prefix_ids

from lenvm_rl.benchmarking import add_device_arguments, environment_header, resolve_device_arguments, timed
from lenvm_rl.predict import LengthPredictor
from lenvm_rl.serving.client import LenVMClient, launch_server


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_clients(client: LenVMClient, prompts: list[list[int]], concurrency: int) -> tuple[float, list[float]]:
    """``concurrency`` threads share ``prompts`` (one ``/encode`` request each); wall time and latencies."""
    latencies: list[float] = []
    shares = [prompts[i::concurrency] for i in range(concurrency)]

    def worker(share):
        for ids in share:
            t = time.perf_counter()
            client.encode([ids])
            latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies


def bench_throughput(args, servers: dict[str, LenVMClient], predictor: LengthPredictor, questions: list[str]):
    prompts = [predictor.encode_prompt(q) for q in questions]
    print(f"\n/encode throughput: {len(prompts)} prompts per level, mean {statistics.mean(map(len, prompts)):.0f} "
          f"tokens, one prompt per request")
    print(f"{'clients':>7}  {'server':<12} {'prompts/s':>9}  {'p50 ms':>8}  {'p90 ms':>8}  (padding limit "
          f"{args.max_padding})")
    for client in servers.values():  # warm up: first requests pay allocator and thread-pool start-up
        run_clients(client, prompts[:4], 2)
    predictor.predict(questions[:4])
    ratios = {}
    for c in args.concurrency:
        rates = {}
        for name, client in servers.items():
            before = client.health()
            wall, lat = run_clients(client, prompts, c)
            after = client.health()
            rates[name] = len(prompts) / wall
            if after["engine"] == "hf":
                rows = (after["rows"] - before["rows"]) / max(after["batches"] - before["batches"], 1)
                batching = f"{rows:.1f} prompts per forward"
            else:  # vLLM batches continuously: how many prompts were in flight together at most
                batching = f"at most {after['max_rows_in_flight']} prompts in flight so far"
            print(f"{c:>7}  {name:<12} {rates[name]:>9.2f}  {1e3 * statistics.median(lat):>8.0f}  "
                  f"{1e3 * percentile(lat, 0.9):>8.0f}  ({batching})")
        inproc = len(prompts) / timed(lambda: predictor.predict(questions), args.device)
        print(f"{c:>7}  {'in-process':<12} {inproc:>9.2f}  (LengthPredictor.predict, batch "
              f"{predictor.batch_size}, all prompts in one call)")
        for name in rates:
            if name != "batch-1" and "batch-1" in rates:
                ratios[c, name] = rates[name] / rates["batch-1"]
                print(f"{c:>7}  {name} / batch-1 = {ratios[c, name]:.2f}x")
    return ratios


def bench_tree_value(args, name: str, client: LenVMClient, vocab: int):
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(vocab, (args.prefix,), generator=gen).tolist()
    candidates = torch.randint(vocab, (args.candidates,), generator=gen).tolist()
    extensions = [prefix + [c] for c in candidates]
    times = {"tree_value (1 call)": [], f"{args.candidates} x /encode": [], "1 x /encode (batched)": []}
    diff = 0.0
    client.tree_value([prefix], [candidates])  # warm up
    for _ in range(args.rounds):
        t = time.perf_counter()
        (tree,) = client.tree_value([prefix], [candidates])
        times["tree_value (1 call)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        naive = [client.encode([ids])[0][-1] for ids in extensions]
        times[f"{args.candidates} x /encode"].append(time.perf_counter() - t)
        t = time.perf_counter()
        batched = [z[-1] for z in client.encode(extensions)]
        times["1 x /encode (batched)"].append(time.perf_counter() - t)
        diff = max(diff, max(abs(a - b) for a, b in zip(tree, naive)), max(abs(a - b) for a, b in zip(tree, batched)))
    base = statistics.median(times["tree_value (1 call)"])
    print(f"\n/tree_value on {name}: {args.prefix}-token prefix, {args.candidates} candidates, median of {args.rounds} "
          "rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<24} {1e3 * med:>8.0f} ms   {med / base:>5.2f}x the tree_value time")
    print(f"  largest |z(tree_value) - z(re-encode)|: {diff:.2e}")


def bench_trace(args, name: str, client: LenVMClient, prompt: list[int], vocab: int) -> list[tuple[int, float]]:
    """The guided-decoding-shaped trace: (prefix length, seconds) per /tree_value step."""
    gen = torch.Generator().manual_seed(1)
    prefix, steps = list(prompt), []
    client.flush_cache()
    before = client.health()
    for _ in range(args.trace_steps):
        candidates = torch.randint(vocab, (args.candidates,), generator=gen).tolist()
        t = time.perf_counter()
        client.tree_value([prefix], [candidates])
        steps.append((len(prefix), time.perf_counter() - t))
        prefix.append(candidates[0])
    after = client.health()
    lengths, seconds = torch.tensor([n for n, _ in steps], dtype=torch.float64), torch.tensor([s for _, s in steps])
    slope = ((lengths - lengths.mean()) * (seconds - seconds.mean())).sum() / ((lengths - lengths.mean()) ** 2).sum()
    print(f"\nguided-decoding trace on {name}: {args.trace_steps} steps of /tree_value, {args.candidates} candidates, "
          f"prefix {steps[0][0]} -> {steps[-1][0]} tokens")
    window = max(1, args.trace_steps // 8)
    for start in range(0, len(steps), window):
        chunk = steps[start : start + window]
        mean = statistics.mean(s for _, s in chunk)
        print(f"  prefix {chunk[0][0]:>5}-{chunk[-1][0]:<5}  {1e3 * mean:>8.0f} ms/step")
    print(f"  all steps: mean {1e3 * seconds.mean():.0f} ms, first {1e3 * steps[0][1]:.0f} ms; slope "
          f"{1e3 * slope:.2f} ms per prefix token")
    if after["engine"] == "vllm":
        sent = after["prompt_tokens"] - before["prompt_tokens"]
        cached = after["cached_tokens"] - before["cached_tokens"]
        print(f"  vLLM prefix cache: {cached} of {sent} tokens read from the cache ({100 * cached / sent:.1f} %)")
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench/results/grpo/critic", help="LenVM checkpoint")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], help="client threads")
    parser.add_argument("--prompts", type=int, default=64, help="requests per level and server")
    parser.add_argument("--offset", type=int, default=0, help="first GSM8K test question")
    parser.add_argument("--data", default=bench_decoding.GSM8K_TEST,
                        help="GSM8K test questions: a Hub id or a GSM8K-format JSONL file (default: %(default)s)")
    parser.add_argument("--predict-batch-size", type=int, default=16, help="in-process LengthPredictor batch")
    parser.add_argument("--prefix", type=int, default=256, help="/tree_value prefix tokens")
    parser.add_argument("--candidates", type=int, default=16, help="/tree_value candidates")
    parser.add_argument("--rounds", type=int, default=5, help="/tree_value rounds")
    parser.add_argument("--max-batch-tokens", type=int, default=16384, help="the servers' token budget")
    parser.add_argument("--max-padding", type=float, default=0.25, help="the servers' padding limit")
    parser.add_argument("--engine", nargs="+", choices=["hf", "vllm"], default=["hf"],
                        help="engines to measure side by side (vllm: in an environment with vLLM)")
    parser.add_argument("--trace-prefix", type=int, default=256, help="trace: first prefix length (tokens)")
    parser.add_argument("--trace-steps", type=int, default=64, help="trace: /tree_value steps")
    parser.add_argument("--vllm-block-size", type=int, default=32, help="vllm: tokens per prefix-cache block")
    parser.add_argument("--vllm-enforce-eager", action="store_true", help="vllm: no torch.compile (CPU)")
    parser.add_argument("--batch-1", action=argparse.BooleanOptionalAction, default=True,
                        help="hf: also measure a server without batching (default: on)")
    parser.add_argument("--timeout", type=float, default=600.0, help="client timeout per request, seconds")
    add_device_arguments(parser)
    args = resolve_device_arguments(parser.parse_args())

    print(environment_header(args.device, args.dtype), flush=True)
    bench_decoding.GSM8K_TEST = args.data  # read by gsm8k() and prefix_ids()
    questions, _ = gsm8k(args.offset, args.prompts)
    predictor = LengthPredictor.from_pretrained(args.model, batch_size=args.predict_batch_size, dtype=args.dtype,
                                                device=args.device)
    budget = ["--max_batch_tokens", str(args.max_batch_tokens), "--max_padding", str(args.max_padding),
              "--device", args.device, "--dtype", args.dtype]
    print(f"model {args.model}; the servers and the in-process predictor on {args.device} in {args.dtype}")
    vllm_options = ["--engine", "vllm", "--vllm_block_size", str(args.vllm_block_size),
                    *(["--vllm_enforce_eager"] if args.vllm_enforce_eager else [])]
    with contextlib.ExitStack() as stack:
        servers = {}
        if "hf" in args.engine:
            servers["hf"] = stack.enter_context(launch_server(args.model, "--batch_size", "64", *budget))
            if args.batch_1:
                servers["batch-1"] = stack.enter_context(launch_server(args.model, "--batch_size", "1", *budget))
        if "vllm" in args.engine:
            servers["vllm"] = stack.enter_context(launch_server(args.model, "--batch_size", "64", *budget,
                                                                *vllm_options, startup_timeout=600))
        for client in servers.values():
            client.timeout = args.timeout  # 64 clients on a loaded CPU wait minutes
        bench_throughput(args, servers, predictor, questions)
        vocab = predictor.model.config.vocab_size
        prompt = prefix_ids(predictor.tokenizer, args.trace_prefix)[0].tolist()
        for name in args.engine:
            bench_tree_value(args, name, servers[name], vocab)
            bench_trace(args, name, servers[name], prompt, vocab)


if __name__ == "__main__":
    main()
