"""Pure tensor math for length value modelling: returns, GAE, shaping, metrics.

Nothing in :mod:`lenvm_rl.core` touches a model; trainers and the prediction API only call it.
"""

from lenvm_rl.core.length_math import *  # noqa: F401,F403
from lenvm_rl.core.length_math import __all__  # noqa: F401
