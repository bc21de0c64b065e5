"""Trainers: value pretraining (LenVMTrainer) and length-aware GRPO (LengthAwareGRPOTrainer)."""

from lenvm_rl.trainers.grpo_trainer import LengthAwareGRPOConfig, LengthAwareGRPOTrainer
from lenvm_rl.trainers.lenvm_trainer import LenVMConfig, LenVMTrainer

__all__ = ["LenVMConfig", "LenVMTrainer", "LengthAwareGRPOConfig", "LengthAwareGRPOTrainer"]
