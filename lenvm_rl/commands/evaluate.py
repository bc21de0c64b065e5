"""``lenvm-rl evaluate``: value MSE, prompt MRE and positionwise error of a LenVM on held-out rollouts."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Literal

from lenvm_rl.commands.base import CLIError, ModelArguments, command
from lenvm_rl.commands.serve import VLLMEngineArguments, vllm_engine_options

NAME = "evaluate"
HELP = "value MSE, prompt MRE and positionwise error on held-out rollouts"
DESCRIPTION = ("Evaluate a LenVM on rollouts, beside the constant baseline and prompt-length regression of training "
               "rollouts, the noise floor (an oracle scored against K samples) and the split-half MRE (K/2 samples "
               "predicting the other K/2); prompt MRE is mean ± standard error over prompts.")


@dataclass(kw_only=True)
class EvaluateArguments(VLLMEngineArguments, ModelArguments):
    rollouts: list[str] = field(metadata={
        "help": "held-out rollout JSONL (from lenvm-rl rollout); several shards are merged"})
    baseline_rollouts: list[str] | None = field(default=None, metadata={
        "help": "training rollout JSONL (or shards); adds the constant baseline (their mean value) and a "
                "prompt-length regression (return-consistent length on prompt tokens) beside the LenVM"})
    bootstrap: int = field(default=200, metadata={
        "help": "bootstrap resamples per prompt for the noise-floor row, the prompt MRE of an oracle that knows each "
                "prompt's expected length (default: 200)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the noise-floor resamples and the split-half partitions (default: 0)"})
    format: Literal["table", "json"] = field(default="table", metadata={"help": "output format (default: table)"})
    backend: Literal["hf", "vllm"] = field(default="hf", metadata={
        "help": "hf: a transformers forward, --batch_size padded sequences at a time (--device); vllm: vLLM scores "
                "every sequence, unpadded and scheduled by vLLM (pip install 'lenvm-rl[vllm]'; --vllm_* options) "
                "(default: hf)"})


ARGUMENTS = EvaluateArguments


def run(args: EvaluateArguments) -> None:
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
        if args.backend == "vllm":
            from lenvm_rl.vllm.scoring import VLLMLenVM

            model = VLLMLenVM.from_pretrained(args.model, gamma=args.gamma, **vllm_engine_options(args))
        else:
            model = LenVM.from_pretrained(args.model, gamma=args.gamma, dtype=args.dtype, device=args.device,
                                          trust_remote_code=args.trust_remote_code)
    except (FileNotFoundError, ValueError, ImportError) as err:
        raise CLIError(str(err)) from None
    try:
        rows = {"LenVM": evaluate_lenvm(model, records, batch_size=args.batch_size, progress=True)}
    finally:
        if args.backend == "vllm":
            model.close()
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


make_parser, main = command(NAME, ARGUMENTS, DESCRIPTION, run)
