"""The ``lenvm-rl`` command line.

    lenvm-rl predict --model smollm2-135m --prompt "How many legs do 3 spiders have?"
    lenvm-rl predict --model ./my-lenvm --input prompts.jsonl --format jsonl > lengths.jsonl
    lenvm-rl trace   --model ./my-lenvm --prompt "..." --completion "..."
    lenvm-rl rollout --model smollm2-135m --prompts prompts.jsonl -n 8 --output rollouts.jsonl
    lenvm-rl pretrain --model_name_or_path smollm2-135m --train_rollouts rollouts.jsonl --output_dir my-lenvm
    lenvm-rl evaluate --model ./my-lenvm --rollouts held_out.jsonl --baseline-rollouts rollouts.jsonl
    lenvm-rl generate --policy smollm2-135m --lenvm ./my-lenvm --prompt "..." --constraint equal --target 128
    lenvm-rl analyze --model ./my-lenvm --input completions.jsonl --html trace.html
    lenvm-rl serve --model ./my-lenvm --port 30010
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
from pathlib import Path

from lenvm_rl.modeling import EMBEDDED_MODELS

__all__ = ["main"]

logger = logging.getLogger("lenvm_rl.cli")


class CLIError(Exception):
    """Bad input: printed as ``lenvm-rl <command>: error: <message>``, exit status 2."""


DEVICE_HELP = "torch device, e.g. cpu or cuda:0; auto: cuda when available, else cpu (default: auto)"
PROMPT_FORMAT_HELP = ("how a string prompt becomes s_0: raw (the text as is, TRL's convention) or chat (one user "
                      "message under the chat template); chat messages always use the template (default: the format "
                      "the LenVM was pretrained on; chat for a checkpoint that records none)")


def resolve_device(device: str) -> str:
    """The torch device a ``--device`` value names: ``auto`` is ``cuda`` where CUDA is available, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
            prompt_format=getattr(args, "prompt_format", None),
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
    rows += list(zip(trace.tokens, trace.token_ids, trace.values[1:].tolist(), trace.lengths[1:].tolist()))
    if fmt == "jsonl":
        for t, (tok, tid, value, length) in enumerate(rows):
            out.write(json.dumps({"t": t, "token": tok, "token_id": tid, "value": value, "length": length,
                                  "untrained": predictor.untrained}) + "\n")
        return
    if predictor.untrained:
        out.write("NOTE: untrained value head (fresh, seed 0) -- these numbers are not predictions yet.\n")
    out.write(f"{'t':>4}  {'token':<16}  {'value':>8}  {'remaining':>9}\n")
    for t, (tok, _, value, length) in enumerate(rows):
        out.write(f"{t:>4}  {tok!r:<16.16}  {value:>8.4f}  {length:>9.1f}\n")


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
    """The offline pipeline on the embedded backbone: rollouts -> value pretraining -> predictions."""
    import torch
    from transformers import AutoTokenizer
    from trl import ModelConfig

    from lenvm_rl.core import return_consistent_length
    from lenvm_rl.data import RolloutConfig, generate_word_problems, group_by_prompt, sample_rollouts, to_messages
    from lenvm_rl.modeling import load_backbone, resolve_model_path
    from lenvm_rl.predict import LengthPredictor
    from lenvm_rl.scripts.pretrain import PretrainScriptArguments
    from lenvm_rl.scripts.pretrain import main as pretrain
    from lenvm_rl.trainers import LenVMConfig

    out = Path(args.output_dir)
    problems = generate_word_problems(args.train_prompts + args.eval_prompts, seed=args.seed)
    prompts = [to_messages(p.question) for p in problems]
    train_prompts, eval_prompts = prompts[: args.train_prompts], prompts[args.train_prompts :]
    print(f"== lenvm-rl demo: {args.model}, {len(train_prompts)} + {len(eval_prompts)} generated word problems, "
          f"n={args.num_completions}, temperature {args.temperature}, max {args.max_new_tokens} tokens ==")

    print("\n[1/3] rollouts of the policy (resumable; written to", out, ")")
    path = resolve_model_path(args.model)
    policy = load_backbone(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    sampler = RolloutConfig(num_completions=args.num_completions, temperature=args.temperature,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                            backend="hf")
    sample_rollouts(policy, tokenizer, train_prompts, out / "train_rollouts.jsonl", sampler, model_name=args.model)
    eval_sampler = RolloutConfig(**{**vars(sampler), "num_completions": args.eval_completions})
    eval_records = sample_rollouts(policy, tokenizer, eval_prompts, out / "eval_rollouts.jsonl", eval_sampler,
                                   model_name=args.model)
    del policy

    print("\n[2/3] value pretraining of a LenVM initialised from the same model")
    training_args = LenVMConfig(
        output_dir=str(out / "lenvm"), use_cpu=True, num_train_epochs=args.epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, freeze_backbone=True,
        lr_scheduler_type="constant", logging_steps=5, save_strategy="no", report_to="none", seed=args.seed,
    )
    script_args = PretrainScriptArguments(train_rollouts=[str(out / "train_rollouts.jsonl")],
                                          eval_rollouts=[str(out / "eval_rollouts.jsonl")])
    pretrain(script_args, training_args, ModelConfig(model_name_or_path=args.model))

    print("\n[3/3] predicted length at the prompt boundary vs the sampled completions")
    predictor = LengthPredictor.from_pretrained(out / "lenvm")
    predictions = predictor.predict(eval_prompts)
    groups = group_by_prompt(eval_records)
    print(f"{'#':>3}  {'predicted':>9}  {'sampled (return-consistent)':>27}  question")
    for i, (prompt, pred) in enumerate(zip(eval_prompts, predictions)):
        lengths = [rec["completion_length"] for rec in groups[i]]
        truth = return_consistent_length(torch.tensor([lengths]), predictor.gamma).item()
        print(f"{i:>3}  {pred.length:>9.1f}  {truth:>27.1f}  {_prompt_text(prompt)}")


def cmd_rollout(args) -> None:
    from transformers import AutoTokenizer

    from lenvm_rl.data import load_prompts
    from lenvm_rl.data.prompts import apply_prompt_format
    from lenvm_rl.data.rollouts import RolloutConfig, resolve_backend, sample_rollouts
    from lenvm_rl.modeling import load_backbone, resolve_model_path

    try:
        config = RolloutConfig(
            num_completions=args.num_completions, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, backend=args.backend,
        )
        prompts = [apply_prompt_format(p, args.prompt_format) for p in load_prompts(
            args.prompts, prompt_column=args.prompt_column, split=args.split, limit=args.limit, offset=args.offset)]
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    path = resolve_model_path(args.model)
    if resolve_backend(config.backend) == "vllm":
        model = _vllm_llm(path, args)
    else:
        try:
            model = load_backbone(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
        except FileNotFoundError as err:
            raise CLIError(f"--model {args.model}: {err}") from None
        model = model.to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    try:
        records = sample_rollouts(model, tokenizer, prompts, args.output, config, model_name=args.model,
                                   offset=args.offset)
    except ValueError as err:
        raise CLIError(str(err)) from None
    ended = sum(r["finish_reason"] == "eos" for r in records)
    mean = sum(r["completion_length"] for r in records) / len(records)
    print(f"{args.output}: {len(records)} completions, {ended} ended with EOS, "
          f"{len(records) - ended} cut at {config.max_new_tokens} tokens, mean length {mean:.1f}")


def _vllm_llm(path: str, args):
    """A ``vllm.LLM`` with the ``--dtype``, ``--seed`` and ``--vllm-*`` options of ``lenvm-rl rollout``."""
    from lenvm_rl.data import vllm_engine

    try:
        return vllm_engine(
            path, dtype=args.dtype, seed=args.seed, trust_remote_code=args.trust_remote_code,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            tensor_parallel_size=args.vllm_tensor_parallel_size, max_model_len=args.vllm_max_model_length,
            enforce_eager=args.vllm_enforce_eager,
        )
    except ImportError as err:
        raise CLIError(str(err)) from None


def cmd_evaluate(args) -> None:
    from lenvm_rl.data import read_rollouts
    from lenvm_rl.evaluation import (
        NOISE_FLOOR_ROW,
        SPLIT_HALF_ROW,
        constant_baseline_value,
        evaluate_constant,
        evaluate_lenvm,
        evaluate_prompt_length_baseline,
        format_report,
        noise_floor,
        prompt_length_baseline,
        split_half_mre,
    )
    from lenvm_rl.modeling import LenVM

    if args.bootstrap < 1:
        raise CLIError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    try:
        records = read_rollouts(args.rollouts)
        baseline_records = read_rollouts(args.baseline_rollouts) if args.baseline_rollouts else None
        model = LenVM.from_pretrained(args.model, gamma=args.gamma, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    rows = {"LenVM": evaluate_lenvm(model, records, batch_size=args.batch_size, progress=True)}
    if baseline_records:
        baseline = constant_baseline_value(baseline_records, model.gamma)
        rows["constant baseline"] = evaluate_constant(baseline, records, model.gamma)
        try:
            regression = prompt_length_baseline(baseline_records, model.gamma)
        except ValueError as err:  # e.g. every training prompt has the same length
            print(f"note: no prompt-length regression row: {err}", file=sys.stderr)
        else:
            rows["prompt-length regression"] = evaluate_prompt_length_baseline(regression, records)
    references = {}
    for name, reference, options in ((NOISE_FLOOR_ROW, noise_floor, {"num_bootstrap": args.bootstrap}),
                                     (SPLIT_HALF_ROW, split_half_mre, {})):
        try:
            references[name] = reference(records, model.gamma, seed=args.seed, **options)
        except ValueError as err:  # a prompt with a single sample
            print(f"note: no {name} row: {err}", file=sys.stderr)
    if args.format == "json":
        report = {name: vars(row) for name, row in rows.items()}
        report.update({name: {"prompt_mre": mean, "prompt_mre_se": se} for name, (mean, se) in references.items()})
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(rows, references))


def cmd_generate(args) -> None:
    from lenvm_rl.data import load_prompts
    from lenvm_rl.decoding import GuidanceConfig
    from lenvm_rl.decoding.pipelines import generate_completions

    prompts = list(args.prompt or [])
    try:
        if args.input:
            prompts += load_prompts(args.input, prompt_column=args.prompt_column)
        guidance = GuidanceConfig(constraint=args.constraint, target=args.target, beta=args.beta, top_k=args.top_k,
                                  top_p=args.top_p, min_p=args.min_p, temperature=args.temperature)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    if not prompts:
        raise CLIError("give at least one --prompt or an --input JSONL file")
    if args.lenvm is None and (args.constraint is not None or args.beta != 0.0):
        raise CLIError("--constraint and --beta need a --lenvm")
    try:
        generate_completions(
            policy=args.policy, lenvm=args.lenvm, prompts=prompts, guidance=guidance, out=sys.stdout, fmt=args.format,
            max_new_tokens=args.max_new_tokens, do_sample=args.sample, batch_size=args.batch_size, seed=args.seed,
            gamma=args.gamma, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
            prompt_format=args.prompt_format,
        )
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None


def cmd_analyze(args) -> None:
    from lenvm_rl.decoding.pipelines import analyze_completions, read_completions

    if args.input and (args.prompt or args.completion):
        raise CLIError("give either --input or --prompt with --completion, not both")
    if args.input:
        try:
            records = read_completions(args.input)
        except (FileNotFoundError, ValueError) as err:
            raise CLIError(f"--input: {err}") from None
    elif args.prompt is not None and args.completion is not None:
        records = [{"prompt": args.prompt, "completion": args.completion}]
    else:
        raise CLIError("give --input, or --prompt with --completion")
    if not 0 <= args.index < len(records):  # before loading the model
        raise CLIError(f"--index {args.index} is out of range for {len(records)} completions")
    predictor = _load_predictor(args)
    for record in records:
        if "completion_ids" not in record:
            record["completion_ids"] = predictor.tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
    try:
        analyze_completions(predictor, records, out=sys.stdout, fmt=args.format, top=args.top,
                            min_count=args.min_count, html_path=args.html, index=args.index)
    except ValueError as err:
        raise CLIError(str(err)) from None


def cmd_serve(args) -> None:
    from lenvm_rl.serving import require_serving_dependencies

    try:
        require_serving_dependencies()
    except ImportError as err:
        raise CLIError(str(err)) from None
    if args.max_batch_tokens < 1:
        raise CLIError(f"--max-batch-tokens must be >= 1, got {args.max_batch_tokens}")
    if not 0.0 <= args.max_padding < 1.0:
        raise CLIError(f"--max-padding must be in [0, 1), got {args.max_padding}")
    model = _load_served_model(args)
    from lenvm_rl.serving import serve

    serve(model, host=args.host, port=args.port, max_batch_tokens=args.max_batch_tokens,
          max_batch_size=args.batch_size, max_padding=args.max_padding)


def _load_served_model(args):
    """The LenVM to serve, as a ``LengthPredictor`` when it has a tokenizer (``--tokenizer``, else the one
    saved in the checkpoint), else as a bare ``LenVM``: the reference protocol sends token ids, so only
    ``/predict`` needs a tokenizer."""
    from transformers import AutoTokenizer

    from lenvm_rl.modeling import LenVM
    from lenvm_rl.modeling.vocabulary import check_vocabulary, saved_tokenizer
    from lenvm_rl.predict import LengthPredictor

    if args.model in EMBEDDED_MODELS:  # a bare backbone (untrained head) and its tokenizer
        predictor = _load_predictor(args)
        model, tokenizer, untrained = predictor.model, predictor.tokenizer, True
    else:
        try:
            model = LenVM.from_pretrained(args.model, gamma=args.gamma, dtype=args.dtype, device=args.device,
                                          trust_remote_code=args.trust_remote_code)
        except (FileNotFoundError, ValueError) as err:
            raise CLIError(f"--model {args.model}: {err}") from None
        untrained = False
        try:
            tokenizer = None if args.tokenizer else saved_tokenizer(model.config.name_or_path)
        except (OSError, ValueError) as err:
            raise CLIError(f"--model {args.model}: its tokenizer does not load ({err}); "
                           "pass --tokenizer PATH") from None
    if args.tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=args.trust_remote_code)
            check_vocabulary(tokenizer, model, names=(f"--tokenizer {args.tokenizer}", f"the LenVM {args.model}"))
        except (OSError, ValueError) as err:
            raise CLIError(f"--tokenizer {args.tokenizer}: {err}") from None
    if tokenizer is None:
        logger.warning("%s holds no tokenizer: serving /encode, /tree_value, /token_value, /candidate_value and "
                       "/flush_cache (token ids); /predict answers HTTP 400 until the server is started with "
                       "--tokenizer PATH", args.model)
        return model
    return LengthPredictor(model, tokenizer, batch_size=args.batch_size, untrained=untrained,
                           prompt_format=getattr(args, "prompt_format", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lenvm-rl", description="Length Value Models: predict, trace, "
                                     "sample rollouts, pretrain, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_args(p, default=None, batch_size=16):
        p.add_argument("--model", required=default is None, default=default,
                       help="LenVM checkpoint directory, Hub id, or embedded short name "
                            f"({', '.join(EMBEDDED_MODELS)}: untrained head)")
        p.add_argument("--gamma", type=float, default=None,
                       help="discount of the value head; read from the checkpoint's config.json when omitted")
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                       help="backbone dtype (the head always runs in float32); default: as saved")
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
        p.add_argument("--batch-size", type=int, default=batch_size,
                       help=f"sequences per forward pass (default: {batch_size})")
        p.add_argument("--trust-remote-code", action="store_true",
                       help="allow custom modelling code from the checkpoint (off by default)")

    p = sub.add_parser("predict", help="predict remaining tokens at the prompt boundary",
                       description="Predict the expected number of completion tokens for each prompt.")
    model_args(p)
    p.add_argument("--prompt", action="append", help="a prompt (text, see --prompt-format); repeat for several")
    p.add_argument("--input", help="JSONL file, one object per line with 'prompt' (text) or 'messages' (chat)")
    p.add_argument("--prompt-column", default=None,
                   help="JSONL field holding the prompt (default: messages if present, else prompt)")
    p.add_argument("--prompt-format", choices=["raw", "chat"], default=None, help=PROMPT_FORMAT_HELP)
    p.add_argument("--format", choices=["table", "jsonl"], default="table", help="output format (default: table)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("trace", help="per-token values along a completion",
                       description="Per-token values and predicted remaining tokens along a completion.")
    model_args(p)
    p.add_argument("--prompt", required=True, help="the prompt (text, see --prompt-format)")
    p.add_argument("--prompt-format", choices=["raw", "chat"], default=None, help=PROMPT_FORMAT_HELP)
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
    p.add_argument("--prompt-format", choices=["raw", "chat"], default="raw",
                   help="how string prompts are sent: raw (the text as is; TRL's convention, what GRPO does with "
                        "a string dataset) or chat (each as one user message under the chat template, as a "
                        "conversational dataset); chat messages always use the template (default: raw)")
    p.add_argument("--split", default="train", help="split of a Hub dataset (default: train)")
    p.add_argument("--offset", type=int, default=0,
                   help="first prompt row to use (default: 0); records keep source rows as prompt_index, so shards "
                        "sampled with different offsets merge (pass several files to pretrain/evaluate)")
    p.add_argument("--limit", type=int, default=None, help="number of prompt rows to use (default: all)")
    p.add_argument("--output", required=True, help="JSONL file the records are appended to")
    p.add_argument("--num-completions", "-n", type=int, default=8, help="completions per prompt (default: 8)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature (default: 1.0); use the one RL or decoding will use")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus threshold (default: 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=512,
                   help="length limit; longer completions are recorded as cut (censored) (default: 512)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="sequences per generate call; records are written after each (default: 16; with vllm, "
                        "use hundreds)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    p.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto",
                   help="generation backend; auto uses vLLM when installed (default: auto)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="policy dtype (default: the checkpoint's for hf; vLLM's auto choice for vllm)")
    p.add_argument("--device", default="auto", help="torch device for the hf backend: " + DEVICE_HELP)
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom modelling code (off by default)")
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.9,
                   help="vllm backend: fraction of GPU memory vLLM may use (default: 0.9)")
    p.add_argument("--vllm-tensor-parallel-size", type=int, default=1,
                   help="vllm backend: GPUs the policy is split across (default: 1)")
    p.add_argument("--vllm-max-model-length", type=int, default=None,
                   help="vllm backend: longest prompt plus completion; smaller saves KV-cache memory "
                        "(default: the model's context length)")
    p.add_argument("--vllm-enforce-eager", action="store_true",
                   help="vllm backend: run without torch.compile and CUDA graphs (faster start-up, slower decoding)")
    p.set_defaults(func=cmd_rollout)

    sub.add_parser("pretrain", add_help=False,
                   help="pretrain a LenVM on rollouts (all TrainingArguments; see lenvm-rl pretrain --help)")

    p = sub.add_parser("evaluate", help="value MSE, prompt MRE and positionwise error on held-out rollouts",
                       description="Evaluate a LenVM on rollouts, beside the constant baseline and prompt-length "
                                   "regression of training rollouts, the noise floor (an oracle scored against K "
                                   "samples) and the split-half MRE (K/2 samples predicting the other K/2); prompt "
                                   "MRE is mean ± standard error over prompts.")
    model_args(p)
    p.add_argument("--rollouts", required=True, nargs="+",
                   help="held-out rollout JSONL (from lenvm-rl rollout); several shards are merged")
    p.add_argument("--baseline-rollouts", default=None, nargs="+",
                   help="training rollout JSONL (or shards); adds the constant baseline (their mean value) and a "
                        "prompt-length regression (return-consistent length on prompt tokens) beside the LenVM")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap resamples per prompt for the noise-floor row, the prompt MRE of an oracle that "
                        "knows each prompt's expected length (default: 200)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise-floor resamples and the split-half partitions (default: 0)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("generate", help="generate with LenVM guidance (tilt or a length target)",
                       description="Generate with a policy, guided by a LenVM: exponential tilting with --beta "
                                   "(< 0: shorter) or a --constraint on the completion length --target (tokens, "
                                   "EOS included). Without --lenvm the policy decodes alone. The equal and at_most "
                                   "constraints keep one candidate per step, so their output is deterministic: "
                                   "--sample and --seed change nothing there and --temperature only reshapes the "
                                   "candidates (a warning says so; the reference's constraints are one-hot too).")
    p.add_argument("--policy", required=True, help="policy: model directory, Hub id or short name")
    p.add_argument("--lenvm", default=None,
                   help="LenVM checkpoint (it may be smaller than the policy but must share its vocabulary)")
    p.add_argument("--prompt", action="append", help="a prompt (text, see --prompt-format); repeat for several")
    p.add_argument("--input", help="JSONL file, one object per line with 'prompt' (text) or 'messages' (chat)")
    p.add_argument("--prompt-column", default=None,
                   help="JSONL field holding the prompt (default: messages if present, else prompt)")
    p.add_argument("--prompt-format", choices=["raw", "chat"], default=None, help=PROMPT_FORMAT_HELP)
    p.add_argument("--constraint", choices=["equal", "at_most", "at_least", "soft_equal"], default=None,
                   help="length constraint with --target (default: none, tilt with --beta)")
    p.add_argument("--target", type=int, default=None,
                   help="target completion length in tokens, EOS included, > 0 (the reference's target_length T is "
                        "--target T+1); under equal and at_most the completion can always end at the target")
    p.add_argument("--beta", type=float, default=0.0,
                   help="tilt p'(x) ∝ p(x) exp(beta u(x)), u = -V; beta < 0 favours shorter (default: 0)")
    p.add_argument("--top-k", type=int, default=16, help="candidates scored per step (default: 16)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus threshold within the top-k (default: 1.0)")
    p.add_argument("--min-p", type=float, default=None,
                   help="min-p threshold within the top-k (default: 0.1 with equal, at_most or at_least, which pick "
                        "by length alone and need plausible candidates; else 0)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="policy temperature (default: 1.0); with equal or at_most it only reshapes the candidates")
    p.add_argument("--sample", action="store_true",
                   help="sample from the guided distribution (default: greedy); no effect with equal or at_most")
    p.add_argument("--max-new-tokens", type=int, default=256, help="length limit (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--gamma", type=float, default=None, help="the LenVM's discount when its config lacks it")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="model dtype")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default: 8)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom modelling code (off by default)")
    p.add_argument("--format", choices=["text", "jsonl"], default="text",
                   help="output: text, or JSONL records with the realised length in tokens (default: text)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("analyze", help="value trace, TD residuals, length tokens and an HTML view",
                       description="Length analysis with a LenVM: the per-token value trace and TD residuals of "
                                   "a completion, the tokens that most raise or lower the predicted end over a "
                                   "set of completions, and an HTML page coloured by predicted remaining length.")
    model_args(p)
    p.add_argument("--input", default=None,
                   help="JSONL with 'prompt' and 'completion_ids' (rollouts, or lenvm-rl generate --format jsonl)")
    p.add_argument("--prompt", default=None, help="the prompt (text, see --prompt-format), with --completion")
    p.add_argument("--prompt-format", choices=["raw", "chat"], default=None, help=PROMPT_FORMAT_HELP)
    p.add_argument("--completion", default=None, help="the completion text (append the EOS token if it ended)")
    p.add_argument("--index", type=int, default=0, help="which completion to trace and draw (default: 0)")
    p.add_argument("--top", type=int, default=10, help="length tokens listed each way (default: 10)")
    p.add_argument("--min-count", type=int, default=3, help="occurrences a length token needs (default: 3)")
    p.add_argument("--html", default=None, help="write the HTML view of the traced completion here")
    p.add_argument("--format", choices=["table", "jsonl"], default="table", help="output format (default: table)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("demo", help="offline pipeline demo: rollouts, value pretraining, predictions",
                       description="Offline demo on the embedded backbone: sample rollouts on generated "
                                   "grade-school word problems, pretrain a LenVM on them, and compare its "
                                   "predictions (MRE) with the constant baseline.")
    p.add_argument("--model", default="smollm2-135m", help="policy and LenVM backbone (default: smollm2-135m)")
    p.add_argument("--output-dir", default="lenvm-demo", help="rollouts and the trained LenVM go here")
    p.add_argument("--train-prompts", type=int, default=20, help="training prompts (default: 20)")
    p.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts (default: 8)")
    p.add_argument("--num-completions", "-n", type=int, default=4, help="completions per training prompt")
    p.add_argument("--eval-completions", type=int, default=8, help="completions per held-out prompt")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default: 0.7)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="length limit (default: 256)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per generate call (default: 16)")
    p.add_argument("--epochs", type=float, default=3, help="training epochs (default: 3)")
    p.add_argument("--learning-rate", type=float, default=1e-3,
                   help="learning rate of the value head; the backbone stays frozen (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of problems, sampling and training (default: 0)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="HTTP length-prediction server (/encode, /tree_value, /predict, /health)",
                       description="Serve a LenVM over HTTP with the reference serving protocol (/encode, "
                                   "/tree_value, /token_value, /candidate_value, /flush_cache, /v1/models) plus "
                                   "/predict and /health, batching concurrent requests. Needs pip install "
                                   "'lenvm-rl[serve]'. SIGTERM finishes in-flight requests, then exits.")
    model_args(p, batch_size=64)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=30010, help="port (default: 30010)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer directory or Hub id for /predict (default: the one saved with --model; "
                        "without any, every endpoint but /predict serves, since they take token ids)")
    p.add_argument("--max-batch-tokens", type=int, default=16384,
                   help="padded tokens per forward pass; a request holding more gets HTTP 413 (default: 16384)")
    p.add_argument("--max-padding", type=float, default=0.25,
                   help="largest fraction of a batch that may be padding; shorter rows wait for the next "
                        "batch (default: 0.25)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pretrain"]:  # TRL-style dataclass parser: every TrainingArguments option
        from lenvm_rl.scripts import end_processes
        from lenvm_rl.scripts.pretrain import main as pretrain
        from lenvm_rl.scripts.pretrain import make_parser

        parser = make_parser()
        parser.prog = "lenvm-rl pretrain"
        pretrain(*parser.parse_args_and_config(argv[1:]))
        end_processes()
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        parser.error("--batch-size must be >= 1")
    if getattr(args, "device", None) is not None:
        args.device = resolve_device(args.device)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        args.func(args)
    except CLIError as err:
        print(f"lenvm-rl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
