"""lenvm_rl: length-aware RL for language models with a token-level Length Value Model critic.

- :mod:`lenvm_rl.core`: pure tensor math (returns, GAE, shaping, losses, metrics);
- :mod:`lenvm_rl.modeling`: :class:`LenVM`, a causal-LM backbone with the value head;
- :mod:`lenvm_rl.predict`: :class:`LengthPredictor`, length prediction and traces;
- :mod:`lenvm_rl.data`, :mod:`lenvm_rl.trainers`, :mod:`lenvm_rl.evaluation`: value pretraining.
"""

from lenvm_rl.modeling import LenVM, LenVMOutput, ValueHead
from lenvm_rl.predict import LengthPrediction, LengthPredictor, LengthTrace

__version__ = "0.1.0"
__all__ = ["LenVM", "LenVMOutput", "LengthPrediction", "LengthPredictor", "LengthTrace", "ValueHead", "__version__"]
