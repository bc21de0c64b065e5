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
- :mod:`lenvm_rl.analysis`: head-only fits on cached trunk states, and the learning curve.

The exports below load on first use (PEP 562), so ``import lenvm_rl.core`` or ``import lenvm_rl.serving``
does not pay for TRL and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what static type checkers and IDEs see; at run time __getattr__ imports on demand
    from lenvm_rl.critics import LenVMCritic, LenVMCriticOutput
    from lenvm_rl.decoding import GuidanceConfig, GuidedCompletion, LenVMLogitsProcessor, guided_generate
    from lenvm_rl.lenvm_cache import LenVMAutoSettings, ensure_lenvm
    from lenvm_rl.modeling import LenVM, LenVMOutput, TaskValueModel, ValueHead
    from lenvm_rl.predict import LengthPrediction, LengthPredictor, LengthTrace
    from lenvm_rl.trainers import (
        LengthAwareGRPOConfig,
        LengthAwareGRPOTrainer,
        LengthEstimator,
        LenVMConfig,
        LenVMTrainer,
        PPOConfig,
        PPOTrainer,
        RolloutBatch,
    )

__version__ = "0.1.0"
__all__ = [
    "GuidanceConfig",
    "GuidedCompletion",
    "LenVM",
    "LenVMAutoSettings",
    "LenVMCritic",
    "LenVMConfig",
    "LenVMCriticOutput",
    "LenVMLogitsProcessor",
    "LenVMOutput",
    "LenVMTrainer",
    "LengthAwareGRPOConfig",
    "LengthAwareGRPOTrainer",
    "LengthEstimator",
    "LengthPrediction",
    "LengthPredictor",
    "LengthTrace",
    "PPOConfig",
    "PPOTrainer",
    "RolloutBatch",
    "TaskValueModel",
    "ValueHead",
    "__version__",
    "ensure_lenvm",
    "guided_generate",
]

_EXPORTS = {  # export -> the module that defines it
    **dict.fromkeys(["LenVMCritic", "LenVMCriticOutput"], "lenvm_rl.critics"),
    **dict.fromkeys(["GuidanceConfig", "GuidedCompletion", "LenVMLogitsProcessor", "guided_generate"],
                    "lenvm_rl.decoding"),
    **dict.fromkeys(["LenVMAutoSettings", "ensure_lenvm"], "lenvm_rl.lenvm_cache"),
    **dict.fromkeys(["LenVM", "LenVMOutput", "TaskValueModel", "ValueHead"], "lenvm_rl.modeling"),
    **dict.fromkeys(["LengthPrediction", "LengthPredictor", "LengthTrace"], "lenvm_rl.predict"),
    **dict.fromkeys(["LengthAwareGRPOConfig", "LengthAwareGRPOTrainer", "LengthEstimator", "LenVMConfig",
                     "LenVMTrainer", "PPOConfig", "PPOTrainer", "RolloutBatch"], "lenvm_rl.trainers"),
}
_SUBMODULES = {"analysis", "core", "critics", "data", "decoding", "evaluation", "modeling", "predict", "rewards",
               "serving", "trainers"}  # ``import lenvm_rl; lenvm_rl.core`` keeps working


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
