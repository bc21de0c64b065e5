"""``lenvm-rl generate``: generate with a policy, guided by a LenVM (tilt or a length target)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

from lenvm_rl.commands.base import DEVICE_HELP, CLIError, DType, PromptArguments, command, gather_prompts

NAME = "generate"
HELP = "generate with LenVM guidance (tilt or a length target)"
DESCRIPTION = ("Generate with a policy, guided by a LenVM: exponential tilting with --beta (< 0: shorter) or a "
               "--constraint on the completion length --target (tokens, EOS included). Without --lenvm the policy "
               "decodes alone. The equal and at_most constraints keep one candidate per step, so their output is "
               "deterministic: --sample and --seed change nothing there and --temperature only reshapes the "
               "candidates (a warning says so; the reference's constraints are one-hot too).")


@dataclass(kw_only=True)
class GenerateArguments(PromptArguments):
    policy: str = field(metadata={"help": "policy: model directory, Hub id or short name"})
    lenvm: str | None = field(default=None, metadata={
        "help": "LenVM checkpoint (it may be smaller than the policy but must share its vocabulary)"})
    constraint: Literal["equal", "at_most", "at_least", "soft_equal"] | None = field(default=None, metadata={
        "help": "length constraint with --target (default: none, tilt with --beta)"})
    target: int | None = field(default=None, metadata={
        "help": "target completion length in tokens, EOS included, > 0 (the reference's target_length T is "
                "--target T+1); under equal and at_most the completion can always end at the target"})
    beta: float = field(default=0.0, metadata={
        "help": "tilt p'(x) ∝ p(x) exp(beta u(x)), u = -V; beta < 0 favours shorter (default: 0)"})
    top_k: int = field(default=16, metadata={"help": "candidates scored per step (default: 16)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus threshold within the top-k (default: 1.0)"})
    min_p: float | None = field(default=None, metadata={
        "help": "min-p threshold within the top-k (default: 0.1 with equal, at_most or at_least, which pick by "
                "length alone and need plausible candidates; else 0)"})
    temperature: float = field(default=1.0, metadata={
        "help": "policy temperature (default: 1.0); with equal or at_most it only reshapes the candidates"})
    sample: bool = field(default=False, metadata={
        "help": "sample from the guided distribution (default: greedy); no effect with equal or at_most"})
    max_new_tokens: int = field(default=256, metadata={"help": "length limit (default: 256)"})
    seed: int = field(default=0, metadata={"help": "sampling seed (default: 0)"})
    gamma: float | None = field(default=None, metadata={"help": "the LenVM's discount when its config lacks it"})
    dtype: DType | None = field(default=None, metadata={"help": "model dtype"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    batch_size: int = field(default=8, metadata={"help": "prompts per generate call (default: 8)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom modelling code (off by default)"})
    format: Literal["text", "jsonl"] = field(default="text", metadata={
        "help": "output: text, or JSONL records with the realised length in tokens (default: text)"})


ARGUMENTS = GenerateArguments


def run(args: GenerateArguments) -> None:
    from lenvm_rl.decoding import GuidanceConfig
    from lenvm_rl.decoding.pipelines import generate_completions

    prompts = gather_prompts(args)
    try:
        guidance = GuidanceConfig(constraint=args.constraint, target=args.target, beta=args.beta, top_k=args.top_k,
                                  top_p=args.top_p, min_p=args.min_p, temperature=args.temperature)
    except ValueError as err:
        raise CLIError(str(err)) from None
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


make_parser, main = command(NAME, ARGUMENTS, DESCRIPTION, run)
