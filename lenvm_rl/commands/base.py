"""What every ``lenvm-rl`` command shares: parsing a dataclass of arguments TRL style (:func:`command` gives a
module its ``make_parser`` and ``main``), the deprecated dash spellings, the ``--model`` arguments of a LenVM,
the ``--prompt`` / ``--input`` prompts, the device, and bad input as exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from dataclasses import dataclass, field
from typing import Literal

from lenvm_rl.modeling import EMBEDDED_MODELS
from lenvm_rl.modeling.devices import resolve_device

__all__ = ["CLIError", "ModelArguments", "PromptArguments", "command", "gather_prompts", "load_predictor",
           "make_parser", "parse", "prompt_text", "resolve_device", "run_command", "run_script"]

DEVICE_HELP = "torch device, e.g. cpu or cuda:0; auto: cuda when available, else cpu (default: auto)"
PROMPT_FORMAT_HELP = ("how a string prompt becomes s_0: raw (the text as is, TRL's convention) or chat (one user "
                      "message under the chat template); chat messages always use the template (default: the format "
                      "the LenVM was pretrained on; chat for a checkpoint that records none)")
DType = Literal["float32", "bfloat16", "float16"]


class CLIError(Exception):
    """Bad input: printed as ``lenvm-rl <command>: error: <message>``, exit status 2."""


@dataclass(kw_only=True)
class PromptArguments:
    """The prompts a command reads (predict, generate): repeated ``--prompt`` and an ``--input`` JSONL file,
    gathered by :func:`gather_prompts`."""

    prompt: list[str] | None = field(default=None, metadata={
        "action": "extend", "help": "a prompt (text, see --prompt_format); repeat for several"})
    input: str | None = field(default=None, metadata={
        "help": "JSONL file, one object per line with 'prompt' (text) or 'messages' (chat)"})
    prompt_column: str | None = field(default=None, metadata={
        "help": "JSONL field holding the prompt (default: messages if present, else prompt)"})
    prompt_format: Literal["raw", "chat"] | None = field(default=None, metadata={"help": PROMPT_FORMAT_HELP})


@dataclass(kw_only=True)
class ModelArguments:
    """The LenVM a command loads (predict, trace, evaluate, analyze, serve)."""

    model: str = field(metadata={"help": "LenVM checkpoint directory, Hub id, or embedded short name "
                                         f"({', '.join(EMBEDDED_MODELS)}: untrained head)"})
    gamma: float | None = field(default=None, metadata={
        "help": "discount of the value head; read from the checkpoint's config.json when omitted"})
    dtype: DType | None = field(default=None, metadata={
        "help": "backbone dtype (the head always runs in float32); default: as saved"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward pass (default: 16)"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow custom modelling code from the checkpoint (off by default)"})


def make_parser(dataclass_types, description: str, **kwargs):
    """A ``TrlParser`` of the command's dataclass(es): underscore flags, ``--config`` YAML, the help as written."""
    from trl import TrlParser

    kwargs.setdefault("formatter_class", argparse.HelpFormatter)
    return TrlParser(dataclass_types, description=description, **kwargs)


def warn_dash_spellings(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A ``FutureWarning`` for each ``--a-b`` in ``argv`` whose underscore spelling ``--a_b`` is the option's name."""
    for token in argv:
        if token == "--":
            break
        option = token.split("=", 1)[0]
        if not option.startswith("--") or "-" not in option[2:]:
            continue
        new = "--" + option[2:].replace("-", "_")
        if new in parser._option_string_actions:
            warnings.warn_explicit(f"{option} is deprecated and will be removed in the next release: use {new}",
                                   FutureWarning, filename=parser.prog, lineno=0)  # no source line to show


def parse(parser, argv: list[str]) -> tuple:
    """The dataclasses of ``argv`` (and of a ``--config`` YAML); a failed ``__post_init__`` check exits 2."""
    warn_dash_spellings(parser, argv)
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as err:
        parser.error(str(err))


def run_command(name: str, parser, run, argv: list[str]) -> int:
    """Parse ``argv`` into the command's one dataclass, resolve ``--device``, run; a ``CLIError`` exits 2."""
    (args,) = parse(parser, argv)
    if getattr(args, "batch_size", 1) < 1:
        parser.error("--batch_size must be >= 1")
    if getattr(args, "device", None) is not None:
        args.device = resolve_device(args.device)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        run(args)
    except CLIError as err:
        print(f"lenvm-rl {name}: error: {err}", file=sys.stderr)
        return 2
    return 0


def command(name: str, arguments: type, description: str, run) -> tuple:
    """``(make_parser, main)`` of the command ``name`` that parses the dataclass ``arguments`` and calls ``run(args)``.

    ``make_parser(prog="lenvm-rl <name>")`` is its ``TrlParser`` (:func:`make_parser`); ``main(argv)`` parses
    ``argv`` and runs it, returning the exit status (:func:`run_command`).
    """
    def make_command_parser(prog: str = f"lenvm-rl {name}"):
        return make_parser(arguments, description, prog=prog)

    def main(argv: list[str]) -> int:
        return run_command(name, make_command_parser(), run, argv)

    return make_command_parser, main


def run_script(parser, pipeline, argv: list[str]) -> int:
    """Parse ``argv`` (and its ``--config`` YAML) with a script's ``parser`` and run its ``pipeline`` (a
    :mod:`lenvm_rl.scripts` ``main``); returns 0. A launched run with a process group ends in
    :func:`~lenvm_rl.scripts.end_processes`, which exits each process with status 0 instead."""
    from lenvm_rl.scripts import end_processes

    pipeline(*parse(parser, argv))
    end_processes()
    return 0


def gather_prompts(args) -> list:
    """The prompts of ``args.prompt`` (repeated ``--prompt``), then those of the ``--input`` JSONL file
    (``args.prompt_column``); a ``CLIError`` when there is none or the file does not read."""
    from lenvm_rl.data import load_prompts

    prompts = list(args.prompt or [])
    if args.input:
        try:
            prompts += load_prompts(args.input, prompt_column=args.prompt_column)
        except (FileNotFoundError, ValueError) as err:
            raise CLIError(f"--input: {err}") from None
    if not prompts:
        raise CLIError("give at least one --prompt or an --input JSONL file")
    return prompts


def load_predictor(args):
    """The ``LengthPredictor`` of ``args.model`` with the command's model arguments."""
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


def prompt_text(prompt) -> str:
    """A prompt (text or chat messages) on one line of at most 60 characters."""
    text = prompt if isinstance(prompt, str) else " | ".join(str(m.get("content", "")) for m in prompt)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."
