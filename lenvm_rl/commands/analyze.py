"""``lenvm-rl analyze``: value trace, TD residuals, length tokens and an HTML view of completions."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

from lenvm_rl.commands.base import PROMPT_FORMAT_HELP, CLIError, ModelArguments, command, load_predictor

NAME = "analyze"
HELP = "value trace, TD residuals, length tokens and an HTML view"
DESCRIPTION = ("Length analysis with a LenVM: the per-token value trace and TD residuals of a completion, the tokens "
               "that most raise or lower the predicted end over a set of completions, and an HTML page coloured by "
               "predicted remaining length.")


@dataclass(kw_only=True)
class AnalyzeArguments(ModelArguments):
    input: str | None = field(default=None, metadata={
        "help": "JSONL with 'prompt' and 'completion_ids' (rollouts, or lenvm-rl generate --format jsonl)"})
    prompt: str | None = field(default=None, metadata={
        "help": "the prompt (text, see --prompt_format), with --completion"})
    prompt_format: Literal["raw", "chat"] | None = field(default=None, metadata={"help": PROMPT_FORMAT_HELP})
    completion: str | None = field(default=None, metadata={
        "help": "the completion text (append the EOS token if it ended)"})
    index: int = field(default=0, metadata={"help": "which completion to trace and draw (default: 0)"})
    top: int = field(default=10, metadata={"help": "length tokens listed each way (default: 10)"})
    min_count: int = field(default=3, metadata={"help": "occurrences a length token needs (default: 3)"})
    html: str | None = field(default=None, metadata={"help": "write the HTML view of the traced completion here"})
    format: Literal["table", "jsonl"] = field(default="table", metadata={"help": "output format (default: table)"})


ARGUMENTS = AnalyzeArguments


def run(args: AnalyzeArguments) -> None:
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
    predictor = load_predictor(args)
    for record in records:
        if "completion_ids" not in record:
            record["completion_ids"] = predictor.tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
    try:
        analyze_completions(predictor, records, out=sys.stdout, fmt=args.format, top=args.top,
                            min_count=args.min_count, html_path=args.html, index=args.index)
    except ValueError as err:
        raise CLIError(str(err)) from None


make_parser, main = command(NAME, ARGUMENTS, DESCRIPTION, run)
