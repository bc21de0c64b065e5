"""``lenvm-rl pretrain``: value pretraining from rollout files (every ``TrainingArguments`` option);
the pipeline is :func:`lenvm_rl.scripts.pretrain.main`, as in ``recipes/pretrain_lenvm.py``."""

from __future__ import annotations

from lenvm_rl.commands.base import run_script

NAME = "pretrain"
HELP = "pretrain a LenVM on rollouts (all TrainingArguments; see lenvm-rl pretrain --help)"


def make_parser(prog: str = f"lenvm-rl {NAME}"):
    from lenvm_rl.scripts.pretrain import make_parser

    parser = make_parser()
    parser.prog = prog
    return parser


def main(argv: list[str]) -> int:
    from lenvm_rl.scripts.pretrain import main as pretrain

    return run_script(make_parser(), pretrain, argv)
