"""`lenvm-rl serve`: throughput and latency with dynamic batching, and /tree_value against re-encoding.

    python bench/bench_serve.py --model bench/results/grpo/critic --concurrency 1 4 16 64 --prompts 64

Everything runs in one invocation, on loopback only, with bounded request loops:

- two servers (subprocesses) on the same checkpoint: dynamic batching (``--batch-size 64``) and no
  batching (``--batch-size 1``), measured interleaved, concurrency level by level (these machines are
  noisy). At each level ``c`` client threads send ``--prompts`` single-prompt ``/encode`` requests in
  all (GSM8K test questions under the chat template), each client its share one after another;
  prompts/s and the median / 90th-percentile request latency are printed, with the ratio dynamic /
  batch-1;
- in process, :meth:`LengthPredictor.predict` on the same prompts in one call (``--predict-batch-size``),
  the offline reference, interleaved with the levels;
- ``/tree_value`` with ``--candidates`` candidates on a ``--prefix``-token prefix against ``K``
  ``/encode`` calls of ``prefix + c`` (the naive way) and one ``/encode`` call holding all ``K``
  extensions, on the batching server, median over ``--rounds``, with the largest |z| difference.

The servers and the in-process predictor run on ``--device`` (default ``auto``: CUDA when available) in
``--dtype`` (default float32); the device and the library versions are printed first. HTTP latencies need no
synchronisation (a response holds the computed values); the in-process timings wait for the GPU.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch
from bench_decoding import gsm8k

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
            rows = (after["rows"] - before["rows"]) / max(after["batches"] - before["batches"], 1)
            print(f"{c:>7}  {name:<12} {rates[name]:>9.2f}  {1e3 * statistics.median(lat):>8.0f}  "
                  f"{1e3 * percentile(lat, 0.9):>8.0f}  ({rows:.1f} prompts per forward)")
        inproc = len(prompts) / timed(lambda: predictor.predict(questions), args.device)
        ratios[c] = rates["dynamic"] / rates["batch-1"]
        print(f"{c:>7}  {'in-process':<12} {inproc:>9.2f}  (LengthPredictor.predict, batch "
              f"{predictor.batch_size}, all prompts in one call)")
        print(f"{c:>7}  dynamic / batch-1 = {ratios[c]:.2f}x")
    return ratios


def bench_tree_value(args, client: LenVMClient, vocab: int):
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
    print(f"\n/tree_value: {args.prefix}-token prefix, {args.candidates} candidates, median of {args.rounds} rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<24} {1e3 * med:>8.0f} ms   {med / base:>5.2f}x the tree_value time")
    print(f"  largest |z(tree_value) - z(re-encode)|: {diff:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench/results/grpo/critic", help="LenVM checkpoint")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], help="client threads")
    parser.add_argument("--prompts", type=int, default=64, help="requests per level and server")
    parser.add_argument("--offset", type=int, default=0, help="first GSM8K test question")
    parser.add_argument("--predict-batch-size", type=int, default=16, help="in-process LengthPredictor batch")
    parser.add_argument("--prefix", type=int, default=256, help="/tree_value prefix tokens")
    parser.add_argument("--candidates", type=int, default=16, help="/tree_value candidates")
    parser.add_argument("--rounds", type=int, default=5, help="/tree_value rounds")
    parser.add_argument("--max-batch-tokens", type=int, default=16384, help="the servers' token budget")
    parser.add_argument("--max-padding", type=float, default=0.25, help="the servers' padding limit")
    add_device_arguments(parser)
    args = resolve_device_arguments(parser.parse_args())

    print(environment_header(args.device, args.dtype), flush=True)
    questions, _ = gsm8k(args.offset, args.prompts)
    predictor = LengthPredictor.from_pretrained(args.model, batch_size=args.predict_batch_size, dtype=args.dtype,
                                                device=args.device)
    budget = ["--max_batch_tokens", str(args.max_batch_tokens), "--max_padding", str(args.max_padding),
              "--device", args.device, "--dtype", args.dtype]
    print(f"model {args.model}; the servers and the in-process predictor on {args.device} in {args.dtype}")
    with launch_server(args.model, "--batch_size", "64", *budget) as dynamic, \
            launch_server(args.model, "--batch_size", "1", *budget) as single:
        bench_throughput(args, {"dynamic": dynamic, "batch-1": single}, predictor, questions)
        bench_tree_value(args, dynamic, predictor.model.config.vocab_size)


if __name__ == "__main__":
    main()
