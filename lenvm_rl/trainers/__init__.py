"""Trainers: value pretraining (LenVMTrainer), length-aware GRPO (LengthAwareGRPOTrainer) and PPO (PPOTrainer), and
the registry of their length estimators."""

from lenvm_rl.trainers.estimators import (
    LENGTH_ESTIMATORS,
    LengthEstimator,
    RolloutBatch,
    get_length_estimator,
    register_length_estimator,
)
from lenvm_rl.trainers.grpo_trainer import LengthAwareGRPOConfig, LengthAwareGRPOTrainer
from lenvm_rl.trainers.lenvm_trainer import LenVMConfig, LenVMTrainer
from lenvm_rl.trainers.ppo_trainer import PPOConfig, PPOTrainer

__all__ = ["LENGTH_ESTIMATORS", "LenVMConfig", "LenVMTrainer", "LengthAwareGRPOConfig", "LengthAwareGRPOTrainer",
           "LengthEstimator", "PPOConfig", "PPOTrainer", "RolloutBatch", "get_length_estimator",
           "register_length_estimator"]
