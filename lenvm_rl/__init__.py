"""lenvm_rl: length-aware RL for language models with a token-level Length Value Model critic.

- :mod:`lenvm_rl.core`: pure tensor math (returns, GAE, shaping, losses, metrics);
- :mod:`lenvm_rl.modeling`: :class:`LenVM`, a causal-LM backbone with the value head;
- :mod:`lenvm_rl.predict`: :class:`LengthPredictor`, length prediction and traces;
- :mod:`lenvm_rl.critics`: :class:`LenVMCritic`, a frozen LenVM as a token-level length critic;
- :mod:`lenvm_rl.trainers`: value pretraining (:class:`LenVMTrainer`), length-aware GRPO
  (:class:`LengthAwareGRPOTrainer`) and PPO (:class:`PPOTrainer`, with ``value_model=LenVMCritic(...)``);
- :mod:`lenvm_rl.decoding`: LenVM-guided ``generate`` (:class:`LenVMLogitsProcessor`) and length analysis;
- :mod:`lenvm_rl.rewards`: GSM8K correctness and format rewards;
- :mod:`lenvm_rl.data`, :mod:`lenvm_rl.evaluation`: rollouts, value datasets, held-out evaluation.
"""

from lenvm_rl.critics import LenVMCritic, LenVMCriticOutput
from lenvm_rl.decoding import GuidanceConfig, GuidedCompletion, LenVMLogitsProcessor, guided_generate
from lenvm_rl.modeling import LenVM, LenVMOutput, TaskValueModel, ValueHead
from lenvm_rl.predict import LengthPrediction, LengthPredictor, LengthTrace
from lenvm_rl.trainers import (
    LengthAwareGRPOConfig,
    LengthAwareGRPOTrainer,
    LenVMConfig,
    LenVMTrainer,
    PPOConfig,
    PPOTrainer,
)

__version__ = "0.1.0"
__all__ = [
    "GuidanceConfig",
    "GuidedCompletion",
    "LenVM",
    "LenVMCritic",
    "LenVMConfig",
    "LenVMCriticOutput",
    "LenVMLogitsProcessor",
    "LenVMOutput",
    "LenVMTrainer",
    "LengthAwareGRPOConfig",
    "LengthAwareGRPOTrainer",
    "LengthPrediction",
    "LengthPredictor",
    "LengthTrace",
    "PPOConfig",
    "PPOTrainer",
    "TaskValueModel",
    "ValueHead",
    "__version__",
    "guided_generate",
]
