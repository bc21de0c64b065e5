"""``lenvm-rl ppo``: PPO on GSM8K with a LenVM critic, the pipeline of ``recipes/ppo_gsm8k.py``.

    lenvm-rl ppo --config recipes/configs/ppo_gsm8k_cpu.yaml

The options are ``lenvm-rl grpo``'s with ``PPOConfig`` in place of ``LengthAwareGRPOConfig``.
"""

from __future__ import annotations

from lenvm_rl.commands import grpo

NAME = "ppo"
HELP = "PPO on GSM8K with a LenVM critic (the recipe's pipeline; --config YAML)"


def make_parser(prog: str = f"lenvm-rl {NAME}"):
    from lenvm_rl.trainers import PPOConfig

    return grpo.make_parser(prog, PPOConfig)


def main(argv: list[str]) -> int:
    return grpo.run(make_parser(), argv)
