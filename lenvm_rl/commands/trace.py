"""``lenvm-rl trace``: per-token values and predicted remaining tokens along a completion."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Literal

from lenvm_rl.commands.base import PROMPT_FORMAT_HELP, ModelArguments, command, load_predictor

NAME = "trace"
HELP = "per-token values along a completion"
DESCRIPTION = "Per-token values and predicted remaining tokens along a completion."


@dataclass(kw_only=True)
class TraceArguments(ModelArguments):
    prompt: str = field(metadata={"help": "the prompt (text, see --prompt_format)"})
    prompt_format: Literal["raw", "chat"] | None = field(default=None, metadata={"help": PROMPT_FORMAT_HELP})
    completion: str = field(metadata={
        "help": "the completion text (append the EOS token to score a finished completion)"})
    format: Literal["table", "jsonl"] = field(default="table", metadata={"help": "output format (default: table)"})


ARGUMENTS = TraceArguments


def run(args: TraceArguments) -> None:
    predictor = load_predictor(args)
    print_trace(predictor.trace(args.prompt, args.completion), predictor, args.format, sys.stdout)


make_parser, main = command(NAME, ARGUMENTS, DESCRIPTION, run)


def print_trace(trace, predictor, fmt: str, out) -> None:
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
