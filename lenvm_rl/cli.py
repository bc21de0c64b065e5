"""The ``lenvm-rl`` command line.

    lenvm-rl predict --model smollm2-135m --prompt "How many legs do 3 spiders have?"
    lenvm-rl predict --model ./my-lenvm --input prompts.jsonl --format jsonl > lengths.jsonl
    lenvm-rl trace   --model ./my-lenvm --prompt "..." --completion "..."
    lenvm-rl demo

Model arguments take a LenVM checkpoint directory, a Hub id, or a short name of an embedded
backbone (``smollm2-135m``, which has an untrained head). Bad input exits with status 2 and a
message naming the argument, file or line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lenvm_rl.modeling import EMBEDDED_MODELS

__all__ = ["main"]

DEMO_PROMPTS = [
    "Tom has 3 boxes with 12 pencils in each box. He gives away 9 pencils. How many pencils does he have left?",
    "A bakery sells muffins for $2 each. Sara buys 7 muffins and pays with a $20 bill. How much change does she get?",
    "What is 15 + 27?",
]
DEMO_COMPLETION = "Tom starts with 3 * 12 = 36 pencils. After giving away 9 he has 36 - 9 = 27.\n#### 27"


class CLIError(Exception):
    """Bad input: printed as ``lenvm-rl <command>: error: <message>``, exit status 2."""


def _load_predictor(args):
    from lenvm_rl.predict import LengthPredictor

    try:
        return LengthPredictor.from_pretrained(
            args.model,
            gamma=args.gamma,
            dtype=args.dtype,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            batch_size=args.batch_size,
        )
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(f"--model {args.model}: {err}") from None


def _prompt_text(prompt) -> str:
    text = prompt if isinstance(prompt, str) else " | ".join(str(m.get("content", "")) for m in prompt)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def _print_predictions(prompts, predictions, predictor, fmt: str, out) -> None:
    if fmt == "jsonl":
        for i, (prompt, pred) in enumerate(zip(prompts, predictions)):
            record = {"index": i, "prompt": prompt, "value": pred.value, "length": pred.length,
                      "gamma": predictor.gamma, "untrained": predictor.untrained}
            out.write(json.dumps(record) + "\n")
        return
    if predictor.untrained:
        out.write("NOTE: untrained value head (fresh, seed 0) -- these numbers are not predictions yet.\n")
    out.write(f"{'#':>3}  {'pred. tokens':>12}  {'value V(s0)':>11}  prompt\n")
    for i, (prompt, pred) in enumerate(zip(prompts, predictions)):
        out.write(f"{i:>3}  {pred.length:>12.1f}  {pred.value:>11.4f}  {_prompt_text(prompt)}\n")


def _print_trace(trace, predictor, fmt: str, out) -> None:
    rows = [("<s0>", None, trace.values[0].item(), trace.lengths[0].item())]
    rows += [(tok, tid, v, l) for tok, tid, v, l in
             zip(trace.tokens, trace.token_ids, trace.values[1:].tolist(), trace.lengths[1:].tolist())]
    if fmt == "jsonl":
        for t, (tok, tid, v, l) in enumerate(rows):
            out.write(json.dumps({"t": t, "token": tok, "token_id": tid, "value": v, "length": l,
                                  "untrained": predictor.untrained}) + "\n")
        return
    if predictor.untrained:
        out.write("NOTE: untrained value head (fresh, seed 0) -- these numbers are not predictions yet.\n")
    out.write(f"{'t':>4}  {'token':<16}  {'value':>8}  {'remaining':>9}\n")
    for t, (tok, _, v, l) in enumerate(rows):
        out.write(f"{t:>4}  {tok!r:<16.16}  {v:>8.4f}  {l:>9.1f}\n")


def cmd_predict(args) -> None:
    from lenvm_rl.data import load_prompts

    prompts = list(args.prompt or [])
    if args.input:
        try:
            prompts += load_prompts(args.input, prompt_column=args.prompt_column)
        except (FileNotFoundError, ValueError) as err:
            raise CLIError(f"--input: {err}") from None
    if not prompts:
        raise CLIError("give at least one --prompt or an --input JSONL file")
    predictor = _load_predictor(args)
    predictions = predictor.predict(prompts, progress=len(prompts) > args.batch_size)
    _print_predictions(prompts, predictions, predictor, args.format, sys.stdout)


def cmd_trace(args) -> None:
    predictor = _load_predictor(args)
    _print_trace(predictor.trace(args.prompt, args.completion), predictor, args.format, sys.stdout)


def cmd_demo(args) -> None:
    out = sys.stdout
    out.write(f"== lenvm-rl demo on the embedded backbone {args.model} ==\n")
    out.write("The value head is freshly initialised (UNTRAINED): this shows the pipeline, not real lengths.\n\n")
    predictor = _load_predictor(args)
    out.write("-- length prediction at the prompt boundary --\n")
    _print_predictions(DEMO_PROMPTS, predictor.predict(DEMO_PROMPTS), predictor, "table", out)
    out.write("\n-- per-token trace along a completion --\n")
    completion = DEMO_COMPLETION + (predictor.tokenizer.eos_token or "")
    _print_trace(predictor.trace(DEMO_PROMPTS[0], completion), predictor, "table", out)


def cmd_rollout(args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lenvm_rl.data import load_prompts
    from lenvm_rl.data.rollouts import RolloutConfig, resolve_backend, sample_rollouts
    from lenvm_rl.modeling import resolve_model_path

    try:
        config = RolloutConfig(
            num_completions=args.num_completions, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, backend=args.backend,
        )
        prompts = load_prompts(args.prompts, prompt_column=args.prompt_column, split=args.split,
                               limit=args.limit, offset=args.offset)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    path = resolve_model_path(args.model)
    if resolve_backend(config.backend) == "vllm":
        model = path
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=args.dtype, use_safetensors=True, trust_remote_code=args.trust_remote_code
            )
        except OSError as err:
            raise CLIError(f"--model {args.model}: {err}") from None
        model = model.to(args.device or "cpu").eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    try:
        records = sample_rollouts(model, tokenizer, prompts, args.output, config, model_name=args.model)
    except ValueError as err:
        raise CLIError(str(err)) from None
    ended = sum(r["finish_reason"] == "eos" for r in records)
    mean = sum(r["completion_length"] for r in records) / len(records)
    print(f"{args.output}: {len(records)} completions, {ended} ended with EOS, "
          f"{len(records) - ended} cut at {config.max_new_tokens} tokens, mean length {mean:.1f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lenvm-rl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_args(p, default=None):
        p.add_argument("--model", required=default is None, default=default,
                       help="LenVM checkpoint directory, Hub id, or embedded short name "
                            f"({', '.join(EMBEDDED_MODELS)}: untrained head)")
        p.add_argument("--gamma", type=float, default=None,
                       help="discount of the value head; read from the checkpoint's config.json when omitted")
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                       help="backbone dtype (the head always runs in float32); default: as saved")
        p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
        p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default: 16)")
        p.add_argument("--trust-remote-code", action="store_true",
                       help="allow custom modelling code from the checkpoint (off by default)")

    p = sub.add_parser("predict", help="predict remaining tokens at the prompt boundary",
                       description="Predict the expected number of completion tokens for each prompt.")
    model_args(p)
    p.add_argument("--prompt", action="append", help="a prompt (user message); repeat for several")
    p.add_argument("--input", help="JSONL file, one object per line with 'prompt' (text) or 'messages' (chat)")
    p.add_argument("--prompt-column", default=None,
                   help="JSONL field holding the prompt (default: messages if present, else prompt)")
    p.add_argument("--format", choices=["table", "jsonl"], default="table", help="output format (default: table)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("trace", help="per-token values along a completion",
                       description="Per-token values and predicted remaining tokens along a completion.")
    model_args(p)
    p.add_argument("--prompt", required=True, help="the prompt (user message)")
    p.add_argument("--completion", required=True,
                   help="the completion text (append the EOS token to score a finished completion)")
    p.add_argument("--format", choices=["table", "jsonl"], default="table", help="output format (default: table)")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("rollout", help="sample n completions per prompt from a policy (resumable)",
                       description="Sample completions for value pretraining; re-running resumes with no duplicates.")
    p.add_argument("--model", required=True, help="policy: model directory, Hub id or short name")
    p.add_argument("--prompts", required=True, help="JSONL file or Hub dataset id (repo or repo:config)")
    p.add_argument("--prompt-column", default=None,
                   help="column with the prompt text or chat messages (default: messages, else prompt)")
    p.add_argument("--split", default="train", help="split of a Hub dataset (default: train)")
    p.add_argument("--offset", type=int, default=0, help="first prompt row to use (default: 0)")
    p.add_argument("--limit", type=int, default=None, help="number of prompt rows to use (default: all)")
    p.add_argument("--output", required=True, help="JSONL file the records are appended to")
    p.add_argument("--num-completions", "-n", type=int, default=8, help="completions per prompt (default: 8)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature (default: 1.0); use the one RL or decoding will use")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus threshold (default: 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=512,
                   help="length limit; longer completions are recorded as cut (censored) (default: 512)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per generate call (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    p.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto",
                   help="generation backend; auto uses vLLM when installed (default: auto)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="policy dtype")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom modelling code (off by default)")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("demo", help="offline demo on the embedded backbone",
                       description="Length prediction and a per-token trace on the embedded default backbone.")
    model_args(p, default="smollm2-135m")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        args.func(args)
    except CLIError as err:
        print(f"lenvm-rl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
