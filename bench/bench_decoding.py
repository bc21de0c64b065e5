"""LenVM-guided decoding: cost per token, Equal-To length score, and the accuracy-vs-length trade-off on GSM8K.

    python bench/bench_decoding.py speed --tokens 32 --naive-tokens 2 --prefix 256 --candidates 16
    python bench/bench_decoding.py length-score --lenvm bench/results/grpo/critic --num-prompts 20 \\
        --targets 32 64 128 256
    python bench/bench_decoding.py tradeoff --lenvm bench/results/grpo/critic --num-prompts 50 \\
        --betas -5 -20 -50 -200 --budgets 64 128 192 256 --png bench/results/decoding/tradeoff.png

``speed`` runs in one process, on the same prefix, interleaved round by round (these machines are
noisy), and prints medians and ratios:

- one step's LenVM forward in each layout: a plain decode step (1 token on the cached prefix),
  ``K`` candidates side by side under a 4D mask (what :class:`LenVMLogitsProcessor` runs; the chosen
  token rides along), with the linear layers on oneDNN-packed weights (the processor's default on
  CPU, :class:`~lenvm_rl.modeling.PrepackedLinears`) and on PyTorch's default kernels, ``K``
  candidates in a batch-expanded cache, and naive re-encoding (``K`` full forwards of ``prefix + x``,
  packed too);
- greedy ``generate`` unguided, guided (cached, packed and default kernels) and guided (naive): the
  time to the first token (the prompt's prefill, and the LenVM's), the time per later token
  (``(T_N - T_1) / (N - 1)``, the serving benchmarks' TPOT), and ``T_N / N``. The goals (guided at
  most 2.5x unguided, naive at least 50x guided) are checked on the time per later token.

Defaults: SmolLM2-135M-Instruct as the policy and, for ``speed``, a LenVM of the same size (fresh
head: the cost does not depend on the head's weights). ``length-score`` and ``tradeoff`` need a
pretrained LenVM on SmolLM2 (``bench/results/grpo/critic`` was pretrained on GSM8K train rollouts at
temperature 0.7); they use GSM8K test questions from ``--offset`` on, held out from that training.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LogitsProcessorList

from lenvm_rl.data.prompts import encode_prompt
from lenvm_rl.decoding import (
    LenVMLogitsProcessor,
    length_score_benchmark,
    plot_tradeoff,
    tradeoff_sweep,
)
from lenvm_rl.modeling import LenVM, load_backbone, resolve_model_path

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def gsm8k(offset: int, n: int) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines() if line.strip()]
    rows = rows[offset : offset + n]
    return [r["question"] for r in rows], [r["answer"] for r in rows]


def load_models(args):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.policy))
    policy = load_backbone(args.policy).eval()
    if args.lenvm in (None, "fresh"):
        torch.manual_seed(0)
        lenvm = LenVM.from_backbone(args.policy, gamma=0.99).eval()
    else:
        lenvm = LenVM.from_pretrained(args.lenvm).eval()
    return policy, tokenizer, lenvm


def prefix_ids(tokenizer, length: int) -> torch.Tensor:
    """A chat-templated prompt of GSM8K questions, cut to exactly ``length`` tokens."""
    questions, _ = gsm8k(0, 40)
    ids = encode_prompt(tokenizer, "Solve these problems one by one.\n\n" + "\n\n".join(questions))
    if len(ids) < length:
        raise ValueError(f"the prefix has only {len(ids)} tokens; ask for fewer")
    return torch.tensor(ids[-length:])[None]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.inference_mode()
def speed(args) -> None:
    torch.set_num_threads(args.threads)
    policy, tokenizer, lenvm = load_models(args)
    ids = prefix_ids(tokenizer, args.prefix)
    k = args.candidates
    mask = torch.ones_like(ids)
    prefix = lenvm(ids, mask, use_cache=True)
    cand = torch.randint(0, lenvm.config.vocab_size, (1, k))  # for the layouts the processor does not run
    extended = torch.ones(1, args.prefix + 1, dtype=torch.long)

    def decode_step():
        cache = copy.deepcopy(prefix.cache)
        return lambda: lenvm(cand[:, :1], extended, cache=cache, use_cache=True)

    scores = torch.randn(1, lenvm.config.vocab_size)

    def masked(cpu_prepack=None):
        def make():
            processor = LenVMLogitsProcessor(lenvm, top_k=k, cpu_prepack=cpu_prepack)
            processor(ids[:, :-1], scores)  # caches the prefix but its last token, which then rides along
            return lambda: processor(ids, scores)
        return make

    def expanded():
        cache = copy.deepcopy(prefix.cache)

        def run():
            cache.batch_repeat_interleave(k)
            return lenvm(cand.T, extended.expand(k, -1), cache=cache, use_cache=True)
        return run

    def naive(cpu_prepack=None):
        def make():
            processor = LenVMLogitsProcessor(lenvm, top_k=k, scoring="naive", cpu_prepack=cpu_prepack)
            return lambda: processor(ids, scores)
        return make

    layouts = {"decode step (1 token)": decode_step, f"{k} candidates, 4D mask, packed (what runs)": masked(),
               f"{k} candidates, 4D mask, default kernels": masked(cpu_prepack=False),
               f"{k} candidates, batch-expanded": expanded, f"{k} candidates, naive re-encoding, packed": naive(),
               f"{k} candidates, naive re-encoding, default kernels": naive(cpu_prepack=False)}
    step_times = {name: [] for name in layouts}
    for name, make in layouts.items():  # warm-up, untimed
        if "naive" not in name:
            make()()
    for _ in range(args.repeats):
        for name, make in layouts.items():
            fn = make()  # set-up (cache copies, the prefix's cache) is not timed
            step_times[name].append(timed(fn))

    def generate(processor, n):
        processors = LogitsProcessorList([processor] if processor else [])
        return lambda: policy.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                       logits_processor=processors, pad_token_id=tokenizer.eos_token_id)

    methods = {
        "unguided": (None, args.tokens),
        "guided, KV cache, packed": (LenVMLogitsProcessor(lenvm, beta=-1.0, top_k=k), args.tokens),
        "guided, KV cache, default kernels": (LenVMLogitsProcessor(lenvm, beta=-1.0, top_k=k, cpu_prepack=False),
                                              args.tokens),
        "guided, naive re-encoding, packed": (LenVMLogitsProcessor(lenvm, beta=-1.0, top_k=k, scoring="naive"),
                                              args.naive_tokens + 1),
        "guided, naive re-encoding, default kernels": (
            LenVMLogitsProcessor(lenvm, beta=-1.0, top_k=k, scoring="naive", cpu_prepack=False), args.naive_tokens + 1),
    }
    generate(methods["guided, KV cache, packed"][0], 2)()  # warm-up, untimed
    first, total = {name: [] for name in methods}, {name: [] for name in methods}
    for round_ in range(args.repeats):
        for name, (processor, n) in methods.items():
            if "naive" in name and round_ >= max(1, args.repeats // 2):
                continue
            first[name].append(timed(generate(processor, 1)))
            total[name].append(timed(generate(processor, n)))

    med = {name: statistics.median(v) for name, v in step_times.items()}
    ttft = {name: statistics.median(v) for name, v in first.items()}
    tpot = {name: (statistics.median(total[name]) - ttft[name]) / (n - 1) for name, (_, n) in methods.items()}
    per_token = {name: statistics.median(total[name]) / n for name, (_, n) in methods.items()}
    print(f"\n{args.policy} policy, LenVM {args.lenvm or 'fresh head on the same backbone'}; prefix {args.prefix} "
          f"tokens, {k} candidates, {args.threads} threads; medians over {args.repeats} rounds")
    print(f"{'one step of the LenVM':<45}  {'ms':>9}")
    for name in step_times:
        print(f"{name:<45}  {1000 * med[name]:>9.1f}")
    print(f"\n{'greedy generate':<45}  {'first token':>11}  {'per later token':>15}  {'all / N':>9}  {'N':>3}")
    for name, (_, n) in methods.items():
        ms = [1000 * ttft[name], 1000 * tpot[name], 1000 * per_token[name]]
        print(f"{name:<45}  {ms[0]:>11.1f}  {ms[1]:>15.1f}  {ms[2]:>9.1f}  {n:>3}")
    print("\nper later token (time per output token after the first; the first holds the prompt's prefill), the")
    print("LenVM with the same kernels in every method:")
    for kernels in ("packed", "default kernels"):
        guided, naive_name = f"guided, KV cache, {kernels}", f"guided, naive re-encoding, {kernels}"
        print(f"  {kernels:<16} guided / unguided {tpot[guided] / tpot['unguided']:.2f}x (goal <= 2.5x), "
              f"naive / guided {tpot[naive_name] / tpot[guided]:.1f}x (goal >= 50x); all N / N: "
              f"{per_token[guided] / per_token['unguided']:.2f}x, {per_token[naive_name] / per_token[guided]:.1f}x")
    packed_step = med[f"{k} candidates, 4D mask, packed (what runs)"]
    default_step = med[f"{k} candidates, 4D mask, default kernels"]
    print(f"one LenVM step: naive / 4D mask {med[f'{k} candidates, naive re-encoding, packed'] / packed_step:.1f}x "
          f"(packed), {med[f'{k} candidates, naive re-encoding, default kernels'] / default_step:.1f}x "
          f"(default kernels); 4D mask default kernels / packed {default_step / packed_step:.2f}x")


def length_score(args) -> None:
    torch.set_num_threads(args.threads)
    policy, tokenizer, lenvm = load_models(args)
    prompts, _ = gsm8k(args.offset, args.num_prompts)
    results = length_score_benchmark(policy, tokenizer, lenvm, prompts, args.targets, top_k=args.candidates,
                                     top_p=args.top_p, min_p=args.min_p,
                                     batch_size=args.batch_size, max_new_tokens_factor=args.max_factor,
                                     progress=lambda line: print(line, flush=True))
    print(f"\nEqual-To length score, {len(prompts)} GSM8K test questions from row {args.offset}, greedy, "
          f"top-{args.candidates}, top-p {args.top_p}, min-p {args.min_p}; LenVM {args.lenvm}")
    print(f"{'target':>6}  " + "  ".join(f"{name:>22}" for name in next(iter(results.values()))))
    for target, rows in results.items():
        print(f"{target:>6}  " + "  ".join(f"LS {r.score:5.1f} (len {r.mean_length:5.1f})".rjust(22)
                                          for r in rows.values()))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({t: {k: vars(v) for k, v in rows.items()}
                                                 for t, rows in results.items()}, indent=2) + "\n")


def tradeoff(args) -> None:
    torch.set_num_threads(args.threads)
    policy, tokenizer, lenvm = load_models(args)
    prompts, answers = gsm8k(args.offset, args.num_prompts)
    points = tradeoff_sweep(policy, tokenizer, lenvm, prompts, answers, betas=args.betas, budgets=args.budgets,
                            max_new_tokens=args.max_new_tokens, top_k=args.candidates, top_p=args.top_p,
                            min_p=args.min_p, batch_size=args.batch_size,
                            progress=lambda line: print(line, flush=True))
    print(f"\nGSM8K accuracy vs mean length, {len(prompts)} test questions from row {args.offset}, greedy")
    for p in points:
        print(f"{p.method:>6} {p.setting:>8g}  accuracy {p.accuracy:.3f}  mean length {p.mean_length:6.1f}")
    if args.png:
        print("plot:", plot_tradeoff(points, args.png, title=f"GSM8K, {len(prompts)} questions"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("speed", speed), ("length-score", length_score), ("tradeoff", tradeoff)):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--policy", default="smollm2-135m")
        p.add_argument("--lenvm", default=None if name == "speed" else "bench/results/grpo/critic",
                       help="LenVM checkpoint; 'fresh' (speed's default) is an untrained head on the policy")
        p.add_argument("--candidates", type=int, default=16)
        p.add_argument("--top-p", type=float, default=1.0, help="candidate set: nucleus within the top-k")
        p.add_argument("--min-p", type=float, default=0.0, help="candidate set: min-p within the top-k")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--offset", type=int, default=200, help="first GSM8K test row (held out)")
        p.add_argument("--num-prompts", type=int, default=20)
    sub.choices["speed"].add_argument("--prefix", type=int, default=256)
    sub.choices["speed"].add_argument("--tokens", type=int, default=32)
    sub.choices["speed"].add_argument("--naive-tokens", type=int, default=2)
    sub.choices["speed"].add_argument("--repeats", type=int, default=3)
    sub.choices["length-score"].add_argument("--targets", type=int, nargs="+", default=[32, 64, 128, 256])
    sub.choices["length-score"].add_argument("--max-factor", type=float, default=2.0)
    sub.choices["length-score"].add_argument("--output", default=None, help="JSON results")
    sub.choices["tradeoff"].add_argument("--betas", type=float, nargs="+", default=[-5.0, -20.0, -50.0, -200.0])
    sub.choices["tradeoff"].add_argument("--budgets", type=int, nargs="+", default=[64, 128, 192, 256])
    sub.choices["tradeoff"].add_argument("--max-new-tokens", type=int, default=512)
    sub.choices["tradeoff"].add_argument("--png", default=None)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
