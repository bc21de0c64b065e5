"""Pure tensor math for length value modelling: returns, GAE, shaping, advantages, PPO losses, metrics.

Nothing in :mod:`lenvm_rl.core` touches a model; trainers and the prediction API only call it.
"""

from lenvm_rl.core import advantages, decoding, length_math, losses, metrics, seeds
from lenvm_rl.core.advantages import *  # noqa: F401,F403
from lenvm_rl.core.decoding import *  # noqa: F401,F403
from lenvm_rl.core.length_math import *  # noqa: F401,F403
from lenvm_rl.core.losses import *  # noqa: F401,F403
from lenvm_rl.core.metrics import *  # noqa: F401,F403
from lenvm_rl.core.seeds import *  # noqa: F401,F403

__all__ = [*length_math.__all__, *advantages.__all__, *losses.__all__, *metrics.__all__, *decoding.__all__,
           *seeds.__all__]
