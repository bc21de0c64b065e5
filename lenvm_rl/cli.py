"""The ``lenvm-rl`` command line: the dispatch from a command name to its module in :mod:`lenvm_rl.commands`.

    lenvm-rl predict --model smollm2-135m --prompt "How many legs do 3 spiders have?"
    lenvm-rl predict --model ./my-lenvm --input prompts.jsonl --format jsonl > lengths.jsonl
    lenvm-rl trace   --model ./my-lenvm --prompt "..." --completion "..."
    lenvm-rl rollout --model smollm2-135m --prompts prompts.jsonl -n 8 --output rollouts.jsonl
    lenvm-rl pretrain --model_name_or_path smollm2-135m --train_rollouts rollouts.jsonl --output_dir my-lenvm
    lenvm-rl evaluate --model ./my-lenvm --rollouts held_out.jsonl --baseline_rollouts rollouts.jsonl
    lenvm-rl generate --policy smollm2-135m --lenvm ./my-lenvm --prompt "..." --constraint equal --target 128
    lenvm-rl analyze --model ./my-lenvm --input completions.jsonl --html trace.html
    lenvm-rl serve --model ./my-lenvm --port 30010
    lenvm-rl grpo --config recipes/configs/grpo_gsm8k_cpu.yaml
    lenvm-rl ppo --config recipes/configs/ppo_gsm8k_cpu.yaml
    lenvm-rl demo

Flags are TRL's underscore spelling (``--max_new_tokens``); every command takes ``--config`` YAML. The dash
spellings (``--max-new-tokens``) still work for one release, with a ``FutureWarning``. Model arguments take a
LenVM checkpoint directory, a Hub id, or a short name of an embedded backbone (``smollm2-135m``, which has an
untrained head). Bad input exits with status 2 and a message naming the argument, file or line.
"""

from __future__ import annotations

import argparse
import sys

from lenvm_rl.commands import COMMANDS, CLIError, command_module, resolve_device

__all__ = ["CLIError", "build_parser", "main", "resolve_device"]


def build_parser() -> argparse.ArgumentParser:
    """The top level of the command line (``lenvm-rl --help``): the command names and their one-line help.

    Each command parses its own arguments with its own ``TrlParser`` (``command_module(name).make_parser()``);
    building those here would import every command's dependencies, the trainers included, for a help page.
    """
    parser = argparse.ArgumentParser(prog="lenvm-rl", description="Length Value Models: predict, trace, "
                                     "sample rollouts, pretrain, evaluate, generate, serve, GRPO and PPO.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        sub.add_parser(name, help=command_module(name).HELP, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``lenvm-rl COMMAND ...``; returns the exit status (2 for bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in COMMANDS:
        return command_module(argv[0]).main(argv[1:])
    build_parser().parse_args(argv)  # --help, or a usage error (exit status 2)
    return 2


if __name__ == "__main__":
    sys.exit(main())
