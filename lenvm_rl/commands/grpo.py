"""``lenvm-rl grpo``: length-aware GRPO on GSM8K, the pipeline of ``recipes/grpo_gsm8k.py``.

    lenvm-rl grpo --config recipes/configs/grpo_gsm8k_cpu.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m lenvm_rl.cli grpo --lenvm ./my-lenvm ...

Every option of the recipe (script arguments, ``LengthAwareGRPOConfig``, ``ModelConfig``) and its ``--config``
YAML; the pipeline is :func:`lenvm_rl.scripts.grpo.main`.
"""

from __future__ import annotations

from lenvm_rl.commands.base import run_script

NAME = "grpo"
HELP = "length-aware GRPO on GSM8K with a LenVM length critic (the recipe's pipeline; --config YAML)"


def make_parser(prog: str = f"lenvm-rl {NAME}", config_class=None):
    """The recipe's ``TrlParser``: ``config_class`` (default ``LengthAwareGRPOConfig``) picks the trainer."""
    from lenvm_rl.scripts.grpo import make_parser

    parser = make_parser(config_class)
    parser.prog = prog
    return parser


def main(argv: list[str]) -> int:
    return run(make_parser(), argv)


def run(parser, argv: list[str]) -> int:
    """Parse ``argv`` (and its ``--config`` YAML) with the recipe's ``parser`` and run the recipe's pipeline."""
    from lenvm_rl.scripts.grpo import main as run_pipeline

    return run_script(parser, run_pipeline, argv)
