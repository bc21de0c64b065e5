"""Length-prediction throughput against a bare backbone forward over the same batches.

    python bench/bench_predict.py --num-prompts 128 --batch-size 16 --repeats 3

Contenders run side by side in one process, interleaved round by round (these machines are
noisy), on the same GSM8K test prompts under SmolLM2-135M-Instruct's chat template:

- ``predict (sorted)``: :meth:`LengthPredictor.predict` end to end: chat template, tokenization,
  length-sorted batches, trunk + value head, inversion to lengths.
- ``predict (unsorted)``: the same, batches in input order (what sorting saves).
- ``backbone forward``: ``AutoModelForCausalLM`` forward (trunk + LM head) over the sorted,
  pre-tokenized batches: the cost of one bare forward pass, the reference point.

Prints the device and the library versions, then prompts/s (median over repeats), the ratio to the bare
forward, and the padding fraction. ``--device`` (default ``auto``: CUDA when available) and ``--dtype`` (default
float32) place the model; timers wait for the GPU.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from lenvm_rl.benchmarking import add_device_arguments, environment_header, resolve_device_arguments, timed
from lenvm_rl.data import load_prompts
from lenvm_rl.predict import LengthPredictor

DEFAULT_DATA = "openai/gsm8k:main"  # the Hub's GSM8K; its test split


def batches_of(sequences, order, batch_size):
    for start in range(0, len(order), batch_size):
        chunk = [sequences[i] for i in order[start : start + batch_size]]
        width = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        yield ids, mask


def padding_fraction(sequences, order, batch_size) -> float:
    real = padded = 0
    for _, mask in batches_of(sequences, order, batch_size):
        real += int(mask.sum())
        padded += mask.numel()
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="model short name or directory")
    parser.add_argument("--data", default=DEFAULT_DATA, help="the prompts (their 'question' field): a JSONL file, or "
                        "a Hub dataset id (repo:config), its test split (default: %(default)s)")
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    add_device_arguments(parser)
    args = resolve_device_arguments(parser.parse_args())

    print(environment_header(args.device, args.dtype), flush=True)
    torch.set_grad_enabled(False)
    prompts = load_prompts(args.data, prompt_column="question", split="test", limit=args.num_prompts)
    predictor = LengthPredictor.from_pretrained(args.model, batch_size=args.batch_size, dtype=args.dtype,
                                                device=args.device)
    unsorted = LengthPredictor(predictor.model, predictor.tokenizer, batch_size=args.batch_size)
    encoded = [predictor.encode_prompt(p) for p in prompts]
    by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    in_order = list(range(len(encoded)))

    def predict_unsorted():
        # Same API path, one call per input-order batch, so no batch is length-sorted across the set.
        for start in range(0, len(prompts), args.batch_size):
            unsorted.predict(prompts[start : start + args.batch_size])

    def backbone_forward():
        for ids, mask in batches_of(encoded, by_length, args.batch_size):
            predictor.model.backbone(input_ids=ids.to(args.device), attention_mask=mask.to(args.device))

    contenders = {
        "predict (sorted)": (lambda: predictor.predict(prompts), padding_fraction(encoded, by_length, args.batch_size)),
        "predict (unsorted)": (predict_unsorted, padding_fraction(encoded, in_order, args.batch_size)),
        "backbone forward": (backbone_forward, padding_fraction(encoded, by_length, args.batch_size)),
    }
    times = {name: [] for name in contenders}
    backbone_forward()  # warm-up
    for _ in range(args.repeats):
        for name, (fn, _) in contenders.items():
            times[name].append(timed(fn, args.device))

    base = statistics.median(times["backbone forward"])
    tokens = sum(len(e) for e in encoded)
    print(f"model={args.model} prompts={len(prompts)} prompt tokens={tokens} (mean {tokens / len(prompts):.0f}) "
          f"batch_size={args.batch_size} repeats={args.repeats} threads={torch.get_num_threads()}")
    print(f"{'contender':<20} {'prompts/s':>10} {'vs backbone':>12} {'padding':>8}")
    for name, (_, pad) in contenders.items():
        median = statistics.median(times[name])
        print(f"{name:<20} {len(prompts) / median:>10.1f} {base / median:>11.2f}x {pad:>8.1%}")


if __name__ == "__main__":
    main()
