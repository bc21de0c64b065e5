"""LenVM-guided decoding: cost per token, Equal-To length score, and the accuracy-vs-length trade-off on GSM8K.

    python bench/bench_decoding.py speed --tokens 32 --naive-tokens 2 --prefix 256 --candidates 16
    python bench/bench_decoding.py length-score --lenvm bench/results/grpo/critic --num-prompts 20 \\
        --targets 32 64 128 256
    python bench/bench_decoding.py tradeoff --lenvm bench/results/grpo/critic --num-prompts 50 \\
        --betas -5 -20 -50 -200 --budgets 64 128 192 256 --png bench/results/decoding/tradeoff.png

Every command takes ``--device`` (default ``auto``: CUDA when available) and ``--dtype`` (default float32) and
prints the device and the library versions first; timers wait for the GPU (``lenvm_rl.benchmarking.timed``).

``length-score`` and ``tradeoff`` decode greedily, or sample with ``--sample --temperature T --seed S``
(under the ``equal`` constraint of ``length-score`` the LenVM arm is deterministic all the same: one candidate per
step). ``length-score`` states the target in the prompt of both the prompt-only and the LenVM arm, in ``--unit``
tokens (counted before EOS) or words (counted as LIFEBench counts them; the LenVM then aims at
``--tokens-per-word`` tokens a word), drops answers of length <= 1 and averages per target first, as LIFEBench's
scorer does.
With ``--output PATH.json`` they write their results after every finished unit (a target with its three
methods; the unguided arm with its budget points, or one tilt beta) and a re-run with the same arguments
resumes, skipping the units done; a file written with other arguments is refused. Tables give each mean
± its standard error (binomial for accuracy and answer rate, ``sd / sqrt(n)`` for scores and lengths).

``speed`` runs in one process, on the same prefix, interleaved round by round (these machines are
noisy), and prints medians and ratios:

- one step's LenVM forward in each layout: a plain decode step (1 token on the cached prefix),
  ``K`` candidates side by side under a 4D mask (what :class:`LenVMLogitsProcessor` runs; the chosen
  token rides along), with the linear layers on oneDNN-packed weights (the processor's default on
  CPU, :class:`~lenvm_rl.modeling.PrepackedLinears`) and on PyTorch's default kernels, ``K``
  candidates in a batch-expanded cache, and naive re-encoding (``K`` full forwards of ``prefix + x``,
  packed too);
- greedy ``generate`` unguided (and with the policy on packed weights), guided (cached, packed and default
  kernels), guided with a shared trunk (:class:`~lenvm_rl.decoding.shared_trunk.SharedTrunkDecoder`: the
  policy's own forward scores the candidates, when the LenVM is a head on the policy's trunk, as the
  default fresh head is) and guided (naive): the time to the first token (the prompt's prefill, and the
  LenVM's), the time per later token (``(T_N - T_1) / (N - 1)``, the serving benchmarks' TPOT), and
  ``T_N / N``. The goals (guided at most 2.5x unguided, shared trunk at most 1.3x, naive at least 50x
  guided) are checked on the time per later token. With ``--compile`` also unguided, guided and shared
  trunk on static KV caches with their decode steps ``torch.compile``'d (``guided_generate(compile=True)``;
  CUDA graphs on CUDA), compiled before the timed rounds.

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

from lenvm_rl.benchmarking import add_device_arguments, environment_header, resolve_device_arguments, timed
from lenvm_rl.data.prompts import encode_prompt, load_prompts, to_messages
from lenvm_rl.decoding import (
    LengthReport,
    LenVMLogitsProcessor,
    TradeoffPoint,
    average_over_targets,
    budget_baseline,
    length_score_benchmark,
    plot_tradeoff,
    tilt_point,
    tradeoff_arm,
)
from lenvm_rl.decoding.scoring import static_generate_kwargs
from lenvm_rl.decoding.shared_trunk import SharedTrunkDecoder, shared_trunk_mismatch
from lenvm_rl.modeling import LenVM, PrepackedLinears, load_backbone, resolve_model_path

GSM8K_TEST = "openai/gsm8k:main"  # the Hub's GSM8K (its test split), or a GSM8K-format JSONL file


def gsm8k(offset: int, n: int) -> tuple[list[str], list[str]]:
    """Questions and gold answers of GSM8K test rows ``offset .. offset + n`` (:func:`lenvm_rl.data.load_prompts`)."""
    return tuple(load_prompts(GSM8K_TEST, prompt_column=column, split="test", limit=n, offset=offset)
                 for column in ("question", "answer"))


def load_models(args):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.policy))
    policy = load_backbone(args.policy, dtype=args.dtype).to(args.device).eval()
    if args.lenvm in (None, "fresh"):
        torch.manual_seed(0)
        lenvm = LenVM.from_backbone(args.policy, gamma=0.99, dtype=args.dtype, device=args.device).eval()
    else:
        lenvm = LenVM.from_pretrained(args.lenvm, dtype=args.dtype, device=args.device).eval()
    return policy, tokenizer, lenvm


def prefix_ids(tokenizer, length: int) -> torch.Tensor:
    """A chat-templated prompt of GSM8K questions, cut to exactly ``length`` tokens."""
    questions, _ = gsm8k(0, 40)
    ids = encode_prompt(tokenizer, to_messages("Solve these problems one by one.\n\n" + "\n\n".join(questions)))
    if len(ids) < length:
        raise ValueError(f"the prefix has only {len(ids)} tokens; ask for fewer")
    return torch.tensor(ids[-length:])[None]


@torch.inference_mode()
def speed(args) -> None:
    policy, tokenizer, lenvm = load_models(args)
    device = args.device
    ids = prefix_ids(tokenizer, args.prefix).to(device)
    k = args.candidates
    mask = torch.ones_like(ids)
    prefix = lenvm(ids, mask, use_cache=True)
    cand = torch.randint(0, lenvm.config.vocab_size, (1, k), device=device)  # for the layouts the processor skips
    extended = torch.ones(1, args.prefix + 1, dtype=torch.long, device=device)
    # the LenVM's linear layers on oneDNN-packed weights (the processor's default where they apply: a float32
    # LenVM on the CPU) and on PyTorch's default kernels; elsewhere only the latter
    kernels = {"packed": None, "default kernels": False} if PrepackedLinears.available(lenvm) else {
        "default kernels": False}

    def decode_step():
        cache = copy.deepcopy(prefix.cache)
        return lambda: lenvm(cand[:, :1], extended, cache=cache, use_cache=True)

    scores = torch.randn(1, lenvm.config.vocab_size, device=device)  # generate hands processors float32 logits

    def masked(cpu_prepack):
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

    def naive(cpu_prepack):
        def make():
            processor = LenVMLogitsProcessor(lenvm, top_k=k, scoring="naive", cpu_prepack=cpu_prepack)
            return lambda: processor(ids, scores)
        return make

    layouts = {"decode step (1 token)": decode_step}
    layouts |= {f"{k} candidates, 4D mask, {name}": masked(prepack) for name, prepack in kernels.items()}
    layouts[f"{k} candidates, batch-expanded"] = expanded
    layouts |= {f"{k} candidates, naive re-encoding, {name}": naive(prepack) for name, prepack in kernels.items()}
    step_times = {name: [] for name in layouts}
    for name, make in layouts.items():  # warm-up, untimed
        if "naive" not in name:
            make()()
    for _ in range(args.repeats):
        for name, make in layouts.items():
            fn = make()  # set-up (cache copies, the prefix's cache) is not timed
            step_times[name].append(timed(fn, device))

    class Compiled:  # --compile: generate on a static cache with its decode step compiled
        def __init__(self, processor):
            self.processor = processor

    def generate(processor, n):
        if isinstance(processor, Compiled):
            def static():
                if processor.processor is not None:
                    processor.processor.begin(mask, n)  # sizes the LenVM's static cache
                return policy.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                       logits_processor=LogitsProcessorList([processor.processor] if processor.processor
                                                                            else []),
                                       pad_token_id=tokenizer.eos_token_id, **static_generate_kwargs(True, device))
            return static
        if isinstance(processor, SharedTrunkDecoder):  # the policy's own forward scores the candidates
            return lambda: processor.generate(ids, mask, max_new_tokens=n)
        if isinstance(processor, PrepackedLinears):  # unguided, the policy on packed weights
            def packed():
                with processor:
                    return generate(None, n)()
            return packed
        processors = LogitsProcessorList([processor] if processor else [])
        return lambda: policy.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                       logits_processor=processors, pad_token_id=tokenizer.eos_token_id)

    methods = {"unguided": (None, args.tokens)}
    if "packed" in kernels:
        methods["unguided, packed"] = (PrepackedLinears(policy, rows=1), args.tokens)
    methods |= {f"guided, KV cache, {name}": (LenVMLogitsProcessor(lenvm, beta=-1.0, top_k=k, cpu_prepack=prepack),
                                              args.tokens) for name, prepack in kernels.items()}
    not_shared = shared_trunk_mismatch(policy, lenvm)
    if not not_shared:
        methods |= {f"guided, shared trunk, {name}": (SharedTrunkDecoder(policy, LenVMLogitsProcessor(
            lenvm, beta=-1.0, top_k=k, cpu_prepack=prepack)), args.tokens) for name, prepack in kernels.items()}
    methods |= {f"guided, naive re-encoding, {name}": (
        LenVMLogitsProcessor(lenvm, beta=-1.0, top_k=k, scoring="naive", cpu_prepack=prepack), args.naive_tokens + 1)
        for name, prepack in kernels.items()}
    if args.compile:
        compiled = {"unguided, compiled": Compiled(None),
                    "guided, KV cache, compiled": Compiled(LenVMLogitsProcessor(lenvm, beta=-1.0, top_k=k,
                                                                                compile=True))}
        if not not_shared:
            compiled["guided, shared trunk, compiled"] = SharedTrunkDecoder(policy, LenVMLogitsProcessor(
                lenvm, beta=-1.0, top_k=k, compile=True))
        for name, method in compiled.items():  # compiles every shape the timed runs take, untimed
            start = time.perf_counter()
            for n in (1, args.tokens):
                generate(method, n)()
            print(f"{name}: compiled in {time.perf_counter() - start:.0f} s", flush=True)
        methods |= {name: (method, args.tokens) for name, method in compiled.items()}
    generate(methods[f"guided, KV cache, {next(iter(kernels))}"][0], 2)()  # warm-up, untimed
    first, total = {name: [] for name in methods}, {name: [] for name in methods}
    for round_ in range(args.repeats):
        for name, (processor, n) in methods.items():
            if "naive" in name and round_ >= max(1, args.repeats // 2):
                continue
            first[name].append(timed(generate(processor, 1), device))
            total[name].append(timed(generate(processor, n), device))

    med = {name: statistics.median(v) for name, v in step_times.items()}
    ttft = {name: statistics.median(v) for name, v in first.items()}
    tpot = {name: (statistics.median(total[name]) - ttft[name]) / (n - 1) for name, (_, n) in methods.items()}
    per_token = {name: statistics.median(total[name]) / n for name, (_, n) in methods.items()}
    print(f"\n{args.policy} policy, LenVM {args.lenvm or 'fresh head on the same backbone'}; prefix {args.prefix} "
          f"tokens, {k} candidates, {device}, {args.dtype}, {args.threads} threads; medians over {args.repeats} "
          "rounds")
    print(f"{'one step of the LenVM':<45}  {'ms':>9}")
    for name in step_times:
        print(f"{name:<45}  {1000 * med[name]:>9.1f}")
    print(f"\n{'greedy generate':<45}  {'first token':>11}  {'per later token':>15}  {'all / N':>9}  {'N':>3}")
    for name, (_, n) in methods.items():
        ms = [1000 * ttft[name], 1000 * tpot[name], 1000 * per_token[name]]
        print(f"{name:<45}  {ms[0]:>11.1f}  {ms[1]:>15.1f}  {ms[2]:>9.1f}  {n:>3}")
    print("\nper later token (time per output token after the first; the first holds the prompt's prefill), the")
    print("LenVM with the same kernels in every method:")
    for kernel in kernels:
        guided, naive_name = f"guided, KV cache, {kernel}", f"guided, naive re-encoding, {kernel}"
        print(f"  {kernel:<16} guided / unguided {tpot[guided] / tpot['unguided']:.2f}x (goal <= 2.5x), "
              f"naive / guided {tpot[naive_name] / tpot[guided]:.1f}x (goal >= 50x); all N / N: "
              f"{per_token[guided] / per_token['unguided']:.2f}x, {per_token[naive_name] / per_token[guided]:.1f}x")
    print("shared trunk (the policy's own forward scores the candidates: one K-token forward per token; its LenVM "
          "is a head on the policy's trunk), per later token:" + (f" not run, {not_shared}" if not_shared else ""))
    for kernel in kernels if not not_shared else ():
        shared, two = f"guided, shared trunk, {kernel}", f"guided, KV cache, {kernel}"
        unguided = ["unguided"] + (["unguided, packed"] if kernel == "packed" else [])
        print(f"  {kernel:<16} " + ", ".join(f"shared / {name} {tpot[shared] / tpot[name]:.2f}x" for name in unguided)
              + f" (goal <= 1.3x); two models / shared {tpot[two] / tpot[shared]:.2f}x")
    if args.compile:
        shared = "guided, shared trunk, compiled"
        print("compiled (static KV cache, torch.compile'd decode steps), per later token: unguided compiled / eager "
              f"{tpot['unguided, compiled'] / tpot['unguided']:.2f}x, guided / unguided (both compiled) "
              f"{tpot['guided, KV cache, compiled'] / tpot['unguided, compiled']:.2f}x"
              + (f", shared trunk / unguided (both compiled) {tpot[shared] / tpot['unguided, compiled']:.2f}x"
                 if shared in tpot else ""))
    print("one LenVM step: naive / 4D mask " + ", ".join(
        f"{med[f'{k} candidates, naive re-encoding, {kernel}'] / med[f'{k} candidates, 4D mask, {kernel}']:.1f}x "
        f"({kernel})" for kernel in kernels))
    if "packed" in kernels:
        ratio = med[f"{k} candidates, 4D mask, default kernels"] / med[f"{k} candidates, 4D mask, packed"]
        print(f"4D mask default kernels / packed {ratio:.2f}x")


class Resumable:
    """A JSON results file written after every finished unit; a re-run with the same arguments skips what is done.

    The file holds ``{"command", "args", "units": {name: result}}``; ``args`` are those that change the results
    (not ``--threads``, ``--output``, ``--png``; the device type and dtype only when not the CPU and
    float32). A file written with other arguments is refused.
    """

    def __init__(self, path: str | None, command: str, args: dict):
        self.path, self.command, self.args, self.units = Path(path) if path else None, command, args, {}
        if self.path and self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("command") != command or saved.get("args") != args:
                diff = {k: (saved.get("args", {}).get(k), v) for k, v in args.items()
                        if saved.get("args", {}).get(k) != v}
                raise SystemExit(f"{self.path} holds a {saved.get('command')!r} run with other arguments "
                                 f"(file vs now: {diff or saved.get('args')}); use another --output or delete it")
            self.units = saved["units"]
            print(f"resuming from {self.path}: {len(self.units)} unit(s) done ({', '.join(self.units)})", flush=True)

    def save(self, name: str, result) -> None:
        self.units[name] = result
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"command": self.command, "args": self.args, "units": self.units},
                                      indent=1) + "\n")
            tmp.replace(self.path)  # atomic: a kill mid-write leaves the previous file


def _result_args(args, *names) -> dict:
    common = ("policy", "lenvm", "candidates", "top_p", "min_p", "batch_size", "offset", "num_prompts", "sample",
              "temperature", "seed")
    result = {k: getattr(args, k) for k in common + names}
    # the device type and dtype change the completions; recorded only off the defaults (CPU, float32), so files
    # written before these options existed stay valid
    if getattr(args, "dtype", "float32") != "float32":
        result["dtype"] = args.dtype
    if torch.device(getattr(args, "device", "cpu")).type != "cpu":
        result["device"] = torch.device(args.device).type
    return result


def _decoding(args) -> str:
    mode = f"sampled at temperature {args.temperature:g}, seed {args.seed}" if args.sample else "greedy"
    min_p = "the default (0.1 under a hard constraint, else 0)" if args.min_p is None else f"{args.min_p:g}"
    return f"{mode}, top-{args.candidates}, top-p {args.top_p:g}, min-p {min_p}"


def _pm(value: float, se: float, digits: int) -> str:
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def length_score(args) -> None:
    prompts, _ = gsm8k(args.offset, args.num_prompts)
    store = Resumable(args.output, "length-score", _result_args(args, "targets", "max_factor", "unit",
                                                                "tokens_per_word"))
    todo = [t for t in args.targets if str(t) not in store.units]
    if todo:
        policy, tokenizer, lenvm = load_models(args)
    start = time.perf_counter()
    for i, target in enumerate(todo, 1):
        t0 = time.perf_counter()
        rows = length_score_benchmark(policy, tokenizer, lenvm, prompts, [target], unit=args.unit,
                                      tokens_per_word=args.tokens_per_word, top_k=args.candidates,
                                      top_p=args.top_p, min_p=args.min_p, do_sample=args.sample,
                                      temperature=args.temperature, seed=args.seed, batch_size=args.batch_size,
                                      max_new_tokens_factor=args.max_factor)[target]
        store.save(str(target), {name: vars(r) for name, r in rows.items()})
        now = time.perf_counter()
        print(f"[{i}/{len(todo)}] target {target}: {now - t0:.0f} s (elapsed {now - start:.0f} s); "
              + ", ".join(f"{k} LS {v.score:.1f} ± {v.score_se:.1f}" for k, v in rows.items()), flush=True)
    results = {t: {name: LengthReport(**r) for name, r in store.units[str(t)].items()} for t in args.targets}
    per_word = f", the LenVM at {args.tokens_per_word:g} tokens a word" if args.unit == "words" else ""
    print(f"\nEqual-To length score in {args.unit} (± standard error over completions), {len(prompts)} GSM8K test "
          f"questions from row {args.offset}, the target stated in the prompt of the prompt-only and LenVM arms"
          f"{per_word}; {_decoding(args)}, completions capped at {args.max_factor:g}x the LenVM's token target; "
          f"LenVM {args.lenvm}")
    methods = list(next(iter(results.values())))
    print(f"{'target':>7}  " + "  ".join(f"{name:>38}" for name in methods))
    for target, rows in results.items():
        print(f"{target:>7}  " + "  ".join(
            (f"LS {_pm(r.score, r.score_se, 1)} (len {_pm(r.mean_length, r.mean_length_se, 1)})"
             + (f" -{r.dropped}" if r.dropped else "")).rjust(38) for r in rows.values()))
    averages = average_over_targets(results)
    print(f"{'average':>7}  " + "  ".join(f"LS {averages[name]:.1f}".rjust(38) for name in methods))
    print("(average: the mean of the per-target scores; -N: N answers of length <= 1 left out, as LIFEBench does)")
    if args.output:
        print("results:", args.output)


def _arm_record(completions, correct) -> dict:
    from lenvm_rl.rewards import extract_answer

    return {"completions": [{"length": c.length, "finish_reason": c.finish_reason, "correct": bool(ok),
                             "answer": extract_answer(c.text), "text": c.text}
                            for c, ok in zip(completions, correct)]}


def tradeoff(args) -> None:
    prompts, answers = gsm8k(args.offset, args.num_prompts)
    store = Resumable(args.output, "tradeoff", _result_args(args, "betas", "budgets", "max_new_tokens"))
    units = ["unguided"] + [f"beta {b:g}" for b in args.betas if b != 0.0]
    todo = [u for u in units if u not in store.units]
    if todo:
        policy, tokenizer, lenvm = load_models(args)
    arm = dict(max_new_tokens=args.max_new_tokens, top_k=args.candidates, top_p=args.top_p, min_p=args.min_p,
               temperature=args.temperature, do_sample=args.sample, batch_size=args.batch_size, seed=args.seed)
    start = time.perf_counter()
    for i, unit in enumerate(todo, 1):
        t0 = time.perf_counter()
        beta = 0.0 if unit == "unguided" else float(unit.split()[1])
        out, correct = tradeoff_arm(policy, tokenizer, None if unit == "unguided" else lenvm, prompts, answers,
                                    beta=beta, **arm)
        points = [tilt_point(out, correct, beta)]
        if unit == "unguided":
            points += [budget_baseline(out, correct, b) for b in args.budgets]
        store.save(unit, {"points": [vars(p) for p in points], **_arm_record(out, correct)})
        now = time.perf_counter()
        p = points[0]
        print(f"[{i}/{len(todo)}] {unit}: {now - t0:.0f} s (elapsed {now - start:.0f} s); accuracy "
              f"{_pm(p.accuracy, p.accuracy_se, 3)}, answer rate {_pm(p.answer_rate, p.answer_rate_se, 3)}, "
              f"mean length {_pm(p.mean_length, p.mean_length_se, 1)}", flush=True)
    points = [TradeoffPoint(**p) for u in units for p in store.units[u]["points"]]
    print(f"\nGSM8K accuracy and answer rate (a parseable #### N) vs mean length, ± standard error; "
          f"{len(prompts)} test questions from row {args.offset}, {_decoding(args)}, max {args.max_new_tokens} "
          f"new tokens; LenVM {args.lenvm}")
    print(f"{'method':>6} {'setting':>8}  {'accuracy':>15}  {'answer rate':>15}  {'mean length':>15}  {'n':>4}")
    for p in points:
        print(f"{p.method:>6} {p.setting:>8g}  {_pm(p.accuracy, p.accuracy_se, 3):>15}  "
              f"{_pm(p.answer_rate, p.answer_rate_se, 3):>15}  {_pm(p.mean_length, p.mean_length_se, 1):>15}  "
              f"{p.n:>4}")
    if args.png:
        print("plot:", plot_tradeoff(points, args.png, title=f"GSM8K, {len(prompts)} questions, {_decoding(args)}"))
    if args.output:
        print("results:", args.output)


def main() -> None:
    global GSM8K_TEST
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
        p.add_argument("--min-p", type=float, default=None,
                       help="candidate set: min-p within the top-k (default: 0.1 under a hard constraint, else 0)")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--offset", type=int, default=200, help="first GSM8K test row (held out)")
        p.add_argument("--num-prompts", type=int, default=20)
        p.add_argument("--data", default=GSM8K_TEST,
                       help="GSM8K: the Hub id (default) or a local test.jsonl / folder (offline machines)")
        add_device_arguments(p)
    sub.choices["speed"].add_argument("--prefix", type=int, default=256)
    sub.choices["speed"].add_argument("--tokens", type=int, default=32,
                                      help="tokens per timed generate, at least 8: the per-later-token time is "
                                           "(all - first) / (N - 1), which a few tokens leave to timer noise")
    sub.choices["speed"].add_argument("--naive-tokens", type=int, default=2)
    sub.choices["speed"].add_argument("--repeats", type=int, default=3)
    sub.choices["speed"].add_argument("--compile", action="store_true",
                                      help="add the static-cache, torch.compile'd contenders (compiling takes minutes)")
    for name in ("length-score", "tradeoff"):
        p = sub.choices[name]
        p.add_argument("--sample", action="store_true", help="sample (default: greedy)")
        p.add_argument("--temperature", type=float, default=1.0)
        p.add_argument("--seed", type=int, default=0, help="torch.manual_seed before each batch")
        p.add_argument("--output", default=None,
                       help="JSON results, written after every finished unit; a re-run with the same arguments "
                            "resumes from it")
    sub.choices["length-score"].add_argument("--targets", type=int, nargs="+", default=[32, 64, 128, 256])
    sub.choices["length-score"].add_argument("--max-factor", type=float, default=2.0)
    sub.choices["length-score"].add_argument("--unit", choices=["tokens", "words"], default="tokens",
                                             help="targets in answer tokens (EOS not counted) or LIFEBench words")
    sub.choices["length-score"].add_argument("--tokens-per-word", type=float, default=1.0,
                                             help="with --unit words: the LenVM's token target is this times the "
                                                  "word target, plus EOS (default 1: the reference's client passes "
                                                  "the word target as the token target)")
    sub.choices["tradeoff"].add_argument("--betas", type=float, nargs="+", default=[-5.0, -20.0, -50.0, -200.0])
    sub.choices["tradeoff"].add_argument("--budgets", type=int, nargs="+", default=[64, 128, 192, 256])
    sub.choices["tradeoff"].add_argument("--max-new-tokens", type=int, default=512)
    sub.choices["tradeoff"].add_argument("--png", default=None)
    args = resolve_device_arguments(parser.parse_args())
    if args.command == "speed" and (args.tokens < 8 or args.naive_tokens < 1):
        parser.error(f"speed needs --tokens >= 8 and --naive-tokens >= 1, got {args.tokens} and {args.naive_tokens}: "
                     "the per-later-token time is (all - first) / (N - 1), which a few tokens leave to timer noise "
                     "(it printed negative times at --tokens 2)")
    GSM8K_TEST = args.data  # read by gsm8k() and prefix_ids()
    torch.set_num_threads(args.threads)
    print(environment_header(args.device, args.dtype), flush=True)
    args.func(args)


if __name__ == "__main__":
    main()
