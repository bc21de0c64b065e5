"""``lenvm-rl predict``: the expected number of completion tokens for each prompt."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Literal

from lenvm_rl.commands.base import (
    PROMPT_FORMAT_HELP,
    CLIError,
    ModelArguments,
    load_predictor,
    prompt_text,
    run_command,
)
from lenvm_rl.commands.base import make_parser as _make_parser

NAME = "predict"
HELP = "predict remaining tokens at the prompt boundary"
DESCRIPTION = "Predict the expected number of completion tokens for each prompt."


@dataclass(kw_only=True)
class PredictArguments(ModelArguments):
    prompt: list[str] | None = field(default=None, metadata={
        "action": "extend", "help": "a prompt (text, see --prompt_format); repeat for several"})
    input: str | None = field(default=None, metadata={
        "help": "JSONL file, one object per line with 'prompt' (text) or 'messages' (chat)"})
    prompt_column: str | None = field(default=None, metadata={
        "help": "JSONL field holding the prompt (default: messages if present, else prompt)"})
    prompt_format: Literal["raw", "chat"] | None = field(default=None, metadata={"help": PROMPT_FORMAT_HELP})
    format: Literal["table", "jsonl"] = field(default="table", metadata={"help": "output format (default: table)"})


ARGUMENTS = PredictArguments


def make_parser(prog: str = f"lenvm-rl {NAME}"):
    return _make_parser(ARGUMENTS, DESCRIPTION, prog=prog)


def main(argv: list[str]) -> int:
    return run_command(NAME, make_parser(), run, argv)


def run(args: PredictArguments) -> None:
    from lenvm_rl.data import load_prompts

    prompts = list(args.prompt or [])
    if args.input:
        try:
            prompts += load_prompts(args.input, prompt_column=args.prompt_column)
        except (FileNotFoundError, ValueError) as err:
            raise CLIError(f"--input: {err}") from None
    if not prompts:
        raise CLIError("give at least one --prompt or an --input JSONL file")
    predictor = load_predictor(args)
    predictions = predictor.predict(prompts, progress=len(prompts) > args.batch_size)
    print_predictions(prompts, predictions, predictor, args.format, sys.stdout)


def print_predictions(prompts, predictions, predictor, fmt: str, out) -> None:
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
        out.write(f"{i:>3}  {pred.length:>12.1f}  {pred.value:>11.4f}  {prompt_text(prompt)}\n")
