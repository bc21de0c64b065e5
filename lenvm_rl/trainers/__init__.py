"""Trainers: value pretraining (LenVMTrainer), length-aware GRPO (LengthAwareGRPOTrainer) and PPO (PPOTrainer)."""

from lenvm_rl.trainers.grpo_trainer import LengthAwareGRPOConfig, LengthAwareGRPOTrainer
from lenvm_rl.trainers.lenvm_trainer import LenVMConfig, LenVMTrainer
from lenvm_rl.trainers.ppo_trainer import PPOConfig, PPOTrainer

__all__ = ["LenVMConfig", "LenVMTrainer", "LengthAwareGRPOConfig", "LengthAwareGRPOTrainer", "PPOConfig", "PPOTrainer"]
