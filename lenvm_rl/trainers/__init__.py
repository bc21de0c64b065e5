"""Trainers: value pretraining now; the length-aware GRPO and PPO trainers as they land."""

from lenvm_rl.trainers.lenvm_trainer import LenVMConfig, LenVMTrainer

__all__ = ["LenVMConfig", "LenVMTrainer"]
