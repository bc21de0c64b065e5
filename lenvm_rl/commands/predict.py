"""``lenvm-rl predict``: the expected number of completion tokens for each prompt."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lenvm_rl.commands.base import (
    ModelArguments,
    PromptArguments,
    command,
    gather_prompts,
    load_predictor,
    prompt_text,
)

NAME = "predict"
HELP = "predict remaining tokens at the prompt boundary"
DESCRIPTION = "Predict the expected number of completion tokens for each prompt."


@dataclass(kw_only=True)
class PredictArguments(PromptArguments, ModelArguments):
    image: list[str] | None = field(default=None, metadata={
        "action": "extend", "help": "an image file for a vision-language LenVM: each text prompt becomes one user "
                                    "message holding the image(s), then the text; repeat for several"})
    format: Literal["table", "jsonl"] = field(default="table", metadata={"help": "output format (default: table)"})


ARGUMENTS = PredictArguments


def run(args: PredictArguments) -> None:
    prompts = gather_prompts(args)
    if args.image:
        from lenvm_rl.commands.base import CLIError
        from lenvm_rl.data.images import image_prompt

        if not all(isinstance(p, str) for p in prompts) or not all(Path(i).is_file() for i in args.image):
            raise CLIError("--image takes image files and goes with text prompts (put images in chat messages' "
                           f"content instead): {args.image}")
        prompts = [image_prompt(p, args.image) for p in prompts]
    predictor = load_predictor(args)
    predictions = predictor.predict(prompts, progress=len(prompts) > args.batch_size)
    print_predictions(prompts, predictions, predictor, args.format, sys.stdout)


make_parser, main = command(NAME, ARGUMENTS, DESCRIPTION, run)


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
